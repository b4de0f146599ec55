"""Infinite-width NNGP and NTK of fully connected networks in NTK parametrization.

Conventions are those of neural-tangents' ``stax.serial(*[Dense(W_std=w_std, b_std=b_std,
parameterization='ntk'), Act()] * depth, Dense(W_std=w_std, b_std=b_std, parameterization='ntk'))``:

.. math::

    z^{l+1}_i = \\frac{\\sigma_w}{\\sqrt{n_l}} \\sum_j W_{ij} \\phi(z^l_j) + \\sigma_b b_i,
    \\qquad W_{ij}, b_i \\sim \\mathcal N(0, 1),

with the input playing the role of :math:`\\phi(z^0)` (width ``d``) and a scalar readout. The kernels follow the
recursion of Jacot et al. (2018), "Neural tangent kernel", and Lee et al. (2019), "Wide neural networks of any
depth evolve as linear models under gradient descent" (Appendix), starting from the input kernel
:math:`\\Sigma^0 = x \\cdot x' / d` and :math:`\\Theta^0 = 0`:

.. math::

    \\text{dense:}\\quad \\Sigma \\leftarrow \\sigma_w^2 \\Sigma + \\sigma_b^2,\\qquad
    \\Theta \\leftarrow \\sigma_w^2 \\Theta + \\Sigma_{\\text{new}};
    \\qquad
    \\text{activation:}\\quad \\Sigma \\leftarrow \\mathbb E[\\phi(u)\\phi(v)],\\qquad
    \\Theta \\leftarrow \\Theta\\, \\mathbb E[\\phi'(u)\\phi'(v)],

with :math:`(u, v)` centred Gaussian with the current :math:`\\Sigma` as covariance. The returned ``nngp`` is the
covariance of the network output at initialisation and ``ntk`` is
:math:`\\Theta(x, x') = \\sum_\\theta \\partial_\\theta f(x) \\partial_\\theta f(x')`, both in the limit where every
hidden width goes to infinity (the finite-width empirical values deviate by :math:`O(1/\\sqrt n)` per seed).

All functions are pure ``jax.numpy``, differentiable in the inputs and the scales, and run in float64 when
``jax_enable_x64`` is on. Inputs are samples-major: ``x1`` of shape ``[n1, d]`` and ``x2`` of shape ``[n2, d]``;
outputs have shape ``[n1, n2]``.

*Numerics.* The textbook evaluation takes the angle between ``u`` and ``v`` from ``arccos(c / sqrt(q1 q2))`` or
``arctan2(sqrt(q1 q2 - c^2), c)`` (as neural-tangents does), and ``q1 q2 - c^2`` is a difference of nearly equal
rounded numbers at identical, nearly parallel or nearly opposite inputs: its square root, hence the angle, errs by
``O(sqrt(eps))``, about ``3e-4`` in float32, which moves the diagonal of a depth-3 ReLU NTK by ``2e-4``. Here each
pair also carries the quantities that vanish there, the gap :math:`g = \\sqrt{q_1 q_2 - c^2}`,
:math:`D = E(u - v)^2` and :math:`S = E(u + v)^2`: computed at the input from the differences ``x' -/+ x``, and
updated by every layer through formulas in which nothing cancels that is not already small (see :func:`_dense`,
:func:`_relu`, :func:`_erf`). Identical inputs then have ``g = D = 0`` exactly and follow the diagonal's arithmetic
bit for bit, and each entry stays within about one ``eps`` per layer of the exact value, in units of
:math:`\\sqrt{K(x, x) K(x', x')}` (measured: at most ``4 eps`` at depth 5, in float32 and float64, against a
40-digit evaluation). An entry much smaller than that scale is accurate relative to the scale, not to itself: the
linear kernel of nearly orthogonal inputs, say, is a float dot product that cancels. The input differences cost
``O(n1 n2 d)`` work, formed in row blocks of bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["relu_nngp_ntk", "erf_nngp_ntk", "linear_nngp_ntk", "Kernels"]

# Elements of the [rows, n2, d] blocks of pairwise input differences formed at once (64 MiB in float32).
_PAIR_BLOCK = 1 << 24


class Kernels(NamedTuple):
    """The infinite-width kernels of a network at a pair of input sets, each of shape ``[n1, n2]``."""

    nngp: jnp.ndarray
    ntk: jnp.ndarray


class _Moments(NamedTuple):
    """Second moments of the pre-activations ``(u, v)`` at each pair of inputs (module docstring, *Numerics*).

    ``q1`` ``[n1]`` and ``q2`` ``[n2]`` are :math:`E[u^2], E[v^2]`; the rest are ``[n1, n2]``: ``cross``
    :math:`c = E[uv]`, ``gap`` :math:`g = \\sqrt{q_1 q_2 - c^2} = \\sqrt{q_1 q_2}\\sin\\theta`, ``diff2``
    :math:`D = E(u - v)^2 = q_1 + q_2 - 2c` and ``sum2`` :math:`S = E(u + v)^2 = q_1 + q_2 + 2c`.
    """

    q1: jnp.ndarray
    q2: jnp.ndarray
    cross: jnp.ndarray
    gap: jnp.ndarray
    diff2: jnp.ndarray
    sum2: jnp.ndarray


def _safe_sqrt(x):
    """``sqrt(max(x, 0))`` whose gradient stays finite at 0 (the double-``where`` trick)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _safe_arctan2(y, x):
    """``arctan2(y, x)`` for ``y >= 0``, with its IEEE value at the origin (``pi`` for ``x = -0``) and a zero gradient
    there instead of 0/0."""
    origin = (y == 0) & (x == 0)
    return jnp.where(origin, jnp.where(jnp.signbit(x), jnp.pi, 0.0), jnp.arctan2(y, jnp.where(origin, 1.0, x)))


