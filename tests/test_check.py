"""`gradxform._check`: every factory validates through it, so its messages and coercions are
checked once here (the factories' own cases are in test_primitives, test_errors, test_schedules).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform import _check


@pytest.mark.parametrize("call,message", [
    (lambda: _check.real("f", "x", -1.0, gt=0), "f: x must be a number > 0, got -1.0"),
    (lambda: _check.real("f", "x", 2, ge=0, lt=1), "f: x must be a number in [0, 1), got 2.0"),
    (lambda: _check.real("f", "x", 0.0, gt=0, le=1), "f: x must be a number in (0, 1], got 0.0"),
    (lambda: _check.real("f", "x", float("inf")), "f: x must be a finite number, got inf"),
    (lambda: _check.real("f", "x", True), "f: x must be a finite number, got True"),
    (lambda: _check.integer("f", "n", 1.5), "f: n must be an int, got 1.5"),
    (lambda: _check.integer("f", "n", -1, minimum=0), "f: n must be an int >= 0, got -1"),
    (lambda: _check.integer("f", "n", 0, minimum=1), "f: n must be a positive integer, got 0"),
    (lambda: _check.positive_int_or_schedule("f", "k", 0),
     "f: k must be a positive int or a schedule, got 0"),
    (lambda: _check.at_least("f", "t", 3, 4.0, why=" (why)"), "f: t must be >= 4 (why), got 3.0"),
    (lambda: _check.unit_interval("f", "b", True), "f: b must be a number, got the boolean True"),
    (lambda: _check.function("f", "fn", 3.0, optional=True),
     "f: fn must be a function of the step or None, got 3.0"),
    (lambda: _check.ordered("f", ("lo", 3), ("hi", 3), strict=True),
     "f: hi must be > lo, got lo=3, hi=3"),
    (lambda: _check.non_decreasing("f", "b", [1, 0]), "f: b must be non-decreasing, got (1, 0)"),
    (lambda: _check.nesterov("f", True, momentum=0.0, dampening=0.1),
     "f: Nesterov momentum requires momentum > 0 and dampening = 0, got momentum=0.0, "
     "dampening=0.1"),
    (lambda: _check.constant("f", "c", lambda t: t, instead="g"),
     "f: c must be a number or array; for a schedule use g"),
])
def test_messages_name_the_factory_the_argument_and_the_value(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_coercions():
  assert _check.integer("f", "n", 100.0, minimum=1) == 100           # integral floats pass
  assert type(_check.integer("f", "n", np.int64(3))) is int
  assert type(_check.non_negative("f", "x", 0)) is float             # no integer arithmetic
  lr = gx.linear_schedule(1.0, 0.0, 10)
  assert _check.learning_rate("f", lr) is lr                         # schedules pass
  x = jnp.ones([])
  assert _check.unit_interval("f", "b", x) is x                      # so do (traced) arrays
  _check.nesterov("f", True, momentum=x)                             # known only at run time
  _check.nesterov("f", False, momentum=0.0, dampening=0.5)           # no Nesterov, no demand


def test_factories_share_the_checks():
  with pytest.raises(ValueError, match=re.escape("stale_gradients: max_delay must be >= delay")):
    gx.stale_gradients(3, max_delay=2)
  with pytest.raises(ValueError, match=re.escape("decay_steps must be > warmup_steps")):
    gx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10)
  with pytest.raises(ValueError, match=re.escape("reduce_on_plateau: factor must be a number in "
                                                 "[0, 1), got 1.0")):
    gx.reduce_on_plateau(factor=1.0)
  with pytest.raises(ValueError, match=re.escape("join_schedules: boundaries[0] must be an int "
                                                 ">= 0, got -1")):
    gx.join_schedules([gx.constant_schedule(1.0)] * 2, [-1])
  with pytest.raises(ValueError, match="zero1: the mesh has no axis 'model'"):
    gx.zero1(gx.sgd(0.1), jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
             axis_name="model")
