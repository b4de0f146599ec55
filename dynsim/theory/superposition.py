"""Loss scaling of superposition toy models with the hidden dimension ``m``, and the geometry behind it.

Liu, Liu & Gore (2025), "Superposition yields robust neural scaling" (arXiv 2505.10465), study the model
``x' = ReLU(W^T W x + b)`` (:class:`dynsim.models.Superposition`) on features with frequencies
``p_i \\propto i^{-alpha}`` (:class:`dynsim.tasks.SparseFeatures`):

- *weak superposition* (large positive weight decay): only the most frequent features are represented, each
  without interference, and the loss is what the unrepresented tail leaves, ``L \\propto m^{-(alpha - 1)}``;
- *strong superposition* (weight decay <= 0, every feature represented): the loss is interference between
  overlapping directions, whose squared overlaps scale as ``1/m``, so ``L \\propto 1/m`` for flat enough
  frequency laws; for skewed ones (``alpha`` above about 1.5) the exponent rises above 1, towards ``2 (alpha - 1)``
  (:func:`strong_exponent_bounds`).

All functions are pure NumPy and broadcast over their arguments where noted. Losses are in dynsim's convention,
``0.5 * mean`` over the ``n`` features and the samples.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unrepresented_loss", "weak_loss", "weak_exponent", "strong_exponent", "skewed_strong_exponent",
           "strong_exponent_bounds", "random_overlap", "welch_bound", "V_MEAN", "V_SQUARE_MEAN"]

V_MEAN = 1.0  # E[v] for v ~ U(0, 2)
V_SQUARE_MEAN = 4.0 / 3.0  # E[v^2] for v ~ U(0, 2)


def unrepresented_loss(probs, represented) -> float:
    """Loss left by the features a model does not represent, when it reconstructs the others exactly.

    .. math::

        L = \\frac{1}{2n} \\sum_{i \\notin R} \\mathrm{Var}(x_i)
          = \\frac{1}{2n} \\sum_{i \\notin R} \\big(p_i\\,\\mathbb E[v^2] - p_i^2\\,\\mathbb E[v]^2\\big),
        \\qquad \\mathbb E[v] = 1,\\ \\mathbb E[v^2] = \\tfrac43 \\ (v \\sim U(0, 2)).

    An unrepresented feature (``w_i = 0``) is output as the constant ``ReLU(b_i)``, best at ``b_i = E[x_i] = p_i``,
    which leaves its variance; a represented one with ``|w_i| = 1``, orthogonal to the rest, is reconstructed
    exactly. Liu et al. (2025), Sec. 3 (weak superposition).

    Regime: weak superposition, where represented directions do not overlap; the bias has converged.

    Args:
      probs: ``[n]`` activation probabilities ``p_i``.
      represented: ``[n]`` boolean mask of represented features.
    """
    probs = np.asarray(probs, dtype=float)
    variance = probs * V_SQUARE_MEAN - (probs * V_MEAN) ** 2
    return float(0.5 * np.sum(np.where(np.asarray(represented, bool), 0.0, variance)) / probs.size)


def weak_loss(m, probs):
    """Weak-superposition loss at hidden dimension ``m``: the ``m`` most frequent features are represented.

    .. math::

        L_{\\rm weak}(m) = \\frac{1}{2n} \\sum_{i > m} \\big(\\tfrac43 p_i - p_i^2\\big)
        \\;\\approx\\; \\frac{2 E}{3 n\\, \\zeta_n(\\alpha)\\,(\\alpha - 1)} \\big(m^{1-\\alpha} - n^{1-\\alpha}\\big),
        \\qquad p_i = E\\, i^{-\\alpha} / \\zeta_n(\\alpha),

    with ``zeta_n(alpha) = sum_{j<=n} j^-alpha``: a power law ``m^-(alpha - 1)`` for ``m << n`` and ``alpha > 1``
    (:func:`weak_exponent`), bent down near ``m ~ n`` by the finite number of features. The prefactor is exact given
    the premise (:func:`unrepresented_loss` with ``R = {1..m}``). Liu et al. (2025), Sec. 3.

    Regime: weak superposition with exactly ``m`` features represented. Under strong weight decay a trained model
    may represent somewhat fewer or more than ``m`` features; :func:`unrepresented_loss` takes the measured set.

    Args:
      m: hidden dimensions (array-like of non-negative integers; broadcasts).
      probs: ``[n]`` activation probabilities, most frequent first.
    """
    probs = np.asarray(probs, dtype=float)
    variance = probs * V_SQUARE_MEAN - (probs * V_MEAN) ** 2
    tail = np.concatenate([np.cumsum(variance[::-1])[::-1], [0.0]])  # tail[k] = sum_{i >= k} (0-based)
    m = np.clip(np.asarray(m, dtype=int), 0, probs.size)
    return 0.5 * tail[m] / probs.size


def weak_exponent(alpha):
    """Exponent of ``L ∝ m^-exponent`` in weak superposition: ``alpha - 1`` (for ``alpha > 1``).

    .. math::

        \\sum_{i > m} i^{-\\alpha} \\simeq \\frac{m^{1-\\alpha}}{\\alpha - 1}\\qquad (m \\ll n,\\ \\alpha > 1).

    Liu, Liu & Gore (2025), "Superposition yields robust neural scaling", weak-superposition analysis: the ``m``
    most frequent features are represented without interference and the loss is the frequency mass of the rest,
    each unrepresented feature costing half the variance of ``x_i``, ``(4/3 p_i - p_i^2) / 2`` (the bias outputs its
    mean; :func:`weak_loss`). Regime: ``alpha > 1`` and ``m << n``; for ``alpha <= 1`` the tail
    is not a power law of ``m`` (NaN is returned).
    """
    alpha = np.asarray(alpha, dtype=float)
    return np.where(alpha > 1, alpha - 1.0, np.nan)


def strong_exponent(alpha=None):
    """Exponent of ``L ∝ m^-exponent`` in strong superposition with flat enough frequencies: 1.

    Every feature is represented; an active feature ``j`` leaks ``(w_i . w_j) x_j`` into every output ``i``, and
    with ``n >> m`` directions packed in ``m`` dimensions the squared overlaps are ``~1/m``
    (:func:`random_overlap`, :func:`welch_bound`), so the interference the bias and the ReLU cannot remove, and with
    it the loss, scales as ``1/m``. Liu et al. (2025), Sec. 3.2 (the overlap law, their Eq. 5).

    Regime: strong superposition (weight decay < 0 in their training, every direction near unit norm), ``n >> m``,
    training long enough for the frame to settle. Measured with dynsim at ``n = 1000``, ``m = 8..128``, one seed
    (exponent fitted over the five ``m``; AdamW 0.02, warmup + cosine, ``gamma = -1``):

    ======  ==========================================================================================
    alpha   exponent (steps x batch, ``p_active``)
    ======  ==========================================================================================
    0       1.13 (1000 x 256, 1), 1.02 (500 x 128, 1.6), 1.06 (700 or 1000 x 128, 1.3)
    0.5     1.16 (1000 x 256, 1), 1.06 (500 x 128, 1.6), 1.11 (700 x 128, 1.3), 1.10 (1000 x 128, 1.3)
    1       1.36 (1000 x 256, 1)
    1.5     1.65 (1000 x 256, 1), 1.53 (3000 x 256, 1)
    2       1.86 (3000 x 256, 1), 1.59 (1000 x 128, 1.6), 1.67 (700 x 128, 1.3), 1.65 (2800 x 128, 1.3)
    2.5     1.49 (700 x 128, 1.3), 1.47 (1000 x 128, 1.3)
    ======  ==========================================================================================

    So at these sizes ``1/m`` holds for ``alpha <= 0.5`` and the decay is steeper for skewed frequencies, with
    ``m x`` mean squared overlap 1.2-1.6 at ``alpha = 2`` (1.4-2 at 2.5), above even random directions (1). It is not
    a matter of training length: at ``alpha = 2`` four times the steps lower the loss 2.5-3-fold at every ``m``
    and leave the exponent at 1.65. The decay is not a single power law over ``m = 8..128`` either: its local slope
    is about 2 between ``m = 8`` and 32 and 0.6-0.7 between 64 and 128, a crossover at this ``n``.

    Liu et al. find the same (Sec. 3.2 and Fig. 5e: "``alpha_m = 1`` if feature frequencies are flat (``alpha``
    small) ... But ``alpha_m ~ 2(alpha - 1)`` if the feature frequencies are skewed (``alpha`` large)"; their
    Fig. 18, ``m = 50..150``: about 1 below ``alpha = 1.5``, rising but below ``2 (alpha - 1)`` above it). The
    ``1/m`` law is this function; the range skewed frequencies fall in is :func:`strong_exponent_bounds`.
    """
    return np.ones_like(np.asarray(1.0 if alpha is None else alpha, dtype=float))


def skewed_strong_exponent(alpha):
    """Liu et al.'s steepest strong-superposition exponent for skewed frequencies: ``2 (alpha - 1)``, for ``alpha > 1``.

    .. math::

        L \\propto \\sum_{i > m^2/2} p_i \\propto (m^2)^{-(\\alpha - 1)} = m^{-2(\\alpha - 1)}.

    Derivation (Liu, Liu & Gore 2025, Sec. 3.2 and App. A.1, a heuristic they call a conjecture): with about one
    active feature per sample, about ``m^2 / 2`` features can be *strongly* represented (direction norm above 1,
    close to an equiangular frame in ``m`` dimensions); their interference contributes ``~1/m``. The rarer features
    are represented weakly and, at worst, lose their whole variance, like the unrepresented tail of weak
    superposition but with ``m^2 / 2`` in place of ``m`` (:func:`unrepresented_loss`). When the strongly represented
    features dominate the loss the exponent is 1 (:func:`strong_exponent`); when the weakly represented ones do, it is
    ``2 (alpha - 1)``.

    Regime: strong superposition (weight decay < 0), ``alpha > 1`` (NaN otherwise), ``m^2 / 2 < n`` (once every
    feature fits in the strongly represented set the tail is gone and the exponent returns to 1). An upper guide
    rather than a law: Liu et al. measure exponents that rise with ``alpha`` above 1.5 but stay below it.
    """
    alpha = np.asarray(alpha, dtype=float)
    return np.where(alpha > 1, 2.0 * (alpha - 1.0), np.nan)


def strong_exponent_bounds(alpha):
    """Range of the strong-superposition exponent: ``(1, max(1, 2 (alpha - 1)))``.

    The ``1/m`` law of interference (:func:`strong_exponent`) is the lower end; the loss of weakly represented rare
    features, ``m^-2(alpha - 1)`` (:func:`skewed_strong_exponent`), the upper end where it is steeper. For flat
    frequencies (``alpha <= 1.5``) both ends are 1. Liu, Liu & Gore (2025), Fig. 5e (measured exponents against
    ``alpha`` with both lines) and Fig. 18 (within the range at ``alpha`` up to 2).

    Regime: strong superposition (weight decay < 0), ``n >> m``. Returns two arrays broadcast like ``alpha``.
    """
    alpha = np.asarray(alpha, dtype=float)
    return np.ones_like(alpha), np.maximum(1.0, 2.0 * (alpha - 1.0))


def random_overlap(m):
    """Mean squared overlap of two independent uniformly random unit vectors in ``R^m``: ``1/m``.

    .. math::

        \\mathbb E[(u \\cdot v)^2] = \\sum_{k,l} \\mathbb E[u_k u_l]\\,\\mathbb E[v_k v_l]
        = \\sum_k \\frac{1}{m^2} = \\frac1m,

    since ``E[u u^T] = I/m``. Exact for every ``m >= 1``; its variance is ``2(m - 1) / (m^2 (m + 2))`` (the
    squared overlap is ``Beta(1/2, (m - 1)/2)``-distributed; Vershynin 2018, "High-Dimensional Probability", §3.3).
    Regime: independent, isotropic directions, such as an untrained model's; trained ones sit near
    :func:`welch_bound` instead.
    """
    return 1.0 / np.asarray(m, dtype=float)


def welch_bound(n, m):
    """Smallest possible mean squared overlap of ``n`` unit vectors in ``R^m`` over pairs ``i != j``.

    .. math::

        \\frac{1}{n(n-1)} \\sum_{i \\ne j} (w_i \\cdot w_j)^2 \\;\\ge\\; \\frac{n - m}{m (n - 1)}
        \\;\\xrightarrow{n \\gg m}\\; \\frac1m,

    because ``sum_{ij} (w_i . w_j)^2 = |S|_F^2 >= (tr S)^2 / m = n^2 / m`` for the frame operator
    ``S = sum_i w_i w_i^T``; equality holds for tight frames (``S = (n/m) I``). Welch (1974), "Lower bounds on the
    maximum cross correlation of signals". Liu et al. (2025) find trained strong-superposition models close to it.

    Regime: ``n >= m``; for ``n <= m`` the bound is 0 (orthogonal vectors exist).
    """
    n, m = np.asarray(n, dtype=float), np.asarray(m, dtype=float)
    return np.clip((n - m) / (m * (n - 1.0)), 0.0, None)
