"""The loss curve under a learning-rate schedule: the annealing law of Tissue et al. (2024), "Scaling Law with
Learning Rate Annealing".

.. math::

    L(s) = L_0 + A\\, S_1(s)^{-\\alpha} - C\\, S_2(s),\\qquad
    S_1(s) = \\sum_{i \\le s} \\eta_i,\\qquad S_2(s) = \\sum_{i \\le s} m_i,\\quad
    m_i = \\lambda m_{i-1} + (\\eta_{i-1} - \\eta_i),

``S_1`` the forward area (the learning rate summed over the steps taken) and ``S_2`` the annealing area (the drops
of the learning rate, each followed by a momentum that decays by ``lambda`` per step). One fit of ``(L_0, A, alpha,
C)`` on a few schedules predicts the whole loss curve of any other schedule with the same peak learning rate.

Regime of validity (the paper's): training at one peak learning rate, model and data fixed, long enough that the
loss follows a power law of ``S_1`` on a constant schedule; the schedules differ only in how the rate decays from
that peak. ``lambda`` sets how long a drop keeps paying off: the paper uses 0.999 for runs of 10^4 - 10^5 steps, so
its momentum remembers about 1000 steps; a shorter run needs a smaller ``lambda`` (one over the steps a drop in the
rate takes to show in the loss). Far below the fitted ``S_2`` range (a schedule that anneals much longer or deeper
than the fitted ones) the linear ``- C S_2`` term has no floor, and the law stops being a prediction.
"""

from __future__ import annotations

import numpy as np

from ..fit import annealing_areas as _areas
from ..optim import schedule_multipliers

__all__ = ["annealing_areas", "annealing_loss", "heavy_ball_decay", "wsd_final_loss"]


def annealing_areas(lr, decay: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """``(S_1, S_2)`` after each step of the schedule ``lr`` (``[..., T]``), with the annealing momentum's decay
    ``lambda = decay`` (module docstring; :func:`dynsim.fit.annealing_areas`, whose definition this is)."""
    return _areas(lr, decay)


def annealing_loss(s1, s2, L0: float, A: float, alpha: float, C: float) -> np.ndarray:
    """``L0 + A S1^-alpha - C S2`` (Tissue et al. 2024; regime in the module docstring)."""
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    return L0 + A * s1 ** (-alpha) - C * s2


def wsd_final_loss(fractions, steps: int, lr: float, params: dict, decay: float = 0.999,
                   warmup: int = 0) -> np.ndarray:
    """The law's loss after ``steps`` steps of warmup-stable-decay schedules at peak rate ``lr``, one per decay
    fraction ``F`` (the last ``F * steps`` steps decay linearly to 0: :func:`dynsim.optim.schedule_multipliers`'s
    ``wsd:F``, after ``warmup`` steps of linear warmup). Its minimum over ``F`` is the law's best decay fraction: a
    longer decay gains annealing area ``S_2`` and loses forward area ``S_1`` (the balance Tissue et al. 2024 discuss
    for the annealing ratio of WSD)."""
    out = []
    for f in np.atleast_1d(np.asarray(fractions, float)):
        s1, s2 = annealing_areas(lr * schedule_multipliers(f"wsd:{f:g}", steps, warmup), decay)
        out.append(annealing_loss(s1[-1], s2[-1], **{k: params[k] for k in ("L0", "A", "alpha", "C")}))
    return np.asarray(out)


def heavy_ball_decay(momentum: float) -> float:
    """The annealing momentum's decay ``lambda`` of SGD with heavy-ball momentum ``beta``: ``lambda = beta``.

    A mode of curvature ``h`` under heavy ball, ``x_{t+1} = x_t - eta h x_t + beta (x_t - x_{t-1})``, has the
    characteristic roots of ``r^2 - (1 + beta - eta h) r + beta = 0``. Where they are complex (the underdamped modes,
    ``(1 - sqrt(beta))^2 < eta h < (1 + sqrt(beta))^2``) their product is ``beta``, so ``|r|^2 = beta`` whatever the
    learning rate: the mode's second moment, and with it the excess loss the SGD noise keeps there, relaxes by
    ``beta`` per step after a drop of the rate. That is the law's ``m_i = lambda m_{i-1} + (eta_{i-1} - eta_i)``
    with ``lambda = beta`` (Polyak 1964 for the roots; the annealing law of Tissue et al. 2024).

    dynsim's heavy ball (:func:`dynsim.optim.heavy_ball`) keeps ``t <- g + beta t`` and steps by ``eta_t t``, which is
    the recursion above with ``beta eta_t / eta_{t-1}`` for ``beta``: exact at a constant rate, slightly less
    momentum where the rate falls (a drop's step, the last steps of a decay to zero).

    Regime of validity: the noise-carrying modes underdamped through the decay (for ``beta = 0.98``,
    ``eta h > 1e-4``); modes below that relax more slowly, and without momentum (``beta = 0``) the relaxation rate
    ``2 eta h`` follows the learning rate and no constant ``lambda`` describes it.
    """
    beta = float(momentum)
    if not 0 < beta < 1:
        raise ValueError(f"heavy-ball momentum must lie in (0, 1), got {momentum!r}.")
    return beta
