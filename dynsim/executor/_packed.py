"""Packed layout for two-layer networks: the hidden units of many members, of any widths, side by side.

A *pack* holds ``U`` unit slots and ``M`` member slots. Member ``m`` of width ``n_m`` owns ``n_m`` consecutive
units; ``seg[i]`` names the member slot of unit ``i`` (``M`` for an empty unit) and ``unit[i]`` its index inside the
member. The first layer of every member in the pack is then one matmul ``[U, d] @ [d, P]``, and each member's output
is a segment sum over its consecutive units.
Nothing is padded to a common width, and one compiled program serves every mix of widths, so a sweep over many
small widths compiles once instead of once per width bucket.

Members stay independent: the objective is the sum of the members' losses over disjoint parameters, so each
unit's gradient is its member's gradient; optimizer state is elementwise; per-member numbers (learning rates,
parametrization factors, weight decay, momentum) are gathered per unit. Unit ``i`` of a member draws its weights
with :meth:`dynsim.models.MLP.unit_weights`, as :meth:`dynsim.models.MLP.init` does, so a member's trajectory
equals its trajectory in the vmapped layout to round-off (a test checks this). The optimizer is the same chain
(:func:`dynsim.optim.chain`) with per-unit trees, the divergence test the same function, and the observables the
same definitions: those that read only the member's outputs (``Observable.outputs_only``) run here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import observables as _obs
from .. import optim as _optim
from ..models import ACTIVATIONS
from ._program import TRACE_COUNT, MemberState, divergence, scheduled

__all__ = ["Pack", "PackedLayout", "pack_members", "pack_arrays", "init_packed", "run_packed", "choose_capacity"]


class Pack(NamedTuple):
    """Unit layout of one pack (traced).

    Attributes:
      seg: ``[U]`` member slot of each unit; ``M`` marks an empty unit.
      unit: ``[U]`` index of each unit inside its member.
    """

    seg: jax.Array
    unit: jax.Array


def choose_capacity(widths, d_in: int, batch: int, *, min_units: int = 256) -> tuple[int, int]:
    """Units ``U`` and member slots ``M`` per pack.

    ``U`` is at least the widest member and ``min_units``; ``M = U // min(width)`` lets a pack fill with its
    narrowest members. Small packs keep each step's activations in cache when members are narrow.
    """
    widths = np.asarray(widths)
    units = int(max(widths.max(), min_units))
    slots = int(max(1, units // widths.min()))
    return units, slots


def pack_members(widths, units: int, slots: int) -> list[np.ndarray]:
    """First-fit decreasing: positions into ``widths`` grouped into packs of at most ``units`` units and ``slots``
    members. Deterministic, so a resumed run rebuilds the same packs."""
    widths = np.asarray(widths)
    if widths.max() > units:
        raise ValueError(f"a member of width {int(widths.max())} does not fit in a pack of {units} units.")
    order = np.argsort(-widths, kind="stable")
    used, packs = [], []
    for m in order:
        w = int(widths[m])
        for b in range(len(packs)):
            if used[b] + w <= units and len(packs[b]) < slots:
                used[b] += w
                packs[b].append(int(m))
                break
        else:
            used.append(w)
            packs.append([int(m)])
    return [np.asarray(p) for p in packs]


def pack_arrays(widths, units: int, slots: int) -> Pack:
    """Layout arrays for members of ``widths`` (in slot order) in a pack of ``units`` units."""
    seg = np.full(units, slots, np.int32)
    unit = np.zeros(units, np.int32)
    pos = 0
    for s, w in enumerate(np.asarray(widths, int)):
        seg[pos:pos + w] = s
        unit[pos:pos + w] = np.arange(w)
        pos += w
    return Pack(jnp.asarray(seg), jnp.asarray(unit))


class _Layout(NamedTuple):
    seg: jax.Array  # [U] member slot, M for an empty unit
    slot: jax.Array  # [U] member slot, clipped to a valid index
    valid: jax.Array  # [U] 1.0 for a member's unit, 0.0 for an empty one
    mult: jax.Array  # [M, 2] forward multipliers
    std: jax.Array  # [M, 2] init stds
    lr: jax.Array  # [M, 2] lr multipliers


def _layout(prog, hyper, pack: Pack) -> _Layout:
    slots = hyper.width.shape[0]
    sc = jax.vmap(prog.model.scales)(hyper.width, hyper.abc, hyper.init_scale)
    dtype = jnp.result_type(float)
    return _Layout(seg=pack.seg, slot=jnp.minimum(pack.seg, slots - 1), valid=(pack.seg < slots).astype(dtype),
                   mult=sc.mult, std=sc.std, lr=sc.lr)


def _forward(prog, params, lay: _Layout, x):
    """Outputs of every member slot, ``[M, d_out, P]``.

    Each member's readout is a segment sum over its (consecutive) units. A sum, unlike a 0/1 membership matmul,
    never forms ``0 * inf``, so one member's overflow stays in that member.
    """
    w_in, w_out = params
    phi = ACTIVATIONS[prog.model.act][0]
    h = lay.mult[lay.slot, 0][:, None] * (w_in @ x)
    z = phi(h) * lay.valid[:, None]
    slots = lay.mult.shape[0]
    outs = [jax.ops.segment_sum(w_out[k][:, None] * z, lay.seg, num_segments=slots + 1,
                                indices_are_sorted=True)[:slots] for k in range(prog.model.d_out)]
    return lay.mult[:, 1][:, None, None] * jnp.stack(outs, axis=1)


def _member_losses(prog, out, y):
    """``model.loss`` of each member's outputs ``out [M, k, P]`` against the shared targets ``y [k, P]``."""
    return jax.vmap(prog.model.loss, in_axes=(0, None))(out, y)


