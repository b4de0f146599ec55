"""Stability thresholds of full-batch optimizers and the phases of large learning rates in the uv model.

All functions are pure and broadcast over NumPy arrays (and plain floats).
"""

from __future__ import annotations

import numpy as np

__all__ = ["gd_threshold", "momentum_threshold", "adam_threshold", "uv_phases", "uv_ntk_eigenvalue", "PHASES"]

PHASES = ("lazy", "catapult", "divergent")


def gd_threshold(lr):
    """Largest sharpness at which full-batch gradient descent is stable: ``2 / lr``.

    .. math::

        \\lambda_{\\max}(\\nabla^2 L) < \\frac{2}{\\eta}.

    On a quadratic, GD multiplies the component along a Hessian eigenvector of eigenvalue ``lambda`` by
    ``1 - lr * lambda`` per step, which has modulus below 1 iff ``0 < lambda < 2 / lr``. Cohen et al. (2021),
    "Gradient descent on neural networks typically occurs at the edge of stability" (ICLR), observe that on
    neural-network losses the sharpness rises (progressive sharpening) until it reaches this value and then hovers
    just above it while the loss keeps decreasing non-monotonically.

    Regime: full-batch GD with one learning rate (per-layer rates change the relevant matrix to
    ``diag(lr_l) H``), MSE or cross-entropy; the local quadratic model holds for one step.
    """
    return 2.0 / np.asarray(lr, dtype=float)


def momentum_threshold(lr, beta):
    """Sharpness threshold of heavy-ball momentum: ``(2 + 2 beta) / lr``.

    .. math::

        v_{t+1} = \\beta v_t + \\nabla L(w_t),\\quad w_{t+1} = w_t - \\eta v_{t+1}
        \\quad\\text{is stable on a quadratic iff}\\quad \\lambda < \\frac{2 + 2\\beta}{\\eta}.

    On an eigendirection the iteration is ``w_{t+1} = (1 + beta - lr lambda) w_t - beta w_{t-1}``; its
    characteristic roots leave the unit disk through ``z = -1`` at ``lr lambda = 2 + 2 beta``. Cohen et al. (2021),
    Appendix (heavy-ball and Nesterov momentum), observe edge-of-stability equilibration at this value.

    Regime: full batch, heavy-ball form of ``optax.trace`` (not Nesterov), ``0 <= beta < 1``.
    """
    return (2.0 + 2.0 * np.asarray(beta, dtype=float)) / np.asarray(lr, dtype=float)


def adam_threshold(lr, beta1):
    """Threshold of Adam's *preconditioned* sharpness ``lambda_max(P^-1 H)``: ``(2 + 2 beta1) / ((1 - beta1) lr)``.

    .. math::

        \\lambda_{\\max}\\big(P^{-1} \\nabla^2 L\\big) < \\frac{2 + 2\\beta_1}{(1 - \\beta_1)\\,\\eta},
        \\qquad P = \\mathrm{diag}\\big(\\sqrt{\\hat\\nu} + \\epsilon\\big).

    With the preconditioner frozen, Adam is heavy-ball momentum on ``P^-1 H`` with an exponential moving average of
    gradients (``(1 - beta1)`` times the heavy-ball buffer), hence :func:`momentum_threshold` divided by
    ``1 - beta1``; for ``beta1 = 0.9`` it is ``38 / lr``. Cohen et al. (2022), "Adaptive gradient methods at the edge
    of stability", show the preconditioned sharpness equilibrates there.

    Regime: full batch; ``beta2`` close to 1 so that ``P`` changes slowly compared with the oscillation.
    """
    beta1 = np.asarray(beta1, dtype=float)
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * np.asarray(lr, dtype=float))


def uv_phases(lr, lambda0):
    """Phase of GD on the uv model at learning rate ``lr`` and initial NTK eigenvalue ``lambda0``.

    .. math::

        \\eta < \\frac{2}{\\lambda_0}:\\ \\text{lazy},\\qquad
        \\frac{2}{\\lambda_0} \\le \\eta < \\frac{4}{\\lambda_0}:\\ \\text{catapult},\\qquad
        \\eta \\ge \\frac{4}{\\lambda_0}:\\ \\text{divergent}.

    Lewkowycz et al. (2020), "The large learning rate phase of deep learning: the catapult mechanism". For
    ``f = v . u x / sqrt(n)`` with squared loss on one sample, the kernel evolves as
    ``lambda_{t+1} = lambda_t + (lr x^2 / n) (f_t - y)^2 (lr lambda_t - 4)`` (exactly, for ``y = 0``). Below
    ``2 / lambda0`` the residual decays and ``lambda`` moves by ``O(1/n)`` (lazy); between ``2`` and ``4`` over
    ``lambda0`` the residual first grows until ``(f - y)^2 = O(n)`` drives ``lambda`` below ``2 / lr``, after which
    training converges in a flatter region (catapult); above ``4 / lambda0`` the growth of ``lambda`` feeds itself
    and training diverges.

    Regime: wide networks (``n -> inf``; at finite ``n`` the boundaries blur by ``O(n^-1/2)``), full-batch GD, the
    NTK parametrization. The boundaries themselves are assigned to the upper phase.

    Returns:
      An array of the shape of ``lr`` broadcast with ``lambda0``, holding names from :data:`PHASES`.
    """
    x = np.asarray(lr, dtype=float) * np.asarray(lambda0, dtype=float)
    return np.asarray(PHASES)[np.where(x < 2.0, 0, np.where(x < 4.0, 1, 2))]


def uv_ntk_eigenvalue(u, v, x):
    """NTK of the uv model ``f = v . u x / sqrt(n)`` at a scalar input ``x``: ``(|u|^2 + |v|^2) x^2 / n``.

    .. math::

        \\frac{\\partial f}{\\partial u_i} = \\frac{v_i x}{\\sqrt n},\\quad
        \\frac{\\partial f}{\\partial v_i} = \\frac{u_i x}{\\sqrt n}
        \\quad\\Rightarrow\\quad
        \\Theta(x, x) = \\sum_i \\Big(\\frac{\\partial f}{\\partial u_i}\\Big)^2
        + \\Big(\\frac{\\partial f}{\\partial v_i}\\Big)^2 = \\frac{(|u|^2 + |v|^2)\\, x^2}{n}.

    With one training sample and the loss ``0.5 (f - y)^2`` it is the Gauss-Newton part of the top Hessian
    eigenvalue; the remaining term ``(f - y) d^2 f`` has eigenvalues ``+-(f - y) x / sqrt(n)``. Lewkowycz et al.
    (2020).

    Args:
      u, v: weight vectors of length ``n`` (last axis; leading axes broadcast).
      x: scalar input (broadcasts against the leading axes).
    """
    u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
    n = u.shape[-1]
    return (np.sum(u**2, axis=-1) + np.sum(v**2, axis=-1)) * np.asarray(x, dtype=float) ** 2 / n
