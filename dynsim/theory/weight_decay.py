"""AdamW's steady state and the width scaling of weight decay (Fan et al. 2025, "Robust layerwise scaling rules
by proper weight decay tuning", arXiv:2510.15262).

A weight matrix that feeds a scale-invariant block (a normalisation layer follows it) does not change the function
when it is rescaled, so its gradient is orthogonal to it and its norm is set by AdamW alone: the steps add to the
norm, the decoupled decay takes from it, and after ``~1 / (lr * wd)`` steps the two balance
(:func:`equilibrium_steps`, :func:`steady_frobenius_norm`). Fan et al. find the top singular value of a matrix-like
parameter at ``sqrt(lr / wd) * n^0.75`` at width ``n`` (:func:`top_singular_value`); with muP's ``lr ∝ 1/n`` for
those parameters, keeping it, and so each sublayer's gain, the same at every width needs ``wd ∝ sqrt(n)``
(:func:`wd_exponent`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PAPER_SV_EXPONENT", "equilibrium_steps", "steady_frobenius_norm", "top_singular_value",
           "relative_update", "wd_exponent", "optimum_exponent", "RULES"]

PAPER_SV_EXPONENT = 0.75  # Fan et al. (2025), section 3: the width exponent of sigma_max / sqrt(lr / wd).
# The width exponents of weight decay an experiment compares: no scaling, the paper's rule, and linear scaling
# (which keeps lr * wd fixed when lr ∝ 1/n, the "independent weight decay" of Wortsman et al. 2024).
RULES = (0.0, 0.5, 1.0)


def equilibrium_steps(lr, wd):
    """Steps AdamW takes to forget the initial norm of a decayed parameter: the decay's time constant.

    .. math::

        T = \\frac{1}{\\eta\\lambda},\\qquad w_t = (1 - \\eta\\lambda)^t w_0 + (\\text{steps}),

    so the initial weights are down by ``e^{-t / T}`` after ``t`` steps. ``eta`` is the parameter's learning rate
    (under muP with Adam, ``lr / n`` for a hidden matrix) and ``lambda`` the decoupled decay coefficient, applied
    as ``eta * lambda * w`` per step as in ``optax.adamw``. Exact for the decay term; the steady state also needs
    the update statistics to have settled, which takes as long for Adam's moments (``1 / (1 - beta2)`` steps) when
    that is shorter. Loshchilov & Hutter (2019); Kosson et al. (2024), "Rotational equilibrium".
    """
    return 1.0 / (np.asarray(lr, float) * np.asarray(wd, float))


def steady_frobenius_norm(lr, wd, update_rms, n_entries):
    """Frobenius norm at which AdamW's decay balances its steps, for a parameter whose gradient is orthogonal to it.

    .. math::

        \\|W\\|_F^2 = \\frac{\\eta\\,\\|u\\|_F^2}{\\lambda\\,(2 - \\eta\\lambda)}
        \\approx \\frac{\\eta}{2\\lambda}\\, N\\, u_{\\rm rms}^2,

    from ``W_{t+1} = (1 - eta lambda) W_t - eta u_t`` with ``<W_t, u_t> = 0`` on average (scale invariance makes
    the gradient orthogonal to ``W``, and Adam's elementwise normalisation keeps its update nearly so), where ``u``
    is Adam's normalised update with ``N`` entries of RMS ``u_rms`` (at most 1). Kosson et al. (2024), "Rotational
    equilibrium: how weight decay balances learning across neural networks", eq. 8.

    Regime: steady state (``t >> 1 / (eta lambda)``), a parameter that feeds a scale-invariant block, ``eta lambda
    << 1``.
    """
    lr, wd = np.asarray(lr, float), np.asarray(wd, float)
    return np.sqrt(lr / (wd * (2.0 - lr * wd)) * n_entries) * np.asarray(update_rms, float)


def top_singular_value(lr, wd, width, coefficient=1.0, exponent: float = PAPER_SV_EXPONENT):
    """The top singular value of a matrix-like parameter in AdamW's steady state, as Fan et al. (2025) report it.

    .. math::

        \\sigma_{\\max}(W) = C \\sqrt{\\eta / \\lambda}\\; n^{0.75}.

    The ``sqrt(eta / lambda)`` follows from :func:`steady_frobenius_norm`, and so does the shape of the singular
    spectrum, which is the same at every ``eta / lambda``. The width exponent is measured, not derived: the two
    limits bracket it. Updates uncorrelated from step to step sum to a random matrix, whose top singular value is
    ``2 sqrt(n)`` times its entries' RMS (``sqrt(eta / lambda) n^0.5``); updates that keep one direction sum to a
    rank-one matrix with ``sigma_max = ||W||_F`` (``sqrt(eta / lambda) n^1``). Gradients of a trained network are
    low-rank but turn over, between the two; Fan et al. measure 0.75 in transformers.

    Regime: AdamW, steady state, a matrix whose both dimensions grow with width, followed by a normalisation;
    ``C`` depends on the architecture and the data, not on ``eta``, ``lambda`` or ``n``.

    Args:
      lr: the matrix's learning rate ``eta`` (under muP ``lr / n``).
      wd: the decoupled decay coefficient ``lambda``.
      width: ``n``.
      coefficient: ``C``.
      exponent: the width exponent (0.75; 0.5 and 1 are the limits above).
    """
    return coefficient * np.sqrt(np.asarray(lr, float) / np.asarray(wd, float)) * np.asarray(width, float) ** exponent


def relative_update(lr, wd, width, sv_exponent: float = PAPER_SV_EXPONENT, update_exponent: float = 1.0):
    """The spectral norm of one AdamW step relative to the steady top singular value of a matrix-like parameter.

    .. math::

        \\frac{\\|\\Delta W\\|_2}{\\sigma_{\\max}(W)}
        \\approx \\frac{\\eta\\, n^{k}}{\\sqrt{\\eta/\\lambda}\\; n^{\\gamma}}
        = \\sqrt{\\eta\\lambda}\\; n^{k - \\gamma},

    with ``sigma_max`` from :func:`top_singular_value` (coefficient 1) and Adam's step ``eta u`` of spectral norm
    ``eta n^k`` (``k`` = ``update_exponent``) and ``gamma`` = ``sv_exponent``: the step's entries are O(1), so
    ``k = 1`` when one step is low-rank (a minibatch's gradient, the regime
    in which muP's hidden rate ``eta ∝ 1/n`` keeps the step's spectral norm Θ(1); Yang et al. 2023, "A spectral
    condition for feature learning") and ``k = 1/2`` for a dense random step. Keeping this ratio the same at every
    width is what makes the optimal ``(eta, lambda)`` transfer (:func:`wd_exponent`). Fan et al. (2025), section
    3; Kosson et al. (2024), "Rotational equilibrium", for the same ratio in Frobenius norm, ``sqrt(2 eta lambda)``.

    Regime: that of :func:`top_singular_value`, ``eta lambda << 1``; order of magnitude (the prefactors of both norms
    are left out).
    """
    lr, wd, n = (np.asarray(v, float) for v in (lr, wd, width))
    return np.sqrt(lr * wd) * n ** (update_exponent - sv_exponent)


def wd_exponent(sv_exponent: float = PAPER_SV_EXPONENT, lr_exponent: float = -1.0, lr_power: float = 0.5,
                wd_power: float = 0.5) -> float:
    """The width exponent ``p`` of weight decay, ``wd ∝ n^p``, that keeps ``sigma_max`` of a matrix fixed.

    .. math::

        \\sigma_{\\max} \\propto \\eta^{a}\\lambda^{-b}\\, n^{\\alpha},\\quad
        \\eta \\propto n^{e},\\ \\lambda \\propto n^{p} \\text{ width-independent} \\iff p = \\frac{\\alpha + a e}{b},

    with ``alpha`` the singular value's width exponent and ``a = b = 1/2`` its exponents of ``eta`` and ``lambda``
    (:func:`top_singular_value`), ``e`` the learning rate's width exponent (``-1`` for a hidden matrix under muP with
    Adam, :func:`dynsim.param.mup`). At ``a = b = 1/2`` this is ``p = 2 alpha + e``, and the paper's ``alpha = 0.75``
    gives ``p = 1/2``: ``wd ∝ sqrt(n)`` (Fan et al. 2025, eq. 4). A sublayer's gain is its top singular value, so at
    this ``p`` each sublayer amplifies its input by the same factor at every width, and an optimal ``(lr, wd)`` found
    at one width, in muP's units and ``wd / n^p``, transfers to the others. ``a`` and ``b`` are the measured ones
    where the steady state departs from the square-root law.

    The same ``p`` keeps the relative step :func:`relative_update` fixed when one step is low-rank (spectral norm
    ``eta n``): ``eta n / sigma_max ∝ eta^(1 - a) lambda^b n^(1 - alpha)`` is width-independent iff
    ``(1 - a) e + b p + 1 - alpha = 0``, which at ``e = -1`` is ``p = (alpha - a) / b``, the rule above. So the
    rule that transfers follows from the measured exponents: ``alpha = 1/2`` (a random matrix) gives ``p = 0``,
    ``alpha = 1`` (rank one) gives ``p = 1`` (``lr * wd`` fixed, Wortsman et al. 2024).

    Regime: that of :func:`top_singular_value`, with an optimum set by the sublayer gains (not by a budget of steps
    too short to reach the steady state). The parametrization must give the learning rate a width dependence
    (``e != 0``): without one a width scaling of weight decay has nothing to pair with, and the rule is the paper's
    only for ``e = -1``.
    """
    values = (sv_exponent, lr_exponent, lr_power, wd_power)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"wd_exponent needs finite exponents, got {values!r}.")
    if lr_exponent == 0:
        raise ValueError("wd_exponent needs a parametrization whose learning rate scales with width (lr_exponent "
                         "!= 0), and this one has none.")
    if wd_power <= 0:
        raise ValueError(f"wd_exponent needs sigma_max to fall with weight decay (wd_power > 0), got {wd_power!r}.")
    return (sv_exponent + lr_power * lr_exponent) / wd_power


def optimum_exponent(rule: float, sv_exponent: float = PAPER_SV_EXPONENT, lr_exponent: float = -1.0,
                     lr_power: float = 0.5, wd_power: float = 0.5) -> float:
    """The width exponent of the optimal ``wd_0`` when weight decay is swept as ``wd = wd_0 (n / n_0)^rule``.

    .. math::

        \\lambda^*(n) \\propto n^{p^*} \\;\\Rightarrow\\; \\lambda_0^*(n) = \\lambda^*(n)\\,(n / n_0)^{-\\text{rule}}
        \\propto n^{p^* - \\text{rule}},

    with ``p*`` from :func:`wd_exponent` (same arguments): 0 under the rule that transfers, ``p* - rule`` under the
    others. Fan et al. (2025), the optimal ``lambda`` against width. Regime: that of :func:`wd_exponent`.
    """
    if not math.isfinite(rule):
        raise ValueError(f"optimum_exponent needs a finite rule exponent, got {rule!r}.")
    return wd_exponent(sv_exponent, lr_exponent, lr_power, wd_power) - rule