def _losses(prog, params, lay, x, y):
    return _member_losses(prog, _forward(prog, params, lay, x), y)


def _per_unit_tree(values, lay: _Layout):
    """A per-member ``[M]`` array as a tree matching ``(w_in [U, d], w_out [k, U])``."""
    u = values[lay.slot]
    return (u[:, None], u[None, :])


def _optimizer(prog, hyper, lay: _Layout) -> optax.GradientTransformation:
    """The members' optimizer (:func:`dynsim.optim.chain`) with per-unit learning rates, decay and momentum."""
    steps = (-(hyper.lr[lay.slot] * lay.lr[lay.slot, 0])[:, None], -(hyper.lr[lay.slot] * lay.lr[lay.slot, 1])[None, :])
    decay = _optim.weight_decay(_per_unit_tree(hyper.weight_decay, lay)) if prog.weight_decay else None
    momentum = (_per_unit_tree(hyper.momentum, lay) if prog.optimizer == "sgd" and prog.momentum else None)
    return _optim.chain(prog.optimizer, steps, decay=decay, momentum=momentum, betas=prog.betas, eps=prog.eps,
                        schedule=prog.schedule_fn())


def _keep(tree, alive_units, shapes):
    """Zero the entries of frozen members in every parameter-shaped leaf."""
    (u_in, u_out) = (alive_units[:, None], alive_units[None, :])

    def one(x):
        if x.shape == shapes[0]:
            return jnp.where(u_in, x, jnp.zeros_like(x))
        if x.shape == shapes[1]:
            return jnp.where(u_out, x, jnp.zeros_like(x))
        return x

    return jax.tree.map(one, tree)


def _records(prog, data, lay, state):
    """The observables of every member slot: each reads its slot's outputs (``Context.outputs``), computed once per
    record for the whole pack on the training and the test inputs (XLA drops the ones no observable reads)."""
    outs = {"train": _forward(prog, state.params, lay, data.x_train),
            "test": _forward(prog, state.params, lay, data.x_test)}

    def one(member_outs):
        ctx = _obs.Context(prog=prog, data=data, hyper=None, scales=None, mask=None,
                           outputs=lambda params, split: member_outs[split])
        return _obs.record(prog.observables, ctx, None, {})[0]

    values = jax.vmap(one)(outs)
    out = {}
    for name in prog.observables:
        value = values[name]
        alive = state.alive.reshape(state.alive.shape + (1,) * (value.ndim - 1))
        out[name] = jnp.where(alive, value, jnp.nan)
    return out


