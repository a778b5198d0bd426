"""Schedules: pure, jit-safe functions `step -> value` (step 0 at the first update, float32 out).

Grouped by concept: `decay` (constant, step, piecewise, exponential, 1/t, polynomial, linear),
`cosine` (cosine, warm-up + cosine, SGDR), `cyclic` (cyclical, one-cycle), `transformer`,
`join`, and `sign_decay` (the PowerSign/AddSign decay functions). Every factory is decorated
with `gradxform._equality.by_value`: equal arguments give equal, equally hashed schedules.
"""
