"""gradxform: composable, pure optimizer transforms for JAX.

An optimizer is a `GradientTransformation`, a pure `(init, update)` pair over pytrees. Small
primitives chain into every named algorithm:

    >>> import gradxform as gx
    >>> tx = gx.adam(1e-3)                                   # a named algorithm
    >>> tx = gx.chain(gx.scale_by_momentum(0.9, ema=True),   # ... or the same, by hand
    ...               gx.bias_correction(0.9),
    ...               gx.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False, bias_correction=True),
    ...               gx.scale_by_learning_rate(1e-3))
"""

# --- core ---------------------------------------------------------------------------------
from gradxform._base import EmptyState
from gradxform._base import GradientTransformation
from gradxform._base import apply_updates
from gradxform._base import chain
from gradxform._base import identity
from gradxform._base import named_chain
# --- the chain protocol: declaring a transform, reading what its chain passes ---------------
from gradxform._base import next_count
from gradxform._base import raw_gradient
from gradxform._base import step_count
from gradxform._base import transform
from gradxform._base import trees_checked

# --- primitives ---------------------------------------------------------------------------
from gradxform._transforms.accumulators import scale_by_adadelta
from gradxform._transforms.accumulators import scale_by_adagrad
from gradxform._transforms.accumulators import scale_by_inf_norm
from gradxform._transforms.belief import scale_by_belief
from gradxform._transforms.belief import scale_by_yogi
from gradxform._transforms.bias import bias_correction
from gradxform._transforms.clip import adaptive_grad_clip
from gradxform._transforms.clip import clip
from gradxform._transforms.clip import clip_by_block_rms
from gradxform._transforms.clip import clip_by_global_norm
from gradxform._transforms.clip import clip_by_norm
from gradxform._transforms.clip import global_norm
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.nadam import scale_by_nadam_momentum
from gradxform._transforms.noise import add_gradient_noise
from gradxform._transforms.rectify import scale_by_rectification
from gradxform._transforms.rms import scale_by_amsgrad
from gradxform._transforms.rms import scale_by_rms
from gradxform._transforms.robust import centralize
from gradxform._transforms.robust import keep_params_nonnegative
from gradxform._transforms.robust import normalize_by_update_norm
from gradxform._transforms.robust import zero_nans
from gradxform._transforms.scale import scale
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.sign import sign_agreement
from gradxform._transforms.sign_descent import scale_by_lion
from gradxform._transforms.sign_descent import scale_by_sign
from gradxform._transforms.stateless import stateless
from gradxform._transforms.weight_decay import add_l2_penalty
from gradxform._transforms.weight_decay import decoupled_weight_decay

# --- algorithms ---------------------------------------------------------------------------
from gradxform._optimizers.adam import adam
from gradxform._optimizers.adam import adamax
from gradxform._optimizers.adam import adamw
from gradxform._optimizers.adam import amsgrad
from gradxform._optimizers.adam import nadam
from gradxform._optimizers.adam import radam
from gradxform._optimizers.adaptive import adadelta
from gradxform._optimizers.adaptive import adagrad
from gradxform._optimizers.adaptive import rmsprop
from gradxform._optimizers.modern import adabelief
from gradxform._optimizers.modern import adamaxw
from gradxform._optimizers.modern import lion
from gradxform._optimizers.modern import nadamw
from gradxform._optimizers.modern import sign_sgd
from gradxform._optimizers.modern import signum
from gradxform._optimizers.modern import yogi
from gradxform._optimizers.sgd import noisy_sgd
from gradxform._optimizers.sgd import sgd
from gradxform._optimizers.sgd import sgdw
from gradxform._optimizers.sign import addsign
from gradxform._optimizers.sign import powersign

# --- schedules (issue 4) ------------------------------------------------------------------
from gradxform._schedules.cosine import cosine_decay_schedule
from gradxform._schedules.cosine import sgdr_schedule
from gradxform._schedules.cosine import warmup_cosine_decay_schedule
from gradxform._schedules.cyclic import cyclical_schedule
from gradxform._schedules.cyclic import one_cycle_schedule
from gradxform._schedules.decay import constant_schedule
from gradxform._schedules.decay import exponential_decay
from gradxform._schedules.decay import inverse_time_decay
from gradxform._schedules.decay import linear_schedule
from gradxform._schedules.decay import piecewise_constant_schedule
from gradxform._schedules.decay import polynomial_schedule
from gradxform._schedules.decay import step_decay_schedule
from gradxform._schedules.join import join_schedules
from gradxform._schedules.sign_decay import cosine_sign_decay
from gradxform._schedules.sign_decay import linear_sign_decay
from gradxform._schedules.sign_decay import restart_sign_decay
from gradxform._schedules.transformer import transformer_schedule
from gradxform._wrappers.inject import InjectHyperparamsState
from gradxform._wrappers.inject import inject_hyperparams
from gradxform._wrappers.plateau import ReduceOnPlateauState
from gradxform._wrappers.plateau import reduce_on_plateau
# --- wrappers (issue 5) -------------------------------------------------------------------
from gradxform._wrappers.accumulate import accumulate_gradients
from gradxform._wrappers.averaging import averaged_params
from gradxform._wrappers.averaging import ema_params
from gradxform._wrappers.averaging import polyak_params
from gradxform._wrappers.finite import apply_if_finite
from gradxform._wrappers.flatten import flatten
from gradxform._wrappers.masked import MaskedNode
from gradxform._wrappers.masked import masked
from gradxform._wrappers.partition import partition
from gradxform._wrappers.partition import set_to_zero
from gradxform._wrappers.state_access import tree_find
from gradxform._wrappers.state_access import tree_get
from gradxform._wrappers.state_access import tree_set
from gradxform._wrappers.training import early_stopping
from gradxform._wrappers.training import ensemble_predict
from gradxform._wrappers.training import snapshot_ensemble
# --- data parallel (issue 6) --------------------------------------------------------------
from gradxform._parallel.easgd import elastic_averaging
from gradxform._parallel.local_sgd import periodic_average
from gradxform._parallel.replica import cross_replica_mean
from gradxform._parallel.stale import stale_gradients
from gradxform._parallel.zero import zero1
from gradxform._parallel.zero import zero1_shardings
# --- interop (issue 8) --------------------------------------------------------------------
from gradxform._interop import from_optax
from gradxform._interop import to_optax

__version__ = "0.1.0"

__all__ = sorted(name for name in dir() if not name.startswith("_") and name not in {
    "annotations", "transforms", "optimizers", "schedules", "wrappers", "parallel",
    "interop"})
