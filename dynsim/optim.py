"""The optimizer chain every layout trains with: SGD (heavy-ball momentum, coupled L2 decay), Adam (coupled L2
decay) and AdamW (decoupled decay), per-parameter learning rates, and a learning-rate schedule.

One member's update of parameter ``w`` of layer ``l`` is ``-lr * s(t) * n^-c_l`` times the optimizer's direction,
where ``s(t)`` is :func:`lr_schedule`. The per-parameter numbers (``steps``, decay coefficients, momentum
coefficients) are trees matching the parameters, whose leaves broadcast against them: one number per layer in the
vmapped layout, one per unit in the packed layout (:mod:`dynsim.executor`), the same chain either way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["OPTIMIZERS", "SCHEDULES", "SWEPT_SCHEDULES", "lr_schedule", "check_schedule", "schedule_multipliers",
           "scale_by_tree", "weight_decay", "heavy_ball", "scale_by_adam",
           "chain", "layer_decay"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
# Names a sweep's ``schedule`` axis takes (:func:`schedule_multipliers`); ``wsd:F`` with a decay fraction ``F``.
SWEPT_SCHEDULES = ("constant", "cosine", "linear", "step", "wsd:F")
STEP_DROPS = ((0.5, 0.1), (0.75, 0.01))  # the "step" schedule: x0.1 from half the run, x0.01 from three quarters


def check_schedule(name) -> str:
    """``name`` if it names a schedule of :func:`schedule_multipliers`; else a one-sentence ``ValueError``."""
    if isinstance(name, str) and name in SWEPT_SCHEDULES[:-1]:
        return name
    if isinstance(name, str) and name.startswith("wsd:"):
        try:
            fraction = float(name[4:])
        except ValueError:
            fraction = float("nan")
        if 0 < fraction <= 1:
            return name
    raise ValueError(f"unknown schedule {name!r}; choose one of constant, cosine, linear, step or wsd:F with a "
                     "decay fraction 0 < F <= 1, such as wsd:0.2.")


def schedule_multipliers(name: str, steps: int, warmup_steps: int = 0):
    """The learning-rate multiplier of each step ``t = 0 .. steps - 1`` of a named schedule, peaking at 1, as a
    float64 numpy array (the engine's swept schedules; :func:`lr_schedule` is the static one of a whole run).

    With ``T_w = warmup_steps`` and the progress ``p = (t - T_w) / (T - T_w)`` after warmup (``T = steps``):

    .. math::

        s(t) = t / T_w\\ (t < T_w);\\quad \\text{constant: } 1;\\quad
        \\text{cosine: } \\tfrac12 (1 + \\cos \\pi p);\\quad \\text{linear: } 1 - p;

    ``step``: 1, then 0.1 from ``p = 1/2`` and 0.01 from ``p = 3/4`` (:data:`STEP_DROPS`; Goyal et al. 2017's
    ResNet drops, two of them); ``wsd:F`` (warmup-stable-decay, Hu et al. 2024, "MiniCPM"): 1 while
    ``p < 1 - F``, then linear decay over the last fraction ``F`` of the steps, ``(1 - p) / F``. Decaying schedules
    reach 0 at ``t = T`` (the step after the last). ``cosine`` is :func:`lr_schedule`'s ``"cosine"`` with
    ``decay_steps = steps``.
    """
    check_schedule(name)
    t = np.arange(steps, dtype=np.float64)
    p = (t - warmup_steps) / max(steps - warmup_steps, 1)
    if name == "constant":
        s = np.ones(steps)
    elif name == "cosine":
        s = 0.5 * (1.0 + np.cos(np.pi * p))
    elif name == "linear":
        s = 1.0 - p
    elif name == "step":
        s = np.ones(steps)
        for at, factor in STEP_DROPS:
            s = np.where(p >= at, factor, s)
    else:
        fraction = float(name[4:])
        s = np.where(p < 1.0 - fraction, 1.0, (1.0 - p) / fraction)
    if warmup_steps:
        s = np.where(t < warmup_steps, t / warmup_steps, s)
    return s


def lr_schedule(schedule: str, warmup_steps: int = 0, decay_steps: int = 0) -> optax.Schedule | None:
    """The learning-rate multiplier of step ``t``, peaking at 1 (``None``: constant 1, no transform needed).

    .. math::

        s(t) = \\frac{t}{T_w}\\ (t < T_w),\\qquad
        s(t) = \\tfrac12\\Big(1 + \\cos\\frac{\\pi (t - T_w)}{T - T_w}\\Big)\\ (\\text{cosine}, t \\ge T_w),

    and ``s(t) = 1`` after warmup for ``"constant"``; ``T_w`` is ``warmup_steps`` and ``T`` is ``decay_steps``.
    Loshchilov & Hutter (2017), "SGDR: stochastic gradient descent with warm restarts", for the cosine form; the
    linear warmup follows Goyal et al. (2017).
    """
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, max(decay_steps, warmup_steps + 1), 0.0)
    if warmup_steps:
        return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup_steps), optax.constant_schedule(1.0)],
                                    [warmup_steps])
    return None


def _transform(update, init=None) -> optax.GradientTransformation:
    return optax.GradientTransformation(init or (lambda params: optax.EmptyState()), update)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiply each update leaf by the matching leaf of ``scales`` (per-parameter learning rates)."""
    return _transform(lambda updates, state, params=None: (jax.tree.map(lambda u, s: s * u, updates, scales),
                                                          state))


def weight_decay(coefficients=None, decay_term=None) -> optax.GradientTransformation:
    """Add the decay term to the updates: ``coefficient * w`` per leaf (a ``None`` leaf of ``coefficients`` is not
    decayed), or ``decay_term(params)`` where a model defines its own (:attr:`dynsim.models.Model.custom_decay`)."""
    if decay_term is not None:
        return _transform(lambda updates, state, params=None: (jax.tree.map(jnp.add, updates, decay_term(params)),
                                                              state))

    def update(updates, state, params=None):
        return tuple(g if c is None else g + c * w for g, w, c in zip(updates, params, coefficients)), state

    return _transform(update)


def layer_decay(model, coefficient):
    """The decay transform of a model with one coefficient for every parameter it decays (:attr:`decayed`)."""
    if model.custom_decay:
        return weight_decay(decay_term=lambda params: model.decay_term(params, coefficient))
    return weight_decay(tuple(coefficient if d else None for d in model.decayed))


def heavy_ball(momentum) -> optax.GradientTransformation:
    """Heavy-ball momentum ``t <- g + beta t``, the direction being ``t`` (``optax.trace``), with a tree of
    coefficients ``beta``."""

    def update(updates, state, params=None):
        trace = jax.tree.map(lambda g, old, b: g + b * old, updates, state, momentum)
        return trace, trace

    return _transform(update, lambda params: jax.tree.map(jnp.zeros_like, params))


@jax.custom_jvp
def _sqrt(x):
    return jnp.sqrt(x)


@_sqrt.defjvp
def _sqrt_jvp(primals, tangents):
    # sqrt's derivative is infinite at 0, where Adam's second moment sits for a parameter whose gradient has been
    # exactly 0 (a padded unit, a frozen layer): there the update m / (sqrt(v) + eps) has m = 0 and moves by
    # dm / eps to first order, which a zero tangent of sqrt(v) gives, while sqrt's own gives 0 * inf = NaN.
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    return y, jnp.where(x > 0, dx / (2 * jnp.where(x > 0, y, 1)), 0)


def _bias_correction(moment, decay, count):
    # optax's bias correction, operation for operation (its helper moved between optax releases)
    correction = 1 - decay**count
    return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` (its state and its update ``m_hat / (sqrt(v_hat) + eps)``, the same arithmetic), with
    a derivative that stays finite where the second moment is 0, so that training can be differentiated in its
    hyperparameters (:func:`dynsim.hypergrad`)."""
    adam = optax.scale_by_adam(b1, b2, eps)

    def update(updates, state, params=None):
        _, state = adam.update(updates, state, params)
        m_hat = _bias_correction(state.mu, b1, state.count)
        v_hat = _bias_correction(state.nu, b2, state.count)
        return jax.tree.map(lambda m, v: m / (_sqrt(v) + eps), m_hat, v_hat), state

    return optax.GradientTransformation(adam.init, update)


def chain(optimizer: str, steps, *, decay: optax.GradientTransformation | None = None, momentum=None,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """One member's optimizer (or a pack's, with per-unit trees).

    ``sgd``: coupled decay, heavy-ball momentum, per-parameter step. ``adam``: decay added to the gradient before
    Adam's scaling. ``adamw``: decoupled weight decay (Loshchilov & Hutter), scaled by the parameter's learning rate
    as in ``optax.adamw``. The schedule multiplies the whole step, decay term included.

    Args:
      optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
      steps: tree of ``-lr * n^-c`` per parameter.
      decay: the decay transform (:func:`weight_decay`, :func:`layer_decay`); ``None`` leaves it out of the program.
      momentum: tree of heavy-ball coefficients for ``sgd``; ``None`` carries no momentum buffer.
      betas, eps: Adam's constants.
      schedule: :func:`lr_schedule`; ``None`` for a constant rate.
    """
    decays = [decay] if decay is not None else []
    step = ([optax.scale_by_schedule(schedule)] if schedule is not None else []) + [scale_by_tree(steps)]
    if optimizer == "sgd":
        return optax.chain(*decays, *([heavy_ball(momentum)] if momentum is not None else []), *step)
    adam = scale_by_adam(*betas, eps)
    if optimizer == "adam":
        return optax.chain(*decays, adam, *step)
    if optimizer == "adamw":
        return optax.chain(adam, *decays, *step)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
