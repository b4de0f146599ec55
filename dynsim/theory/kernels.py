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
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

__all__ = ["relu_nngp_ntk", "erf_nngp_ntk", "linear_nngp_ntk", "Kernels"]


class Kernels(NamedTuple):
    """The infinite-width kernels of a network at a pair of input sets, each of shape ``[n1, n2]``."""

    nngp: jnp.ndarray
    ntk: jnp.ndarray


class _Moments(NamedTuple):
    """Second moments of the pre-activations: diagonals of x1 ``[n1]`` and x2 ``[n2]`` and the cross term."""

    q1: jnp.ndarray
    q2: jnp.ndarray
    cross: jnp.ndarray


def _safe_sqrt(x):
    """``sqrt(max(x, 0))`` whose gradient stays finite at 0 (the double-``where`` trick)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _relu(m: _Moments):
    """Arc-cosine kernels of order 1 and 0 (Cho & Saul 2009) for ``phi = max(0, .)``.

    .. math::

        \\mathbb E[\\phi(u)\\phi(v)]
        = \\frac{\\sqrt{q_1 q_2}}{2\\pi}\\big(\\sin\\theta + (\\pi - \\theta)\\cos\\theta\\big),
        \\qquad \\mathbb E[\\phi'(u)\\phi'(v)] = \\frac{\\pi - \\theta}{2\\pi},

    with :math:`\\theta = \\arctan2(\\sqrt{q_1 q_2 - c^2}, c)`, which keeps full precision near :math:`\\theta = 0`
    where ``arccos`` of a rounded cosine loses half the digits. ``sqrt(q1 q2) sin(theta)`` is computed as
    ``sqrt(q1 q2 - c^2)`` directly.
    """
    prod = m.q1[:, None] * m.q2[None, :]
    gap = _safe_sqrt(prod - m.cross**2)  # sqrt(q1 q2) sin(theta), >= 0 by Cauchy-Schwarz up to round-off
    theta = jnp.arctan2(gap, m.cross)
    value = (gap + (jnp.pi - theta) * m.cross) / (2 * jnp.pi)
    return _Moments(m.q1 / 2, m.q2 / 2, value), (jnp.pi - theta) / (2 * jnp.pi)


def _erf(m: _Moments):
    """Williams (1997), "Computing with infinite networks", for ``phi = erf``.

    .. math::

        \\mathbb E[\\phi(u)\\phi(v)] = \\frac{2}{\\pi}\\arcsin\\frac{2c}{\\sqrt{(1 + 2q_1)(1 + 2q_2)}},
        \\qquad \\mathbb E[\\phi'(u)\\phi'(v)] = \\frac{4}{\\pi\\sqrt{(1 + 2q_1)(1 + 2q_2) - 4c^2}}.
    """

    def diag(q):
        return 2 / jnp.pi * jnp.arcsin(2 * q / (1 + 2 * q))

    norm = (1 + 2 * m.q1[:, None]) * (1 + 2 * m.q2[None, :])
    value = 2 / jnp.pi * jnp.arcsin(jnp.clip(2 * m.cross / jnp.sqrt(norm), -1.0, 1.0))
    derivative = 4 / (jnp.pi * jnp.sqrt(norm - 4 * m.cross**2))  # norm - 4c^2 >= 1 + 2(q1 + q2) > 0
    return _Moments(diag(m.q1), diag(m.q2), value), derivative


def _identity(m: _Moments):
    return m, jnp.ones_like(m.cross)


def _fully_connected(activation: Callable, x1, x2, depth: int, w_std, b_std) -> Kernels:
    """Run the dense/activation recursion (module docstring) for ``depth`` hidden layers and a scalar readout."""
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 and x2 must be [n, d] with the same d, got shapes {x1.shape} and {x2.shape}.")
    if depth < 0:
        raise ValueError(f"depth counts hidden layers and must be >= 0, got {depth}.")
    d = x1.shape[1]
    m = _Moments(jnp.sum(x1**2, axis=1) / d, jnp.sum(x2**2, axis=1) / d, x1 @ x2.T / d)
    w2, b2 = jnp.square(w_std), jnp.square(b_std)

    def dense(m: _Moments, ntk):
        m = _Moments(w2 * m.q1 + b2, w2 * m.q2 + b2, w2 * m.cross + b2)
        return m, w2 * ntk + m.cross

    m, ntk = dense(m, jnp.zeros_like(m.cross))
    for _ in range(depth):
        m, derivative = activation(m)
        m, ntk = dense(m, ntk * derivative)
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
