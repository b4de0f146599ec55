"""Full-batch gradient descent on a model linear in its trained parameters: the loss after ``T`` steps, its
derivative in the learning rate, and how fast that derivative grows beyond the stability edge.

These are the exact references for :func:`dynsim.hypergrad` (``tests/test_hypergrad.py``): a random-feature model
(first layer frozen, :func:`dynsim.models.random_feature_model`) or a linearized network
(:class:`dynsim.models.Linearized`) trained by full-batch GD on the squared loss is a linear recursion of its
residuals, diagonal in the eigenbasis of its kernel.

All functions are pure NumPy and broadcast over ``lr``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["modes", "gd_loss", "gd_loss_lr_derivative", "lr_derivative_growth"]


def modes(features, residual, rate: float = 1.0):
    """The kernel eigenmodes of a linear model: ``(lambda, w)`` with ``lambda_i`` the eigenvalues of
    ``K = rate * A A^T / P`` and ``w_i = (u_i . r_0)^2 / (2 P)`` the initial loss in each eigenvector ``u_i``.

    Args:
      features: ``A``, ``[P, p]``: the model's outputs on the ``P`` training inputs are ``A v`` for the trained
        parameters ``v`` (the Jacobian, for a linearized network).
      residual: ``r_0 = A v_0 - y`` at init, ``[P]``.
      rate: the trained parameters' learning-rate multiplier (``n^-c`` of the parametrization), so that one step of
        base rate ``lr`` moves ``v`` by ``-lr * rate * grad``.
    Returns:
      ``(lambda [P], w [P])`` in float64; the zero modes (``lambda = 0``) carry the part of ``r_0`` no step reduces.
    """
    a = np.asarray(features, np.float64)
    r = np.asarray(residual, np.float64)
    n = a.shape[0]
    lam, u = np.linalg.eigh(rate * a @ a.T / n)
    return np.clip(lam, 0.0, None), (u.T @ r) ** 2 / (2 * n)


def gd_loss(lam, w, lr, steps: int):
    """Training loss after ``steps`` steps of full-batch GD with learning rate ``lr``.

    .. math::

        L_T(\\eta) = \\sum_i w_i\\, (1 - \\eta \\lambda_i)^{2T},

    since GD on ``0.5 mean((A v - y)^2)`` maps the residual to ``r_{t+1} = (I - eta K) r_t`` (``K = A A^T / P``
    times the rate multiplier). Reference: the discrete-time kernel-GD solution of Lee et al. (2019), "Wide neural
    networks of any depth evolve as linear models under gradient descent", eq. 9 (:func:`dynsim.theory.ntk_regime.
    gd_outputs`). Regime: exact for any model linear in its trained parameters under full-batch GD with a constant
    learning rate, no momentum and no weight decay, at any ``eta`` (also beyond ``2 / lambda_max``, where it grows).

    Args:
      lam, w: :func:`modes`.
      lr: learning rate(s).
      steps: ``T``.
    """
    lr = np.asarray(lr, np.float64)[..., None]
    return np.sum(w * (1.0 - lr * lam) ** (2 * steps), axis=-1)


def gd_loss_lr_derivative(lam, w, lr, steps: int):
    """Derivative of :func:`gd_loss` in the learning rate.

    .. math::

        \\frac{\\partial L_T}{\\partial \\eta} = -2T \\sum_i w_i\\, \\lambda_i\\, (1 - \\eta \\lambda_i)^{2T - 1}.

    Regime: as :func:`gd_loss`. Multiply by ``eta`` for the derivative in ``log eta``.
    """
    lr = np.asarray(lr, np.float64)[..., None]
    return -2.0 * steps * np.sum(w * lam * (1.0 - lr * lam) ** (2 * steps - 1), axis=-1)


def lr_derivative_growth(lr, lam_max, t1: int, t2: int):
    """Growth rate per step of ``|dL_T / d lr|`` between horizons ``t1 < t2`` beyond the stability edge.

    .. math::

        \\frac{\\log|\\partial_\\eta L_{T_2}| - \\log|\\partial_\\eta L_{T_1}|}{T_2 - T_1}
        \\;\\to\\; 2 \\log|1 - \\eta \\lambda_{\\max}| + \\frac{\\log(T_2 / T_1)}{T_2 - T_1}.

    Beyond the edge (``eta * lambda_max > 2``) the mode ``lambda_max`` has the largest ``|1 - eta lambda|``, above
    1, and dominates :func:`gd_loss_lr_derivative`, whose term is ``2 T w lambda |1 - eta lambda|^(2T - 1)``: its
    logarithm grows by ``2 log|1 - eta lambda_max|`` per step plus the ``log T`` of the prefactor. This is the
    training map's Jacobian ``I - eta H`` having an eigenvalue of modulus above 1: an unrolled run's
    hypergradient grows exponentially with the horizon (the chaotic regime of Metz et al. 2019, "Understanding and
    correcting pathologies in the training of learned optimizers").

    Regime: exact for a linear model once the other modes' share, ``(|1 - eta lambda_2| / |1 - eta
    lambda_max|)^(2T)``, is negligible at ``T = t1``; for a network, while its sharpness stays near ``lambda_max``
    (the early steps of a catapult, Lewkowycz et al. 2020).
    """
    lr = np.asarray(lr, np.float64)
    return 2.0 * np.log(np.abs(1.0 - lr * lam_max)) + np.log(t2 / t1) / (t2 - t1)
