"""Where padding happens: every rule that lets members of different sizes share one compiled program.

A compiled program has static shapes; a sweep's members differ in width (and a closed-form solve in data size). Two
kinds of padding make them share programs, and both are *inert*: a member's numbers do not depend on how much it was
padded (only the order of float sums changes, see ``docs/architecture.md``).

1. **Units.** A member of true width ``n`` runs at the padded width ``n_pad`` of its bucket
   (:func:`dynsim.executor.plan` chooses the buckets). Its units ``i >= n`` are masked by :func:`width_mask`:

   - at init, a model multiplies every weight that touches a padded unit by the mask, so padded weights start at
     exactly zero (:meth:`dynsim.models.MLP.init`, :meth:`dynsim.models.Superposition.init`); unit ``i`` draws its
     weights from a key folded with ``i`` and each draw is one-dimensional, so the draws of the true units do not
     depend on ``n_pad`` either;
   - in the forward pass the activations of padded units are multiplied by the mask, so they contribute zero and
     receive zero gradient: their weights stay zero, whatever the optimizer;
   - every width-dependent factor (a parametrization's ``n^-a``, ``n^-b``, ``n^-c``) uses the true ``n``, never
     ``n_pad`` (:mod:`dynsim.param`);
   - a normalisation over units takes its statistics over the true units only, dividing by ``n = sum(mask)``, and
     masks what centring puts on padded units back to zero (:class:`dynsim.models.MLP`'s ``norm``,
     :func:`dynsim.models._mlp.normalise`).

2. **Members.** A vectorised group has a static size ``G``; a bucket whose member count is not a multiple of ``G``
   fills its last group by repeating its last member (:func:`pad_group`). The repeats are computed and dropped.

A model whose padded units are not provably inert declares ``paddable = False`` (:class:`dynsim.models.Model`;
:class:`dynsim.models.FlaxModel`, whose modules may hold biases, normalisations or activations with ``phi(0) != 0``):
the planner gives each of its widths its own bucket, so it runs at ``n_pad = n`` with an all-ones mask.

The packed layout (:mod:`dynsim.executor`) does not pad units: each member owns exactly ``n`` unit slots of a pack;
its empty slots are masked like padded units. The closed-form random-feature solver (:mod:`dynsim.ridge`) pads
features and samples with the same masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["width_mask", "pad_group"]


def width_mask(width, n_pad: int, dtype=None) -> jax.Array:
    """0/1 mask of length ``n_pad`` whose first ``width`` entries are 1 (``width`` may be traced)."""
    dtype = dtype or jnp.result_type(float)
    return (jnp.arange(n_pad) < width).astype(dtype)


def pad_group(members, group: int | None) -> np.ndarray:
    """Member indices filled up to ``group`` entries by repeating the last one (unchanged if ``group`` is None or
    already reached)."""
    members = np.asarray(members)
    if group is not None and len(members) < group:
        members = np.concatenate([members, np.full(group - len(members), members[-1])])
    return members