# Taylor coefficients of h(t) / t^3 in t^2: (-1)^(k+1) 2k / (2k+1)!, k = 1..12. The first omitted term is below 5e-22
# of h at t = pi/2 (h(pi/2) = 1), so the series is exact to float64 round-off on [0, pi/2].
_H_SERIES = tuple((-1) ** (k + 1) * 2 * k / math.factorial(2 * k + 1) for k in range(1, 13))


def _sin_minus_t_cos(t):
    """:math:`h(t) = \\sin t - t\\cos t = \\int_0^t s\\sin s\\, ds \\ge 0` on ``[0, pi]``, to relative precision.

    Below :math:`\\pi/2` both terms are positive and cancel (:math:`h \\approx t^3/3`): the Taylor series
    :math:`\\sum_{k \\ge 1} (-1)^{k+1} 2k\\, t^{2k+1} / (2k+1)!` is summed there instead (its terms fall off fast
    enough that its own cancellation costs under 2 ulps). Above, :math:`\\cos t \\le 0` and the direct formula adds
    two non-negative terms.
    """
    t2 = t * t
    poly = _H_SERIES[-1]
    for coefficient in reversed(_H_SERIES[:-1]):
        poly = coefficient + t2 * poly
    return jnp.where(t < jnp.pi / 2, t * t2 * poly, jnp.sin(t) - t * jnp.cos(t))


def _outer_sum(a, b):
    return a[:, None] + b[None, :]


