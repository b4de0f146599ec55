"""Stability thresholds of full-batch optimizers and the phases of large learning rates in the uv model.

All functions are pure and broadcast over NumPy arrays (and plain floats).
"""

from __future__ import annotations

import numpy as np

__all__ = ["gd_threshold", "momentum_threshold", "adam_threshold", "uv_phases", "uv_ntk_eigenvalue", "uv_gd",
           "PHASES"]

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


def uv_gd(lr, lambda0, f0, y, x2_over_n, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact full-batch GD of the uv model at finite width on one sample: outputs and NTK eigenvalues per step.

    For ``f = v . u x / sqrt(n)``, ``r = f - y``, the loss ``0.5 r^2`` and a step
    ``u <- u - lr r x v / sqrt(n)``, ``v <- v - lr r x u / sqrt(n)``, the output and the NTK eigenvalue
    ``lambda = (|u|^2 + |v|^2) x^2 / n`` (:func:`uv_ntk_eigenvalue`) form a closed two-dimensional map, with
    ``q = x^2 / n``:

    .. math::

        f_{t+1} = f_t - \\eta \\lambda_t r_t + \\eta^2 q\\, r_t^2 f_t,\\qquad
        \\lambda_{t+1} = \\lambda_t + \\eta q\\, r_t \\big(\\eta \\lambda_t r_t - 4 f_t\\big).

    (With ``A = |u|^2 + |v|^2``, ``B = u . v`` and ``c = lr r x / sqrt(n)`` the step gives
    ``A' = A (1 + c^2) - 4 c B`` and ``B' = B (1 + c^2) - c A``; ``f = B x / sqrt(n)``.) For ``y = 0`` it is
    Lewkowycz et al. (2020): ``lambda`` moves by ``eta q r^2 (eta lambda - 4)``, down below
    ``lr lambda = 4`` and up above it, which with the linear instability of ``r`` at ``lr lambda = 2`` makes the
    phases of :func:`uv_phases` as ``q = x^2 / n -> 0``. At finite ``n`` the same map gives each member's own
    boundaries: the lazy / catapult one moves by ``O(|f0 - y| n^-1/2)`` (near ``lr lambda = 2 + eps`` the continuum
    limit conserves ``eps^2 + 2 lr^2 q r^2``, so the loss can grow only by ``1 + eps^2 / (2 lr^2 q r0^2)`` before the
    kernel has fallen below ``2 / lr``), the catapult / divergent one by ``O(1/n)`` (measured).

    Regime: exact (no approximation) for the uv model with one scalar sample, plain GD; evaluated in float64.
    Values that overflow become ``inf`` / ``nan`` (a diverged member).

    Args:
      lr: learning rate(s).
      lambda0: NTK eigenvalue(s) at init.
      f0: output(s) at init.
      y: target(s).
      x2_over_n: ``x^2 / n`` (input squared over width).
      steps: number of steps.
    Returns:
      ``(f, lambda)``, each of the broadcast shape of the inputs with a trailing axis of ``steps + 1``.
    """
    lr, lam, f, y, q = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (lr, lambda0, f0, y, x2_over_n)))
    fs, lams = [f], [lam]
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            r = f - y
            f, lam = f - lr * lam * r + lr**2 * q * r**2 * f, lam + lr * q * r * (lr * lam * r - 4 * f)
            fs.append(f)
            lams.append(lam)
    return np.stack(fs, axis=-1), np.stack(lams, axis=-1)
