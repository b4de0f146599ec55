"""How far two computations of one trajectory may differ when only the order of their float sums differs.

Padding, packing, group sizes, sample chunks and device sharding change the order in which XLA sums (and which
vector instructions it uses), never the arithmetic: a member's trajectory in one layout and in another are the
same function evaluated with different round-off. How far round-off carries depends on the dynamics (a stable run
keeps it at a few ulps, a run near an instability amplifies it) and on the machine's code generation, so no fixed
tolerance holds on every CPU and GPU. Instead each comparison measures, in the same test and on the same machine,
what the dynamics do to a one-ulp perturbation: the reference member trained again with every initial weight one ulp
larger (``init_scale * (1 + eps)``).

The bound at a record after ``t`` steps is

    |x(t) - ref(t)| <= ULPS_PER_STEP * (t + 1) * max_{s <= t} max(|pert(s) - ref(s)|, eps * |ref(s)|)

Each step's reordered sums inject a perturbation of the state; the one-ulp perturbation of the whole initial state
measures how such a perturbation grows (the running maximum covers growth that later decays), and the ``t + 1``
injections add up at most linearly. ``ULPS_PER_STEP = 8`` bounds one step's injection relative to a one-ulp
perturbation of every weight: a step changes the weights by ``lr * grad``, whose reordered reductions (over samples,
units, inputs) err by a few ulps of the update, and an update is at most of the weights' own size. A difference
from a real dependence on the layout (a padded unit that leaks, a draw that depends on the padded width) is of the
size of what leaks, orders of magnitude above this bound after a few steps, so the check still fails for them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

ULPS_PER_STEP = 8


def eps() -> float:
    """Machine epsilon of the precision members train in (float32, or float64 under ``jax_enable_x64``)."""
    return float(jnp.finfo(jnp.result_type(float)).eps)


def perturbed(sweep):
    """``sweep`` with every initial weight one ulp larger: each ``init_scale`` times ``1 + eps``."""
    return dataclasses.replace(sweep, init_scale=tuple(float(s) * (1.0 + eps()) for s in sweep.init_scale))


def bound(ref, pert, steps=None) -> np.ndarray:
    """The allowed ``|x - ref|`` at each record (module docstring); ``ref`` and ``pert`` are DataArrays with a
    ``step`` dimension (its coordinate gives ``t``), or arrays whose last axis is the record with ``steps`` given."""
    if steps is None:
        dims = list(ref.dims)
        axis = dims.index("step")
        steps = ref["step"].values
        ref, pert = np.asarray(ref.values, float), np.asarray(pert.transpose(*dims).values, float)
    else:
        ref, pert = np.asarray(ref, float), np.asarray(pert, float)
        axis = ref.ndim - 1
    shape = [1] * ref.ndim
    shape[axis] = -1
    t = np.asarray(steps, float).reshape(shape)
    scale = np.sqrt(np.nanmean(ref**2, axis=tuple(i for i in range(ref.ndim) if i != axis), keepdims=True))
    dev = np.maximum(np.nan_to_num(np.abs(pert - ref), nan=0.0), eps() * np.abs(np.nan_to_num(ref)))
    dev = np.maximum(dev, eps() * np.nan_to_num(scale))  # entries near zero: one ulp of the record's size
    return ULPS_PER_STEP * (t + 1) * np.maximum.accumulate(dev, axis=axis)


def assert_same_trajectory(actual, ref, pert, what: str = "") -> None:
    """``actual`` (DataArray, same dims as ``ref``) equals ``ref`` within :func:`bound`; NaN (diverged) exactly
    where ``ref`` is NaN."""
    actual = actual.transpose(*ref.dims)
    a, r = np.asarray(actual.values, float), np.asarray(ref.values, float)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(r), err_msg=f"{what}: diverged members differ")
    p = np.asarray(pert.transpose(*ref.dims).values, float)
    b = bound(ref, pert)
    diff = np.nan_to_num(np.abs(a - r), nan=0.0)
    worst = float(np.max(np.divide(diff, b, out=np.where(diff > 0, np.inf, 0.0), where=b > 0)))
    moved = float(np.max(np.nan_to_num(np.abs(p - r), nan=0.0)))
    assert worst <= 1.0, (f"{what}: differs by {float(diff.max()):.3g}, {worst:.3g} times the round-off bound "
                          f"(a one-ulp perturbation moved it by at most {moved:.3g})")
