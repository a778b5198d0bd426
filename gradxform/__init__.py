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
from gradxform._base import kernel_status
from gradxform._base import named_chain
# --- the chain protocol: declaring a transform, reading what its chain passes ---------------
from gradxform._base import elementwise
from gradxform._base import next_count
from gradxform._base import raw_gradient
from gradxform._base import step_count
from gradxform._base import transform
from gradxform._base import update_and_apply
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

# --- issue 16: layerwise (trust ratio, LAMB, LARS, NovoGrad, Fromage, SM3) ---
from gradxform._optimizers.layerwise import fromage
from gradxform._optimizers.layerwise import lamb
from gradxform._optimizers.layerwise import lars
from gradxform._optimizers.layerwise import novograd
from gradxform._optimizers.layerwise import sm3
from gradxform._transforms.novograd import scale_by_novograd
from gradxform._transforms.sm3 import scale_by_sm3
from gradxform._transforms.trust_ratio import scale_by_trust_ratio
# --- issue 16: adam variants (Adan, ADOPT, AdEMAMix, MADGRAD, optimistic) ---
from gradxform._optimizers.adam_variants import adan
from gradxform._optimizers.adam_variants import ademamix
from gradxform._optimizers.adam_variants import adopt
from gradxform._optimizers.adam_variants import madgrad
from gradxform._optimizers.adam_variants import optimistic_adam
from gradxform._optimizers.adam_variants import optimistic_gradient_descent
from gradxform._optimizers.adam_variants import simplified_ademamix
from gradxform._transforms.adan import scale_by_adan
from gradxform._transforms.ademamix import scale_by_ademamix
from gradxform._transforms.ademamix import scale_by_simplified_ademamix
from gradxform._transforms.adopt import scale_by_adopt
from gradxform._transforms.madgrad import scale_by_madgrad
from gradxform._transforms.optimistic import scale_by_optimistic_gradient
# --- issue 16: loss-aware and wrappers (Polyak SGD, MoMo, lookahead, SAM) ---
from gradxform._optimizers.loss_aware import momo
from gradxform._optimizers.loss_aware import momo_adam
from gradxform._optimizers.loss_aware import polyak_sgd
from gradxform._transforms.momo import scale_by_momo
from gradxform._transforms.momo import scale_by_momo_adam
from gradxform._transforms.polyak import scale_by_polyak
from gradxform._wrappers.lookahead import lookahead
from gradxform._wrappers.lookahead import lookahead_params
from gradxform._wrappers.sam import sam
from gradxform._wrappers.sam import sam_perturbation
# --- issue 16: torch forms and guards (Rprop, ASGD, skip_large_updates, loss scaling) ---
from gradxform._optimizers.torch_forms import asgd
from gradxform._optimizers.torch_forms import asgd_average
from gradxform._optimizers.torch_forms import asgd_averaging
from gradxform._optimizers.torch_forms import rprop
from gradxform._transforms.rprop import scale_by_rprop
from gradxform._wrappers.loss_scale import dynamic_loss_scale
from gradxform._wrappers.loss_scale import loss_scale
from gradxform._wrappers.skip import skip_large_updates

# --- issue 17: adafactor ---
from gradxform._optimizers.memory_light import adafactor
from gradxform._transforms.factored import scale_by_factored_rms
from gradxform._transforms.factored import scale_by_param_block_rms
# --- issue 17: muon ---
from gradxform._optimizers.muon import muon
from gradxform._transforms.orthogonalize import MuonDimensionNumbers
from gradxform._transforms.orthogonalize import orthogonalize
from gradxform._transforms.orthogonalize import scale_by_shape

# --- issue 18: schedule-free, Prodigy, D-Adaptation ---
from gradxform._optimizers.lr_free import dadapt_adamw
from gradxform._optimizers.lr_free import prodigy
from gradxform._optimizers.lr_free import schedule_free_adamw
from gradxform._optimizers.lr_free import schedule_free_sgd
from gradxform._transforms.distance import scale_by_dadapt_adam
from gradxform._transforms.distance import scale_by_prodigy
from gradxform._wrappers.schedule_free import schedule_free
from gradxform._wrappers.schedule_free import schedule_free_eval_params
# --- issue 18: DoG, DoWG, Mechanic, COCOB ---
from gradxform._optimizers.parameter_free import cocob
from gradxform._optimizers.parameter_free import dog
from gradxform._optimizers.parameter_free import dowg
from gradxform._transforms.cocob import scale_by_cocob
from gradxform._transforms.dog import scale_by_dog
from gradxform._transforms.dog import scale_by_dowg
from gradxform._wrappers.mechanize import mechanize
# --- issue 18: L-BFGS and line searches ---
from gradxform._optimizers.lbfgs import lbfgs
from gradxform._transforms.lbfgs import scale_by_lbfgs
from gradxform._transforms.linesearch import scale_by_backtracking_linesearch
from gradxform._transforms.linesearch import scale_by_zoom_linesearch
from gradxform._transforms.linesearch import value_and_grad_from_state
# --- issue 18: YellowFin ---
from gradxform._optimizers.yellowfin import yellowfin
from gradxform._transforms.yellowfin import scale_by_yellowfin
# --- issue 17: Shampoo, SOAP ---
from gradxform._optimizers.matrix import shampoo
from gradxform._optimizers.matrix import soap
from gradxform._transforms.shampoo import scale_by_shampoo
from gradxform._transforms.soap import scale_by_soap

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