def _input_moments(x1, x2) -> _Moments:
    """:math:`\\Sigma^0 = x \\cdot x' / d` and the derived moments, each from the inputs without cancellation.

    With ``s`` the sign of :math:`x \\cdot x'` and :math:`\\delta = x' - s x` (each component rounded once, relative
    to itself), :math:`|\\delta|^2 / d` is ``D`` (``s = 1``) or ``S`` (``s = -1``), the other one being
    ``q1 + q2 -/+ 2c`` without cancellation; the gap is :math:`|x| |x'_\\perp| / d` with
    :math:`x'_\\perp = \\delta - x (x \\cdot \\delta) / |x|^2`. All are exact zeros for identical (or opposite) inputs
    and keep the angle to ``O(eps)`` absolute for nearly (anti)parallel ones, where ``sqrt(q1 q2 - c^2)`` of rounded
    moments errs by ``O(sqrt(eps))``. For ``delta = 0`` the cross moment is set to ``s q`` so that it equals the
    diagonal bit for bit (the matrix product may sum in another order) and the recursion keeps them equal. The pairs
    are formed in row blocks of at most ``_PAIR_BLOCK`` elements.
    """
    d = x1.shape[1]
    sq1, sq2 = jnp.sum(x1 * x1, axis=1), jnp.sum(x2 * x2, axis=1)
    dot = jnp.matmul(x1, x2.T, precision=jax.lax.Precision.HIGHEST)  # no reduced-precision (tf32/bf16) passes
    sign = jnp.where(dot >= 0, 1.0, -1.0).astype(dot.dtype)

    def rows(args):
        a, aa, s = args  # one row of x1 [d], its |a|^2, the signs of its dot products [n2]
        delta = x2 - s[:, None] * a[None, :]
        along = jnp.sum(delta * a[None, :], axis=1) / jnp.where(aa > 0, aa, 1.0)
        perp = delta - along[:, None] * a[None, :]
        return jnp.sum(delta * delta, axis=1), jnp.sum(perp * perp, axis=1)

    batch = _PAIR_BLOCK // max(1, x2.shape[0] * d)
    if batch >= x1.shape[0]:
        near2, perp2 = jax.vmap(rows)((x1, sq1, sign))
    else:
        near2, perp2 = jax.lax.map(rows, (x1, sq1, sign), batch_size=max(1, batch))
    total = _outer_sum(sq1, sq2)
    dot = jnp.where(near2 == 0, sign * total / 2, dot)
    positive = sign > 0
    diff2 = jnp.where(positive, near2, total - 2 * dot)
    sum2 = jnp.where(positive, total + 2 * dot, near2)
    gap = _safe_sqrt(sq1)[:, None] * _safe_sqrt(perp2)
    return _Moments(sq1 / d, sq2 / d, dot / d, gap / d, diff2 / d, sum2 / d)


def _dense(m: _Moments, w2, b2) -> _Moments:
    """:math:`\\Sigma \\leftarrow \\sigma_w^2 \\Sigma + \\sigma_b^2` on all the moments.

    .. math::

        D' = \\sigma_w^2 D,\\qquad S' = \\sigma_w^2 S + 4\\sigma_b^2,\\qquad
        g'^2 = q_1' q_2' - c'^2 = \\sigma_w^2\\big(\\sigma_w^2 g^2 + \\sigma_b^2 D\\big),

    sums of non-negative terms (the bias is common to ``u`` and ``v``, so it drops out of ``u - v``).
    """
    gap = _safe_sqrt(w2 * (w2 * m.gap**2 + b2 * m.diff2))
    return _Moments(w2 * m.q1 + b2, w2 * m.q2 + b2, w2 * m.cross + b2, gap, w2 * m.diff2, w2 * m.sum2 + 4 * b2)


