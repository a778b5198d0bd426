"""The inverse-square-root schedule with linear warm-up of "Attention is all you need"."""

from __future__ import annotations


import jax
import jax.numpy as jnp

from gradxform import _check
from gradxform._base import Schedule
from gradxform._equality import by_value
from gradxform._schedules import _common as c


@by_value
def transformer_schedule(d_model: float, warmup_steps: int = 4000, *,
                         scale: float = 1.0) -> Schedule:
  """`η = scale · d_model^{−1/2} · min(n^{−1/2}, n · warmup^{−3/2})`, `n = t + 1`.

  Rises linearly for `warmup` steps, peaks at `n = warmup` with
  `scale · (d_model · warmup)^{−1/2}`, then decays as `n^{−1/2}`. `n` counts from 1 (the
  paper's step number), so the first update (t = 0) uses `n = 1`.

  Args:
    d_model: the model width (> 0).
    warmup_steps: the warm-up length (a positive integer).
    scale: a constant factor (> 0).

  Example:
    >>> schedule = gx.transformer_schedule(512, 4000)
    >>> round(float(schedule(3999)), 7)      # the peak, (512 · 4000)^{−1/2}
    0.0006988

  References:
    Vaswani et al., "Attention is all you need", NeurIPS 2017, section 5.3.
  """
  where = "transformer_schedule"
  d_model = _check.real(where, "d_model", d_model, gt=0.0)
  warmup_steps = _check.integer(where, "warmup_steps", warmup_steps, minimum=1)
  scale = _check.real(where, "scale", scale, gt=0.0)
  factor = scale * d_model ** -0.5
  warm = warmup_steps ** -1.5

  def schedule(step):
    n = c.as_float(c.as_step(step)) + 1.0
    return c.out(factor * jnp.minimum(jax.lax.rsqrt(n), n * warm))

  return schedule