def init_packed(prog, data, hyper, pack: Pack):
    """States of the members in one pack and their records at step 0 (leading axis ``M`` on per-member leaves)."""
    TRACE_COUNT["init"] += 1
    lay = _layout(prog, hyper, pack)
    keys = hyper.key[lay.slot]
    w_in, w_out = jax.vmap(lambda kd, i: prog.model.unit_weights(jax.random.wrap_key_data(kd), i))(keys, pack.unit)
    w_in = lay.std[lay.slot, 0][:, None] * w_in * lay.valid[:, None]
    w_out = (lay.std[lay.slot, 1][:, None] * w_out * lay.valid[:, None]).T
    params = (w_in, w_out)
    x, y = prog.task.batch(data, 0, prog.batch_size)
    if prog.task.online:
        x, y = data.x_test, data.y_test
    slots = hyper.width.shape[0]
    state = MemberState(params, _optimizer(prog, hyper, lay).init(params), jnp.ones(slots, bool),
                        jnp.full(slots, -1, jnp.int32), _losses(prog, params, lay, x, y), {})
    return state, _records(prog, data, lay, state)


def run_packed(prog, data, state, hyper, pack: Pack, step0):
    """Advance one pack by ``prog.steps_per_segment`` steps; records have shape ``[records_per_segment, M, ...]``."""
    TRACE_COUNT["segment"] += 1
    lay = _layout(prog, hyper, pack)
    opt = _optimizer(prog, hyper, lay)
    shapes = (state.params[0].shape, state.params[1].shape)

    def one_step(st, t):
        x, y = prog.task.batch(data, t, prog.batch_size)
        total = lambda p: (lambda per: (per.sum(), per))(_losses(prog, p, lay, x, y))
        (_, per), grads = jax.value_and_grad(total, has_aux=True)(st.params)
        updates, opt_state = opt.update(grads, st.opt_state, st.params)
        if prog.lr_table:
            updates = scheduled(updates, hyper.lr_table, t, lay.slot)
        params = optax.apply_updates(st.params, updates)
        alive, diverged_at = divergence(prog, per, st.loss0, st.alive, st.diverged_at, t)
        alive_units = alive[lay.slot] & (lay.valid > 0)
        return st._replace(params=_keep(params, alive_units, shapes), opt_state=_keep(opt_state, alive_units, shapes),
                           alive=alive, diverged_at=diverged_at), None

    def interval(st, r):
        start = step0 + r * prog.record_every
        st, _ = jax.lax.scan(one_step, st, start + jnp.arange(prog.record_every))
        return st, _records(prog, data, lay, st)

    return jax.lax.scan(interval, state, jnp.arange(prog.records_per_segment))


init_packed = jax.jit(init_packed, static_argnums=0)
run_packed = jax.jit(run_packed, static_argnums=0, donate_argnums=2)


class PackedLayout:
    """The packed layout behind the executor's layout interface (:class:`dynsim.executor.Layout`)."""

    name = "packed"

    @staticmethod
    def supports(model, observables) -> bool:
        """Two-layer networks (``model.packable``) and observables that read only the outputs."""
        return model.packable and all(_obs.get(name).outputs_only for name in observables)

    @staticmethod
    def place(prog, hyper, widths: np.ndarray):
        """The pack's unit layout from its members' true widths (in slot order); a pack runs on one device."""
        return hyper, pack_arrays(np.asarray(widths, int), prog.n_pad, hyper.width.shape[0])

    @staticmethod
    def init(prog, data, placed):
        hyper, pack = placed
        return init_packed(prog, data, hyper, pack)

    @staticmethod
    def advance(prog, data, state, placed, step0):
        hyper, pack = placed
        return run_packed(prog, data, state, hyper, pack, step0)
