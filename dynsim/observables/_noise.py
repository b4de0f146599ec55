"""Gradient noise: ``gradient_noise``, the two moments of the per-sample gradients whose ratio is the simple noise
scale of McCandlish et al. (2018), "An Empirical Model of Large-Batch Training".

With ``g_i`` the gradient of sample ``i``'s loss, ``G`` their mean over the member's full training set (the test
set, i.e. the population, for an online task) and ``D = diag(n^-c_l)`` the per-layer learning-rate multipliers
(:mod:`dynsim.param`; the step of SGD is ``lr D g``), the observable records

.. math::

    \\operatorname{tr}(D\\Sigma) = \\frac{1}{P}\\sum_i g_i^\\top D g_i - G^\\top D G,\\qquad G^\\top D G,

whose ratio is the simple noise scale ``B_simple = tr(D Sigma) / (G^T D G)``: the batch size at which the noise of a
mini-batch gradient (``tr(D Sigma) / B`` with replacement) equals its signal. ``D`` makes it the noise scale of the
member's own steps (equal to McCandlish's ``tr(Sigma) / |G|^2`` when every layer has the same rate). Both moments are
recorded, not their ratio, so that an analysis can average them over records before dividing, as McCandlish et al.
do (the ratio of averages is less noisy than the average of ratios).

Cost: one gradient per sample (``jax.vmap`` of ``jax.grad``), so ``P`` parameter-sized vectors per member at a
record. Padded units have zero gradient, so padding changes nothing but the order of sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._registry import Observable

__all__ = ["OBSERVABLES", "gradient_noise"]


def gradient_noise(ctx, params):
    """``[tr(D Sigma), G^T D G]`` of the member at ``params`` (module docstring); a plain function."""
    data, model = ctx.data, ctx.prog.model
    x, y = (data.x_test, data.y_test) if ctx.prog.task.online else (data.x_train, data.y_train)

    def sample_loss(p, xi, yi):
        return model.loss(model.apply(p, xi[:, None], ctx.scales.mult, ctx.mask), yi[:, None])

    grads = jax.vmap(jax.grad(sample_loss), in_axes=(None, 1, 1))(params, x, y)  # each leaf [P, ...]
    rates = ctx.scales.lr
    per_sample = sum(rates[k] * jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for k, g in enumerate(grads))
    mean = sum(rates[k] * jnp.sum(jnp.mean(g, axis=0) ** 2) for k, g in enumerate(grads))
    return jnp.stack([jnp.mean(per_sample) - mean, mean])


OBSERVABLES = (
    Observable("gradient_noise", lambda ctx, params, extra: (gradient_noise(ctx, params), None),
               "per-sample gradient moments [tr(D Sigma), G^T D G] (D: per-layer lr multipliers) on the training set; "
               "their ratio is the simple gradient noise scale B_simple (McCandlish et al. 2018)",
               dims=("moment",), shape=lambda prog: (2,)),
)
