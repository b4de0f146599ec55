"""Weight-matrix spectra: ``top_singular_value``, the largest singular value of each hidden ``n x n`` matrix, and
``frobenius_norm``, its Frobenius norm (the norm rotational equilibrium predicts, Kosson et al. 2024).

Under AdamW the norm of a matrix that feeds a scale-invariant block settles where the optimizer's steps balance the
decay; Fan et al. (2025) find its top singular value at ``sqrt(lr / wd) * n^0.75``
(:func:`dynsim.theory.weight_decay.top_singular_value`). This observable measures it.

The value is ``sqrt(theta_max)``, the top Ritz value of :data:`LANCZOS_STEPS` Lanczos steps with full
reorthogonalisation (:func:`dynsim.observables.lanczos`) on ``W^T W``, from a fixed start vector. The Ritz value is
a lower bound of the top eigenvalue that converges to it geometrically in the steps when the top is separated
(Kaniel-Paige; Parlett 1998, "The symmetric eigenvalue problem", Thm 12.4.1), and as ``1/steps^2`` (relative to the
spectrum's width) at a square-root edge such as the Marchenko-Pastur one of a random matrix; a test compares it
with ``numpy.linalg.svd``. A record costs ``2 * LANCZOS_STEPS`` matrix-vector products per matrix (``O(n^2)``
each), where a full SVD would cost ``O(n^3)``.

It reads the trained parameter ``w`` (what the optimizer and weight decay act on), not the forward matrix
``n^-a w``; under muP the hidden multiplier is 1 and the two agree.

Padding: the start vector is drawn per unit from ``fold_in(key, i)`` and is zero on padded units; ``W^T W`` maps the
true-width subspace into itself, so a padded member runs the same arithmetic on the same numbers, up to summation
order over exact zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._registry import Observable
from ._spectrum import lanczos, ritz

__all__ = ["LANCZOS_STEPS", "OBSERVABLES", "top_singular_values", "frobenius_norms"]

LANCZOS_STEPS = 32  # static: matrix-vector products per matrix and record are twice this.
_START_SEED = 20250101  # fixed: every member starts from the same vector (masked to its width).


def _hidden_layers(model) -> tuple[int, ...]:
    return tuple(i for i, role in enumerate(model.roles) if role == 1)


def top_singular_values(params, mask, layers, steps: int = LANCZOS_STEPS) -> jax.Array:
    """Largest singular value of each matrix ``params[l]`` (``l`` in ``layers``), ``[len(layers)]``.

    Args:
      params: the member's weights; each ``params[l]`` is ``[n_pad, n_pad]`` with zero padded rows and columns.
      mask: ``[n_pad]`` width mask.
      layers: indices into ``params``.
      steps: Lanczos steps (static).
    """
    key = jax.random.key(_START_SEED)
    start = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (), mask.dtype))(
        jnp.arange(mask.shape[0])) * mask
    values = []
    for layer in layers:
        w = params[layer]
        # The largest Ritz value is genuine: a breakdown leaves the invalid ones below every genuine value.
        theta = ritz(*lanczos(lambda v, w=w: w.T @ (w @ v), start, steps)[:2])[0]
        values.append(jnp.sqrt(jnp.maximum(theta[-1], 0.0)))
    return jnp.stack(values)


def frobenius_norms(params, layers) -> jax.Array:
    """Frobenius norm of each matrix ``params[l]`` (``l`` in ``layers``), ``[len(layers)]``; padded rows and
    columns are zero and add nothing."""
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(params[layer]))) for layer in layers])


def _frob(ctx, params, extra):
    return frobenius_norms(params, _hidden_layers(ctx.prog.model)), None


def _top_sv(ctx, params, extra):
    return top_singular_values(params, ctx.mask, _hidden_layers(ctx.prog.model)), None


OBSERVABLES = (
    Observable("top_singular_value", _top_sv, "largest singular value of each hidden n x n weight matrix (the "
               f"trained parameter), from {LANCZOS_STEPS} Lanczos steps on W^T W", dims=("hidden_layer",),
               shape=lambda prog: (len(_hidden_layers(prog.model)),),
               applies=lambda model: len(_hidden_layers(model)) > 0,
               applies_to="models with a hidden n x n weight matrix (MLPs of depth >= 3)"),
    Observable("frobenius_norm", _frob, "Frobenius norm of each hidden n x n weight matrix (the trained "
               "parameter)", dims=("hidden_layer",),
               shape=lambda prog: (len(_hidden_layers(prog.model)),),
               applies=lambda model: len(_hidden_layers(model)) > 0,
               applies_to="models with a hidden n x n weight matrix (MLPs of depth >= 3)"),
)
