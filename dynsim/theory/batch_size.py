"""Batch-size laws: the critical batch size's step/example trade-off, the optimal learning rate of SGD and Adam
against batch size, and the top eigenvalue of a mini-batch Hessian.

All functions are pure and broadcast over NumPy arrays (and plain floats). ``n_train`` is the training-set size
``P`` a mini-batch is drawn from without replacement; ``n_train=inf`` (the default) is the papers' setting of
batches drawn from the population, where ``P / (P - 1) * (1/B - 1/P)`` becomes ``1/B``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["noise_fraction", "steps_to_target", "examples_to_target", "optimal_lr", "batch_hessian_top",
           "outlier_hessian_top", "bulk_edge_hessian_top", "LR_EXPONENTS"]

# Slope of log lr* against log B below the critical batch size (module docstring of optimal_lr).
LR_EXPONENTS = {"sgd": 1.0, "adam": 0.5, "adamw": 0.5}


def noise_fraction(batch, n_train=np.inf):
    """The variance of a mini-batch mean relative to one sample's: ``1/B`` with replacement (``n_train = inf``),
    ``P / (P - 1) * (1/B - 1/P)`` without (the finite-population correction, 0 at ``B = P``)."""
    b = np.asarray(batch, dtype=float)
    p = float(n_train)
    if np.isinf(p):
        return 1.0 / b
    return p / (p - 1.0) * (1.0 / b - 1.0 / p)


def steps_to_target(batch, s_min, b_noise, n_train=np.inf):
    """Steps to reach a target loss at batch size ``B`` with a tuned learning rate: ``S = S_min (1 + B_noise / B)``.

    .. math::

        S(B) = S_{\\min}\\Big(1 + \\frac{\\mathcal B_\\text{noise}}{B}\\Big),\\qquad
        \\mathcal B_\\text{noise} = \\frac{\\operatorname{tr}(H\\Sigma)}{G^\\top H G}
        \\approx \\mathcal B_\\text{simple} = \\frac{\\operatorname{tr}\\Sigma}{|G|^2}.

    McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch Training", eq. (2.11): on a local
    quadratic model, the best step with a gradient averaged over ``B`` samples improves the loss by
    ``dL_max / (1 + B_noise / B)``, so a training run needs ``1 + B_noise / B`` times the steps of full-batch
    (noise-free) training, ``S_min``. The critical batch size ``B_crit = E_min / S_min`` is where both costs are
    twice their minimum; the paper finds ``B_crit`` close to the simple noise scale measured along the run.
    With ``n_train`` finite, ``1/B`` becomes :func:`noise_fraction` (``S = S_min`` at full batch).

    Regime: a tuned learning rate at each ``B``; ``B_noise`` roughly constant over the run (it grows as the loss
    falls, so the fitted value is an average over the run); steps small enough that the quadratic model holds.
    """
    return s_min * (1.0 + b_noise * noise_fraction(batch, n_train))


def examples_to_target(batch, e_min, b_noise, n_train=np.inf):
    """Examples processed to reach the target: ``E = B S = E_min (1 + B / B_noise)`` (McCandlish et al. 2018,
    eq. 2.11, with ``E_min = S_min B_noise``). With ``n_train`` finite, ``B * noise_fraction(B)`` replaces 1.

    Regime: as :func:`steps_to_target`, of which it is the same law in other units.
    """
    b = np.asarray(batch, dtype=float)
    return e_min / b_noise * b * (1.0 + b_noise * noise_fraction(b, n_train))


def optimal_lr(batch, lr_max, b_noise, optimizer: str = "sgd", n_train=np.inf):
    """Optimal learning rate against batch size: ``lr_max / (1 + B_noise / B)^k`` with ``k = 1`` for SGD and
    ``k = 1/2`` for Adam, so ``lr* ~ B^k`` below the critical batch size and ``lr* -> lr_max`` above it.

    .. math::

        \\eta^*_\\text{SGD}(B) = \\frac{\\eta_{\\max}}{1 + \\mathcal B_\\text{noise}/B},\\qquad
        \\eta^*_\\text{Adam}(B) = \\frac{\\eta_{\\max}}{\\sqrt{1 + \\mathcal B_\\text{noise}/B}}.

    SGD: McCandlish et al. (2018), eq. (2.7): the step that maximises the expected improvement of a noisy
    quadratic. Adam: Granziol, Zohren & Roberts (2022), "Learning Rates as a Function of Batch Size: A Random
    Matrix Theory Approach to Neural Network Training" (JMLR 23), derive a square-root rule for adaptive methods
    below the critical batch size; Malladi et al. (2022), "On the SDEs and Scaling Rules for Adaptive Gradient
    Algorithms", obtain it from the SDE: Adam divides the gradient by ``sqrt(v)``, which the noise sets to
    ``sqrt(tr Sigma / B)`` when ``B << B_noise``, so the effective SGD rate is ``lr sqrt(B)`` and the linear rule
    for it is a square-root rule for ``lr``. The interpolation through ``B_noise`` is the same saturation as SGD's.

    Regime: lr* as the rate that reaches a target loss in the fewest steps (a target near the small-batch noise
    floor); ``B_noise`` as in :func:`steps_to_target`; Adam with ``v`` dominated by gradient noise (small ``B``,
    ``eps`` negligible).
    """
    k = {"sgd": 1.0, "adam": 0.5, "adamw": 0.5}[optimizer]
    return lr_max / (1.0 + b_noise * noise_fraction(batch, n_train)) ** k


def batch_hessian_top(batch, lam_full, lam_one, n_train=np.inf):
    """Expected top eigenvalue of the mini-batch Hessian: the full Hessian's top eigenvalue ``lam`` plus a noise
    matrix of strength ``r = s sqrt(q(B))``, which it leaves as an outlier or is absorbed into (a BBP transition).

    .. math::

        \\lambda_{\\max}(H_B) = \\begin{cases} \\lambda + r^2/\\lambda & r < \\lambda \\\\ 2 r & r \\ge \\lambda
        \\end{cases},\\qquad r = s\\,\\sqrt{q(B)},\\quad q(B) = \\frac{1/B - 1/P}{1 - 1/P}.

    Granziol, Zohren & Roberts (2022), "Learning Rates as a Function of Batch Size: A Random Matrix Theory Approach to
    Neural Network Training" (JMLR 23), theorem 4: the mini-batch Hessian is the full one plus a noise matrix whose
    variance scales as ``(P - B) / (P B)``; with the full Hessian's top eigenvalue ``lam`` a spike and the noise
    Wigner-like of edge ``2 r``, the top eigenvalue is the spike shifted by ``r^2 / lam`` (linear in the noise
    variance) while the spike stands out (large ``B``), and the noise's edge ``2 r`` (a square root of the variance)
    once it does not (small ``B``). Either way it is larger for smaller batches, and ``lr_max ~ 2 / lam_B`` grows
    with ``B`` until it saturates at ``2 / lam``. The two constants are pinned at the ends: ``lam = lam_full`` (at
    ``B = P``, ``q = 0``) and ``s`` from ``lam_one``, the mean top eigenvalue of one sample's Hessian (``q = 1``).

    Regime: large matrices (the law is the large-dimension limit of a rank-one spike plus Wigner noise; a finite
    mini-batch Hessian's noise has rank at most ``B`` times the outputs, which rounds the switch between the two
    branches); the Hessian near initialisation. :func:`outlier_hessian_top` and :func:`bulk_edge_hessian_top` are
    the two branches continued over every ``B``.
    """
    lam = np.asarray(lam_full, dtype=float)
    one = np.asarray(lam_one, dtype=float)
    s = np.where(one >= 2 * lam, one / 2, np.sqrt(np.maximum(lam * (one - lam), 0.0)))
    r = s * np.sqrt(noise_fraction(batch, n_train) / noise_fraction(1, n_train))
    return np.where(r < lam, lam + r**2 / lam, 2 * r)


def outlier_hessian_top(batch, lam_full, lam_one, n_train=np.inf):
    """The outlier branch of :func:`batch_hessian_top` over every ``B``, pinned at the same ends:
    ``lam_B = lam_P + (lam_1 - lam_P) q(B)`` (linear in the noise variance ``q``).

    Regime: the full Hessian's top eigenvalue well above the noise at every batch size (Granziol et al. 2022,
    theorem 4, above the transition).
    """
    q = noise_fraction(batch, n_train) / noise_fraction(1, n_train)
    return lam_full + (lam_one - lam_full) * q


def bulk_edge_hessian_top(batch, lam_full, lam_one, n_train=np.inf):
    """The bulk-edge branch over every ``B``, pinned at the same ends:
    ``lam_B = lam_P + (lam_1 - lam_P) sqrt(q(B))`` (a square root of the noise variance).

    Regime: no outlier (Granziol et al. 2022, theorem 4, below the transition: the extremal eigenvalue sits at the
    noise's spectral edge ``2 sigma sqrt((P - B) / (P B))``).
    """
    q = noise_fraction(batch, n_train) / noise_fraction(1, n_train)
    return lam_full + (lam_one - lam_full) * np.sqrt(q)