def _relu(m: _Moments):
    """Arc-cosine kernels of order 1 and 0 (Cho & Saul 2009) for ``phi = max(0, .)``.

    .. math::

        \\mathbb E[\\phi(u)\\phi(v)] = \\frac{\\sqrt{q_1 q_2}}{2\\pi} J_1(\\theta),\\quad
        J_1(\\theta) = \\sin\\theta + (\\pi - \\theta)\\cos\\theta = h(\\pi - \\theta),
        \\qquad \\mathbb E[\\phi'(u)\\phi'(v)] = \\frac{\\pi - \\theta}{2\\pi},

    with :math:`h(t) = \\sin t - t\\cos t` (:func:`_sin_minus_t_cos`). Both
    :math:`\\theta = \\operatorname{atan2}(g, c)` and :math:`\\pi - \\theta = \\operatorname{atan2}(g, -c)` come from
    the carried gap :math:`g = \\sqrt{q_1 q_2}\\sin\\theta`, each to relative precision (``arccos`` of a rounded
    cosine, or ``sqrt(q1 q2 - c^2)`` of rounded moments, loses half the digits at :math:`\\theta \\to 0, \\pi`).
    For ``c >= 0``, :math:`J_1 = \\pi\\cos\\theta + h(\\theta)` gives the expectation as
    :math:`c/2 + \\sqrt{q_1 q_2}\\, h(\\theta)/2\\pi` and the derivative kernel as :math:`1/2 - \\theta/2\\pi`:
    exact halving plus a small correction, ``c / 2`` and ``1 / 2`` exactly at :math:`\\theta = 0`. For ``c < 0``,
    :math:`\\sqrt{q_1 q_2}\\, h(\\pi - \\theta)/2\\pi` avoids the cancellation of :math:`\\sin\\theta` against
    :math:`(\\pi - \\theta)\\cos\\theta` near :math:`\\theta = \\pi`. The new gap and difference moment are

    .. math::

        g' = \\frac{\\sqrt{q_1 q_2}}{2\\pi}\\sqrt{(\\pi - J_1)(\\pi + J_1)},\\quad
        \\pi - J_1 = 2\\pi\\sin^2\\frac{\\theta}{2} - h(\\theta);\\qquad
        D' = \\frac{D}{2} - \\frac{\\sqrt{q_1 q_2}}{\\pi} h(\\theta)\\quad (c \\ge 0),

    where :math:`h(\\theta) \\le \\pi\\sin^2(\\theta/2)` and :math:`D \\ge 4\\sqrt{q_1 q_2}\\sin^2(\\theta/2)`, so
    neither cancels by more than a factor 2, and both vanish exactly at :math:`\\theta = 0`: identical inputs stay
    identical, with :math:`q \\to q/2` at every layer.
    """
    norm = _safe_sqrt(m.q1)[:, None] * _safe_sqrt(m.q2)[None, :]
    theta = _safe_arctan2(m.gap, m.cross)
    supplement = _safe_arctan2(m.gap, -m.cross)  # pi - theta, to relative precision near theta = pi
    h_theta, j1 = _sin_minus_t_cos(theta), _sin_minus_t_cos(supplement)
    acute = m.cross >= 0
    derivative = jnp.where(acute, 0.5 - theta / (2 * jnp.pi), supplement / (2 * jnp.pi))
    value = jnp.where(acute, m.cross / 2 + norm * h_theta / (2 * jnp.pi), norm * j1 / (2 * jnp.pi))
    below_pi = 2 * jnp.pi * jnp.sin(theta / 2) ** 2 - h_theta
    gap = norm / (2 * jnp.pi) * _safe_sqrt(below_pi * (jnp.pi + j1))
    q1, q2 = m.q1 / 2, m.q2 / 2
    total = _outer_sum(q1, q2)
    diff2 = jnp.where(acute, m.diff2 / 2 - norm * h_theta / jnp.pi, total - 2 * value)  # value <= norm / 2pi if c < 0
    return _Moments(q1, q2, value, gap, diff2, total + 2 * value), derivative


