r"""Learning-rate sensitivity of a sweep (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
training instabilities", section 3.1).

.. math::

    S = \mathbb E_{\eta \in [a, b]}\big[\min(\ell(\eta), \ell_0) - \ell^*\big],\qquad
    \ell^* = \min_{\eta \in [a, b]} \min(\ell(\eta), \ell_0),

with :math:`\ell(\eta)` the final loss of the run at learning rate :math:`\eta`, :math:`\ell_0` the loss at
initialisation, and the expectation an average over a grid uniform in :math:`\log \eta` (the paper's grid: three
decades). A run that diverged, or ended above where it started, counts as :math:`\ell_0`: the clip keeps one divergent
run from dominating the average, as in the paper. :math:`S = 0` when every rate reaches the best loss; it grows with
the range of rates over which training is worse than the best, and how much worse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["lr_sensitivity"]


def lr_sensitivity(lr: Any, final_loss: Any, init_loss: Any, lr_range: tuple[float, float] | None = None) -> np.ndarray:
    r"""The learning-rate sensitivity :math:`S` of each curve (module docstring).

    Args:
      lr: learning rates ``[L]``, a grid uniform in log lr (each rate weighs the same in the average).
      final_loss: final losses ``[..., L]`` (the last axis runs over ``lr``); NaN or inf for a diverged run.
      init_loss: the loss at initialisation :math:`\ell_0`, broadcastable to ``final_loss`` (e.g. ``[..., 1]`` or
        ``[..., L]``).
      lr_range: ``(a, b)``: only rates in ``[a, b]`` count (default: all of them).

    Returns:
      ``S`` with the shape of ``final_loss`` without its last axis (float64); NaN where ``init_loss`` is NaN or no
      rate lies in the range.

    Example:
      >>> lr_sensitivity([0.01, 0.1, 1.0], [[0.5, 0.1, float("nan")]], [[1.0]])  # (0.4 + 0 + 0.9) / 3
      array([0.43333333])
    """
    lr = np.asarray(lr, dtype=float)
    loss = np.asarray(final_loss, dtype=float)
    if lr.ndim != 1 or loss.shape[-1:] != lr.shape:
        raise ValueError(f"final_loss must end with the lr axis of length {lr.size}, got shape {loss.shape}.")
    if not np.all(lr > 0):
        raise ValueError("learning rates must be positive.")
    l0 = np.broadcast_to(np.asarray(init_loss, dtype=float), loss.shape)
    clipped = np.where(np.isfinite(loss), np.minimum(loss, l0), l0)
    if lr_range is not None:
        a, b = lr_range
        inside = (lr >= a) & (lr <= b)
        if not inside.any():
            return np.full(loss.shape[:-1], np.nan)
        clipped = clipped[..., inside]
    best = clipped.min(axis=-1, keepdims=True)
    return (clipped - best).mean(axis=-1)
