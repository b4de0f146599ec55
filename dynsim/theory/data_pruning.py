r"""Data pruning in the teacher-student perceptron: the replica theory of Sorscher et al. (2022), "Beyond neural
scaling laws: beating power law scaling via data pruning" (NeurIPS), section 2 and appendix A.

Setting. Inputs :math:`x \sim \mathcal N(0, I_N)`, labels :math:`y = \mathrm{sign}(T \cdot x)` from a unit teacher
:math:`T`. A probe :math:`J_p` at angle :math:`\theta` to the teacher scores each example by its margin
:math:`|J_p \cdot x|`; of :math:`P_{tot}` examples a fraction :math:`f` is kept, the **hard** ones (smallest
margin, :math:`|s| < \gamma`) or the **easy** ones (largest, :math:`|s| > \gamma`), with :math:`s = J_p \cdot x`
and :math:`\gamma` the matching quantile. A student :math:`J` is the maximum-margin perceptron on the
:math:`P = f P_{tot}` kept examples, :math:`\alpha = P / N` (the kept-data size), and its test error is
:math:`\varepsilon = \arccos(R) / \pi` with :math:`R` the cosine of its angle to the teacher.

Theory (replica symmetric, :math:`N, P \to \infty` at fixed :math:`\alpha`, :math:`f`, :math:`\theta`). Write the
kept example in the plane of teacher and probe as :math:`t = T \cdot x` and :math:`v`, its component along the probe
direction orthogonal to the teacher; both are non-Gaussian after pruning, every other direction stays Gaussian. The
student :math:`J` (unit norm) has overlaps :math:`R` with :math:`T` and :math:`\rho` with that direction, so its
field on an example is :math:`R t + \rho v + \sqrt{1 - R^2 - \rho^2}\, z` with :math:`z \sim \mathcal N(0, 1)`.
Gardner's volume of students with stability :math:`\kappa` vanishes as the replica overlap :math:`q \to 1`, where
the coefficient of :math:`1 / (1 - q)` in the free energy,

.. math::

    \Phi(R, \rho, \kappa) = 1 - R^2 - \rho^2 - \alpha\, \mathbb E_{t, v}\, \mathbb E_z
        \big[\kappa - \mathrm{sign}(t)(R t + \rho v) - \sqrt{1 - R^2 - \rho^2}\, z\big]_+^2 ,

vanishes and is stationary in :math:`(R, \rho)`: the maximum margin is
:math:`\kappa_{max} = \max_{R, \rho} \kappa^*(R, \rho)` with :math:`\Phi(R, \rho, \kappa^*) = 0`, and the maximiser
is the student's overlaps. Without pruning (:math:`f = 1`) this is Gardner's optimal-stability perceptron in the
teacher-student setting, whose error falls as :math:`\varepsilon \approx 0.50 / \alpha` at large :math:`\alpha`
(Engel & Van den Broeck 2001, ch. 4); the inner Gaussian expectation is closed form,
:math:`\mathbb E_z[a - b z]_+^2 = (a^2 + b^2) N(a/b) + a b\, \varphi(a/b)`, and the outer one is a product
Gauss-Legendre quadrature in the quantiles of :math:`s` and of its orthogonal partner, split where :math:`t` changes
sign.

Regime of validity: the thermodynamic limit. At finite :math:`N` the measured error fluctuates by
:math:`O(N^{-1/2})` relative to its mean, and corrections to the mean are expected at :math:`O(1/N)`; the experiment
``data-pruning`` compares simulations at :math:`N` and :math:`N/2` with these curves. The replica-symmetric ansatz is
the one expected to be exact here, the set of students with a given margin being convex. Near the first-order jumps
(small kept fractions of hard examples at small :math:`\alpha`) finite-:math:`N` simulations smooth the jump out.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

__all__ = ["MODES", "threshold", "kept_overlaps", "test_error", "unpruned_asymptote"]

MODES = ("hard", "easy")
# Gauss-Legendre nodes per quantile interval: 24 hold the test error within 1.1e-5 (relative 1e-4) of 64 nodes over
# alpha 0.5-8, pruning 0-0.8, theta 0-0.4, modes hard and easy (measured).
_NODES = 24


def _check(alpha, prune, theta, mode):
    if not (0 <= prune < 1):
        raise ValueError(f"the pruning fraction must lie in [0, 1), got {prune!r}.")
    if not (0 <= theta <= math.pi / 2):
        raise ValueError(f"the probe angle must lie in [0, pi/2] radians, got {theta!r}.")
    if mode not in MODES:
        raise ValueError(f"the pruning mode must be 'hard' or 'easy', got {mode!r}.")
    if not (alpha > 0):
        raise ValueError(f"the kept-data size alpha = P/N must be positive, got {alpha!r}.")


def threshold(keep: float, mode: str) -> float:
    r"""The margin threshold :math:`\gamma` that keeps a fraction ``keep`` of Gaussian examples:
    :math:`|s| < \gamma` for ``"hard"`` (:math:`2\Phi(\gamma) - 1 = f`), :math:`|s| > \gamma` for ``"easy"``
    (:math:`2(1 - \Phi(\gamma)) = f`)."""
    return float(scipy.stats.norm.ppf((1 + keep) / 2 if mode == "hard" else 1 - keep / 2))


def _quadrature(keep: float, theta: float, mode: str, n: int = _NODES):
    """Nodes ``(t, v)`` and weights of the kept distribution (weights sum to 1). Half the plane (``s > 0``) is
    integrated and the other half follows by the symmetry ``(t, v) -> (-t, -v)``, which leaves the integrand alone."""
    x, w = np.polynomial.legendre.leggauss(n)
    x, w = (x + 1) / 2, w / 2  # on [0, 1]
    gamma = threshold(keep, mode) if keep < 1 else (math.inf if mode == "hard" else 0.0)
    lo, hi = (0.5, scipy.stats.norm.cdf(gamma)) if mode == "hard" else (scipy.stats.norm.cdf(gamma), 1.0)
    ps = lo + (hi - lo) * x
    s = scipy.stats.norm.ppf(ps)
    ws = (hi - lo) * w * 2 / keep  # both halves of the plane, normalised by the kept fraction
    c, si = math.cos(theta), math.sin(theta)
    # t = cos(theta) s - sin(theta) u changes sign at u = s cot(theta): integrate u's quantile on each side.
    cut = scipy.stats.norm.cdf(s * c / si) if si > 0 else np.ones_like(s)
    pu = np.concatenate([cut[:, None] * x[None, :], cut[:, None] + (1 - cut[:, None]) * x[None, :]], axis=1)
    wu = np.concatenate([cut[:, None] * w[None, :], (1 - cut[:, None]) * w[None, :]], axis=1)
    u = scipy.stats.norm.ppf(np.clip(pu, 1e-300, 1 - 1e-16))
    t = c * s[:, None] - si * u
    v = si * s[:, None] + c * u
    weight = ws[:, None] * wu
    keepw = weight > 0
    return t[keepw], v[keepw], weight[keepw]


def _terms(R, rho, kappa, alpha, t, v, w):
    """``Phi`` and its derivatives in ``kappa``, ``R`` and ``rho`` (module docstring). With ``a`` the margin
    deficit, ``b`` the unexplained part and ``r = a / b``: ``d ramp / da = 2 (a N(r) + b phi(r))`` and
    ``d ramp / db = 2 b N(r)``."""
    b = math.sqrt(max(1 - R * R - rho * rho, 1e-300))
    sign = np.sign(t)
    a = kappa - sign * (R * t + rho * v)
    r = a / b
    cdf, pdf = scipy.special.ndtr(r), np.exp(-r * r / 2) / math.sqrt(2 * math.pi)
    ramp = (a * a + b * b) * cdf + a * b * pdf
    da = a * cdf + b * pdf
    mean_cdf = np.dot(w, cdf)
    phi = 1 - R * R - rho * rho - alpha * np.dot(w, ramp)
    d_kappa = -2 * alpha * np.dot(w, da)
    d_R = -2 * R + 2 * alpha * np.dot(w, da * np.abs(t)) + 2 * alpha * R * mean_cdf
    d_rho = -2 * rho + 2 * alpha * np.dot(w, da * sign * v) + 2 * alpha * rho * mean_cdf
    return phi, d_kappa, d_R, d_rho


def _kappa_star(R, rho, alpha, t, v, w, kappa=0.0):
    """The margin at which ``Phi(R, rho, .)`` vanishes, and the gradient of ``kappa*`` in ``(R, rho)`` by implicit
    differentiation. ``Phi`` decreases in ``kappa``: Newton's method inside a bracket that each step shrinks, with a
    bisection wherever a Newton step would leave it (far left of the root ``Phi`` flattens and Newton overshoots)."""
    lo, hi, step = kappa, kappa, 0.02  # kappa: a warm start, the root at nearby (R, rho)
    while _terms(R, rho, lo, alpha, t, v, w)[0] < 0:
        lo, step = lo - step, 2 * step
    step = 0.02
    while _terms(R, rho, hi, alpha, t, v, w)[0] > 0:
        hi, step = hi + step, 2 * step
    kappa = 0.5 * (lo + hi)
    for _ in range(200):
        phi, dk, dR, drho = _terms(R, rho, kappa, alpha, t, v, w)
        if phi > 0:
            lo = kappa
        else:
            hi = kappa
        new = kappa - phi / dk if dk < 0 else math.nan
        kappa = new if lo < new < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-13 or abs(phi) < 1e-15:
            break
    phi, dk, dR, drho = _terms(R, rho, kappa, alpha, t, v, w)
    if dk == 0:  # every example beyond the margin by many widths (an optimiser's far excursion): no slope to follow
        return kappa, 0.0, 0.0
    return kappa, -dR / dk, -drho / dk


def kept_overlaps(alpha: float, prune: float = 0.0, theta: float = 0.0, mode: str = "hard"):
    r"""The max-margin student's overlaps on pruned data in the thermodynamic limit (module docstring).

    :math:`\kappa^*` is maximised over :math:`(R, \rho) = r (\cos\phi, \sin\phi)` by BFGS with its exact gradient,
    from several starting points (at small :math:`\alpha` and small kept fractions the maximum can jump
    between a branch aligned with the teacher and one that is not, a first-order transition).

    Args:
      alpha: kept-data size :math:`P / N` (> 0).
      prune: fraction of the examples pruned away, in :math:`[0, 1)`; :math:`f = 1 - ` ``prune`` are kept.
      theta: the probe's angle to the teacher in :math:`[0, \pi/2]` (0: a perfect probe).
      mode: ``"hard"`` keeps the smallest margins, ``"easy"`` the largest.

    Returns:
      ``(R, rho, kappa)``: the overlap with the teacher, with the probe's direction orthogonal to the teacher, and
      the maximum margin. ``rho = 0`` at ``theta = 0`` (by symmetry) and without pruning.
    """
    _check(alpha, prune, theta, mode)
    return _solve(alpha, 1 - prune, theta, _quadrature(1 - prune, theta, mode))[:3]


def _solve(alpha, keep, theta, quad, previous=None):
    """``(R, rho, kappa, x)`` at ``alpha``; ``previous``, the optimiser's ``x`` at a nearby ``alpha``, is tried as a
    start besides the fixed ones."""
    t, v, w = quad
    free_rho = theta > 0 and keep < 1
    state = {"kappa": 0.0}

    def neg(p):  # r = (1 + tanh(p0)) / 2 in (0, 1), ang = p1: an unconstrained search
        th = math.tanh(p[0])
        r, ang = (1 + th) / 2, (p[1] if free_rho else 0.0)
        R, rho = r * math.cos(ang), r * math.sin(ang)
        kappa, gR, grho = _kappa_star(R, rho, alpha, t, v, w, state["kappa"])
        state["kappa"] = kappa
        grad = np.array([(gR * math.cos(ang) + grho * math.sin(ang)) * (1 - th * th) / 2, -gR * rho + grho * R])
        return -kappa, -grad[:len(p)]

    best = None
    starts = [(-0.4, 0.0), (2.6, 0.0)] + ([] if previous is None else [tuple(previous) + (0.0,)])
    for start in starts:  # r = 0.3 and 0.99, and the previous solution
        x0 = np.array(start[:2] if free_rho else start[:1])
        state["kappa"] = 0.0
        res = scipy.optimize.minimize(neg, x0, jac=True, method="BFGS", options={"gtol": 1e-8, "maxiter": 300})
        if best is None or res.fun < best.fun:
            best = res
    th = math.tanh(best.x[0])
    r, ang = (1 + th) / 2, (best.x[1] if free_rho else 0.0)
    return r * math.cos(ang), r * math.sin(ang), -best.fun, best.x


def test_error(alpha, prune: float = 0.0, theta: float = 0.0, mode: str = "hard"):
    r"""The max-margin student's test error :math:`\varepsilon = \arccos(R) / \pi` on data of which a fraction
    ``prune`` was pruned by a probe at angle ``theta``, at kept-data sizes ``alpha`` (scalar or array), in the
    thermodynamic limit (module docstring; Sorscher et al. 2022 call it :math:`\alpha_{prune}`).

    Example:
      >>> round(float(test_error(8.0)), 4)  # no pruning: close to Gardner's 0.50 / alpha at large alpha
      0.0609
    """
    alphas = np.atleast_1d(np.asarray(alpha, dtype=float))
    for a in alphas:
        _check(a, prune, theta, mode)
    keep = 1 - prune
    quad = _quadrature(keep, theta, mode)
    out, previous = np.empty(len(alphas)), None
    for i in np.argsort(alphas):  # continuation in alpha: each solution starts the next
        R, _, _, previous = _solve(alphas[i], keep, theta, quad, previous)
        out[i] = math.acos(min(1.0, R)) / math.pi
    return out if np.ndim(alpha) else float(out[0])


def unpruned_asymptote() -> float:
    r"""The constant :math:`c` of :math:`\varepsilon \approx c / \alpha` for the optimal-stability perceptron without
    pruning at large :math:`\alpha` (the theory's own value, computed at :math:`\alpha = 400`;
    Engel & Van den Broeck 2001 give 0.50)."""
    return 400 * test_error(400.0)