def _erf(m: _Moments):
    """Williams (1997), "Computing with infinite networks", for ``phi = erf``.

    .. math::

        \\mathbb E[\\phi(u)\\phi(v)] = \\frac{2}{\\pi}\\beta,\\quad
        \\beta = \\arcsin\\frac{2c}{\\sqrt{(1 + 2q_1)(1 + 2q_2)}} = \\arctan\\frac{2c}{R},
        \\qquad \\mathbb E[\\phi'(u)\\phi'(v)] = \\frac{4}{\\pi R},

    with :math:`R^2 = (1 + 2q_1)(1 + 2q_2) - 4c^2 = 1 + 2(q_1 + q_2) + 4g^2` a sum of positive terms (the
    ``arcsin`` form and the difference lose digits as :math:`q` grows); on the diagonal :math:`q' = 2\\alpha/\\pi` with
    :math:`\\alpha = \\arctan(2q / R_q)`, :math:`R_q = \\sqrt{1 + 4q}`. Near the diagonal (or its mirror ``c < 0``)
    :math:`D' = \\frac{2}{\\pi}(\\alpha_1 + \\alpha_2 - 2\\beta)` (or ``S'`` with :math:`+2\\beta`) is a small
    difference of angles, which the erf map stretches with depth when :math:`\\sigma_w^2 \\mathbb E[\\phi'^2] > 1`;
    it is summed from
    :math:`k_i = \\alpha_i - |\\beta| = \\operatorname{atan2}\\big(2(q_i R - |c| R_{q_i}), R_{q_i} R + 4 q_i |c|\\big)`
    with

    .. math::

        q_i R - |c| R_{q_i} = \\frac{(1 + 2q_i)\\big((q_i - |c|)(q_i + |c|) + 2 q_i g^2\\big)}{q_i R + |c| R_{q_i}},
        \\qquad q_i - |c| = \\tfrac12(q_i - q_j + E),

    ``E`` the carried ``D`` (``c >= 0``) or ``S`` (``c < 0``), so nothing cancels that is not already small. Then
    :math:`g'^2 = (2/\\pi)^2 (\\alpha_1\\alpha_2 - \\beta^2) = (2/\\pi)^2 \\big(|\\beta|(k_1 + k_2) + k_1 k_2\\big)`.
    Identical inputs (``D = g = 0``, ``c = q``) go through the same arithmetic as the diagonal and stay identical.
    """

    def diag(q):
        return 2 / jnp.pi * jnp.arctan2(2 * q, jnp.sqrt(1 + 4 * q))

    q1, q2 = m.q1[:, None], m.q2[None, :]
    g2 = m.gap**2
    root = jnp.sqrt(1 + 2 * (q1 + q2) + 4 * g2)
    beta = jnp.arctan2(2 * m.cross, root)
    c, near2 = jnp.abs(m.cross), jnp.where(m.cross >= 0, m.diff2, m.sum2)

    def excess(qi, qj):  # alpha_i - |beta|
        ri = jnp.sqrt(1 + 4 * qi)
        denominator = qi * root + c * ri  # 0 only for q_i = c = 0, where the numerator is 0 too
        numerator = (1 + 2 * qi) * ((qi - qj + near2) / 2 * (qi + c) + 2 * qi * g2)
        return jnp.arctan2(2 * numerator / jnp.where(denominator > 0, denominator, 1.0), ri * root + 4 * qi * c)

    k1, k2 = excess(q1, q2), excess(q2, q1)
    near2 = 2 / jnp.pi * (k1 + k2)
    gap = 2 / jnp.pi * _safe_sqrt(jnp.abs(beta) * (k1 + k2) + k1 * k2)
    value = 2 / jnp.pi * beta
    q1, q2 = diag(m.q1), diag(m.q2)
    total = _outer_sum(q1, q2)
    acute = m.cross >= 0
    diff2 = jnp.where(acute, near2, total - 2 * value)
    sum2 = jnp.where(acute, total + 2 * value, near2)
    return _Moments(q1, q2, value, gap, diff2, sum2), 4 / (jnp.pi * root)


def _identity(m: _Moments):
    return m, jnp.ones_like(m.cross)


def _fully_connected(activation: Callable, x1, x2, depth: int, w_std, b_std) -> Kernels:
    """Run the dense/activation recursion (module docstring) for ``depth`` hidden layers and a scalar readout."""
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 and x2 must be [n, d] with the same d, got shapes {x1.shape} and {x2.shape}.")
    if depth < 0:
        raise ValueError(f"depth counts hidden layers and must be >= 0, got {depth}.")
    w2, b2 = jnp.square(w_std), jnp.square(b_std)
    m = _dense(_input_moments(x1, x2), w2, b2)
    ntk = m.cross
    for _ in range(depth):
        m, derivative = activation(m)
        m = _dense(m, w2, b2)
        ntk = w2 * ntk * derivative + m.cross
    return Kernels(m.cross, ntk)


