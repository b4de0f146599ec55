"""Geometry of superposition: which features a :class:`~dynsim.models.Superposition` model represents, and
how much their directions overlap.

Feature ``i``'s direction is the column ``w_i = W_{:,i}`` of ``W [m, n]``. A feature counts as *represented* when
``|w_i| > REPRESENTED_NORM``: a perfectly reconstructed feature has ``|w_i| = 1`` (then ``ReLU(|w_i|^2 x_i) = x_i``),
an unused one is driven to 0 by weight decay, and trained models leave few norms in between (Liu et al. 2025,
Fig. 2), so the fraction hardly depends on the threshold's exact value. Padded rows of ``W`` are zero and add
nothing to any norm or overlap; the hidden dimension ``m`` is always the member's true one.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._registry import Context, Observable

__all__ = ["REPRESENTED_NORM", "represented", "mean_sq_overlap", "OBSERVABLES"]

REPRESENTED_NORM = 0.5


def represented(w) -> jnp.ndarray:
    """0/1 mask of represented features, ``|w_i| > REPRESENTED_NORM``, shape ``[n]``."""
    return (jnp.sqrt(jnp.sum(w**2, axis=0)) > REPRESENTED_NORM).astype(w.dtype)


def mean_sq_overlap(w) -> jnp.ndarray:
    """Mean squared overlap of the unit directions of the represented features, over ordered pairs ``i != j``.

    .. math::

        \\overline{\\cos^2} = \\frac{1}{k(k-1)} \\sum_{i \\ne j} r_i r_j (\\hat w_i \\cdot \\hat w_j)^2
        = \\frac{\\|S\\|_F^2 - k}{k (k-1)},\\qquad
        S = \\sum_i r_i \\hat w_i \\hat w_i^\\top \\in \\mathbb R^{m\\times m},

    with ``r`` from :func:`represented` and ``k = sum_i r_i``; the frame operator ``S`` costs ``m^2 n`` instead of
    the ``m n^2`` of the Gram matrix. NaN when fewer than two features are represented.
    """
    r = represented(w)
    norms = jnp.sqrt(jnp.sum(w**2, axis=0))
    unit = w * (r / jnp.where(r > 0, norms, 1.0))[None, :]
    frame = unit @ unit.T
    k = jnp.sum(r)
    return jnp.where(k >= 2, (jnp.sum(frame**2) - k) / jnp.maximum(k * (k - 1), 1.0), jnp.nan)


def _represented_fraction(ctx: Context, params, extra):
    return jnp.mean(represented(params[0])), None


def _overlap(ctx: Context, params, extra):
    return mean_sq_overlap(params[0]), None


def _feature_loss(ctx: Context, params, extra):
    out = ctx.prog.model.apply(params, ctx.data.x_test, ctx.scales.mult, ctx.mask)
    return 0.5 * jnp.mean((out - ctx.data.y_test) ** 2, axis=1), None


def _dims_per_feature(ctx: Context, params, extra):
    # Elhage et al. (2022): D* = m / |W|_F^2, the hidden dimensions per (norm-weighted) represented feature.
    return ctx.hyper.width.astype(params[0].dtype) / jnp.sum(params[0] ** 2), None


def _has_feature_directions(model) -> bool:
    return model.feature_directions


_WHO = dict(applies=_has_feature_directions, applies_to="models with one direction per feature (superposition)")
OBSERVABLES = (
    Observable("represented_fraction", _represented_fraction,
               f"fraction of features whose direction has norm above {REPRESENTED_NORM} (superposition model)", **_WHO),
    Observable("mean_sq_overlap", _overlap, "mean squared cosine between the directions of represented features, "
               "over pairs i != j (superposition model)", **_WHO),
    Observable("feature_loss", _feature_loss, "per-feature loss 0.5*mean((x'_i - x_i)^2) on the evaluation set, "
               "unweighted (superposition model)", dims=("feature",), shape=lambda prog: (prog.model.d_out,), **_WHO),
    Observable("dims_per_feature", _dims_per_feature, "hidden dimensions per feature m / |W|_F^2 (Elhage et al. 2022; "
               "superposition model)", **_WHO),
)