def relu_nngp_ntk(x1, x2, depth: int, w_std=1.0, b_std=0.0) -> Kernels:
    """NNGP and NTK of an MLP with ``depth`` hidden ReLU layers in NTK parametrization.

    Recursion in the module docstring with the arc-cosine expectations of Cho & Saul (2009), "Kernel methods for
    deep learning":

    .. math::

        \\Sigma' = \\frac{\\sqrt{q_1 q_2}}{2\\pi}\\big(\\sin\\theta + (\\pi - \\theta)\\cos\\theta\\big),\\qquad
        \\dot\\Sigma = \\frac{\\pi - \\theta}{2\\pi},\\qquad \\cos\\theta = \\frac{\\Sigma(x, x')}{\\sqrt{q_1 q_2}}.

    For ``depth = 1``, ``w_std = 1``, ``b_std = 0`` and unit-norm-per-dimension inputs this is
    :math:`\\Theta/2` with :math:`\\Theta = \\kappa_1(\\cos\\theta_0) + \\cos\\theta_0\\,\\kappa_0(\\cos\\theta_0)`
    the two-layer NTK of Arora et al. (2019), whose ReLU carries the factor :math:`\\sqrt 2` (:math:`c_\\sigma = 2`)
    that ``w_std`` here does not (it scales every layer alike); a test checks the factor.

    Args:
        x1: inputs ``[n1, d]``.
        x2: inputs ``[n2, d]``.
        depth: number of hidden ReLU layers (``0`` gives the linear readout of the inputs).
        w_std: weight scale :math:`\\sigma_w` of every dense layer, readout included.
        b_std: bias scale :math:`\\sigma_b` of every dense layer, readout included.

    Returns:
        ``Kernels(nngp, ntk)``, each ``[n1, n2]``.

    Regime: every hidden width to infinity at fixed depth (Jacot et al. 2018); the NTK is the kernel of gradient
    descent when the learning rate is O(1) in NTK parametrization (lazy training).
    """
    return _fully_connected(_relu, x1, x2, depth, w_std, b_std)


def erf_nngp_ntk(x1, x2, depth: int, w_std=1.0, b_std=0.0) -> Kernels:
    """NNGP and NTK of an MLP with ``depth`` hidden ``erf`` layers in NTK parametrization.

    Same recursion as :func:`relu_nngp_ntk` with the expectations of Williams (1997):

    .. math::

        \\Sigma' = \\frac{2}{\\pi}\\arcsin\\frac{2\\Sigma(x, x')}{\\sqrt{(1 + 2q_1)(1 + 2q_2)}},\\qquad
        \\dot\\Sigma = \\frac{4}{\\pi}\\big((1 + 2q_1)(1 + 2q_2) - 4\\Sigma(x, x')^2\\big)^{-1/2}.

    Matches neural-tangents' ``stax.Erf()`` (``a = 1, b = 1, c = 0``). Args, returns and regime as in
    :func:`relu_nngp_ntk`.
    """
    return _fully_connected(_erf, x1, x2, depth, w_std, b_std)


def linear_nngp_ntk(x1, x2, depth: int, w_std=1.0, b_std=0.0) -> Kernels:
    """NNGP and NTK of a deep linear network (identity activations) in NTK parametrization.

    With ``phi(u) = u`` the recursion closes: for ``b_std = 0``,

    .. math::

        \\Sigma = \\sigma_w^{2(L+1)} \\frac{x \\cdot x'}{d},\\qquad \\Theta = (L + 1)\\,\\Sigma,

    one term per dense layer. Args, returns and regime as in :func:`relu_nngp_ntk`.
    """
    return _fully_connected(_identity, x1, x2, depth, w_std, b_std)
