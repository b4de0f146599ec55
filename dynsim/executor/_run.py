"""The executor's driver: :func:`run` checks its arguments, keys the results, plans, trains chunk by chunk through
the layout, and stores what it trained.

Its jobs are separate functions: :func:`_arguments` (checks, one sentence each), :func:`_identity` (the key of the
results directory), :func:`_train_chunk` (one chunk of groups through a layout), :func:`_with_twins` (members that
train identically share one training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr

from .. import io as _io
from .. import observables as _obs
from .. import optim as _optim
from .. import param as _param
from .. import progress as _progress
from .._version import __version__
from ..models import Model, WithLoss
from ..tasks import Task
from ._distributed import agree, check_out, finish, share
from ._dryrun import RunPlan
from ._packed import PackedLayout
from ._plan import Bucket, check_memory, choose_layout, chunks, device_share, fit_groups, packs_fit, plan
from ._program import InputError, Program, member_hyper, member_table
from ._sweep import Sweep
from ._vmap import VmapLayout

__all__ = ["run", "versions", "CompileClock", "LAYOUTS"]

LAYOUTS = {"vmap": VmapLayout, "packed": PackedLayout}


def versions() -> dict:
    """The versions and the backend that produced a result, stored in its attributes."""
    return {"dynsim": __version__, "jax": jax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "backend": jax.default_backend(), "device_count": jax.device_count(),
            "devices": str(jax.devices()[0].device_kind), "x64": bool(jax.config.jax_enable_x64)}


def _check_objects(model, task, sweep) -> Sweep:
    """The sweep (a ``Sweep``, or a dict of its axes), after checking that model and task are what they claim."""
    if not isinstance(model, Model):
        raise InputError(f"model must be a model spec such as dynsim.models.MLP(...), got {type(model).__name__}.")
    if not isinstance(task, Task):
        raise InputError(f"task must be a task spec such as dynsim.tasks.TeacherStudent(...), got "
                         f"{type(task).__name__}.")
    if isinstance(sweep, dict):
        try:
            return Sweep(**sweep)
        except (TypeError, ValueError) as e:
            raise InputError(str(e)) from None
    if not isinstance(sweep, Sweep):
        raise InputError(f"sweep must be a dynsim.Sweep or a dict of its axes, got {type(sweep).__name__}.")
    return sweep


def _segment_records(total_intervals: int, record_every: int, target_steps: int = 500) -> int:
    """Records per segment: the largest divisor of the interval count with at most ``target_steps`` steps."""
    best = 1
    for r in range(1, total_intervals + 1):
        if total_intervals % r == 0 and r * record_every <= max(target_steps, record_every):
            best = r
    return best


def _spec_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Args(NamedTuple):
    """The arguments of :func:`run` after :func:`_arguments` checked and normalised them."""

    sweep: Sweep
    steps: int
    record_every: int
    batch_size: int
    observables: tuple[str, ...]
    group: int | None
    chunk_members: int
    sample_chunk: int
    warmup_steps: int
    layout: str
    auto: bool


def _arguments(model, task, sweep, *, steps, record_every, batch_size, observables, group, buckets, diverge_factor,
               betas, eps, chunk_members, layout, sample_chunk, schedule, warmup_steps, hvp) -> _Args:
    """Every argument of :func:`run` checked before anything is computed; an :class:`InputError` names the first
    that cannot work."""
    sweep = _check_objects(model, task, sweep)
    for name, value, low in (("steps", steps, 1), ("record_every", record_every, 1), ("batch_size", batch_size, 0),
                             ("chunk_members", chunk_members, 1), ("sample_chunk", sample_chunk, 0),
                             ("warmup_steps", warmup_steps, 0), ("group", group, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value < low):
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}.")
    steps, record_every, batch_size, chunk_members, sample_chunk, warmup_steps = (
        int(v) for v in (steps, record_every, batch_size, chunk_members, sample_chunk, warmup_steps))
    group = None if group is None else int(group)  # numpy integers become ints: they key stores and programs
    if not diverge_factor > 1:
        raise InputError(f"diverge_factor must exceed 1 (a loss ratio to the initial loss), got {diverge_factor!r}.")
    if (len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)
            or not (isinstance(eps, numbers.Real) and eps > 0)):
        raise InputError(f"betas must be two numbers in [0, 1) and eps positive, got betas={betas!r}, eps={eps!r}.")
    if steps % record_every:
        raise InputError(f"steps ({steps}) must be a positive multiple of record_every ({record_every}).")
    if batch_size and sweep.batch_size != (0,):
        raise InputError(f"batch_size is given both to run ({batch_size}) and as the sweep's batch_size axis "
                         f"{list(sweep.batch_size)}; give it in one place.")
    swept = sweep.batch_size != (0,)
    if batch_size:  # the run's batch size is a sweep axis with one value
        sweep = dataclasses.replace(sweep, batch_size=(batch_size,))
    for b in sweep.batch_size:
        if swept and not task.online and b > task.n_train:
            raise InputError(f"sweep batch_size {b} exceeds the training set (n_train = {task.n_train}); use at "
                             "most n_train, or 0 for full batch.")
        try:
            task.validate_batch_size(b)
        except ValueError as e:
            raise InputError(str(e)) from None
    batch_size = sweep.batch_size[0] if len(sweep.batch_size) == 1 else 0  # swept: the sweep's key holds them
    if model.d_in != task.d_in or model.d_out != task.d_out:
        raise InputError(f"model d_in/d_out ({model.d_in}, {model.d_out}) must match the task's "
                         f"({task.d_in}, {task.d_out}).")
    if schedule not in _optim.SCHEDULES:
        raise InputError(f"schedule must be one of {', '.join(_optim.SCHEDULES)}, got {schedule!r}.")
    if schedule != "constant" and sweep.traced_schedule:
        raise InputError(f"schedule is given both to run ({schedule!r}) and as the sweep's schedule axis "
                         f"{list(sweep.schedule)}; give it in one place.")
    if not 0 <= warmup_steps < steps:
        raise InputError(f"warmup_steps ({warmup_steps}) must lie in [0, steps) = [0, {steps}).")
    if hvp not in _obs.HVP_METHODS:
        raise InputError(f"hvp must be one of {', '.join(_obs.HVP_METHODS)}, got {hvp!r}.")
    if hvp == "fd" and not model.smooth:
        raise InputError("hvp 'fd' needs a smooth model (tanh, erf or linear activations): a difference of "
                         "gradients jumps where a ReLU unit switches; use hvp 'tangent'.")
    observables = tuple(dict.fromkeys((observables,) if isinstance(observables, str) else observables))
    for name in observables:
        try:
            o = _obs.get(name)
        except ValueError as e:
            raise InputError(str(e)) from None
        if o.applies is not None and not o.applies(model):
            raise InputError(f"observable {name!r} applies to {o.applies_to}, not to {type(model).__name__}.")
    if not model.parametrized and len(sweep.param) > 1:
        raise InputError(f"{type(model).__name__} does not use a parametrization, so sweeping param over "
                         f"{list(sweep.param)} would train identical copies; give one value.")
    if layout == "auto" and (group is not None or buckets is not None):
        layout = "vmap"  # group sizes and width buckets are settings of the vmapped layout
    auto = layout == "auto"
    batch = max(b or task.n_train for b in sweep.batch_size)
    layout = choose_layout(layout, model, observables, sweep, batch)
    for batch in sorted({b or task.n_train for b in sweep.batch_size}):
        if sample_chunk < 0 or (sample_chunk and batch % sample_chunk):
            raise InputError(f"sample_chunk ({sample_chunk}) must be 0 or divide the batch ({batch}).")
    return _Args(sweep, steps, record_every, batch_size, observables, group, chunk_members, sample_chunk,
                 warmup_steps, layout, auto)


def _identity(model, task, a: _Args, *, diverge_factor, betas, eps, schedule, hvp) -> dict:
    """What identifies the computation of a results directory: a run resumed into it must have the same."""
    sweep = a.sweep
    identity = {"model": dataclasses.asdict(model), "task": dataclasses.asdict(task), "sweep": sweep.to_dict(),
                "steps": a.steps, "record_every": a.record_every, "batch_size": a.batch_size,
                "observables": list(a.observables), "diverge_factor": diverge_factor, "betas": list(betas),
                "eps": eps, "x64": bool(jax.config.jax_enable_x64)}
    defined = {o.name: [o.doc, list(o.dims)] for o in map(_obs.get, a.observables) if not _obs.builtin(o.name)}
    if defined:  # a user-defined observable's description joins the key: describe a changed computation anew
        identity["observable_definitions"] = defined
    custom = {p: dataclasses.asdict(_param.get(p)) for p in sweep.param if p not in _param.NAMES}
    if custom:  # a custom table's exponents, not only its name, identify the computation
        identity["parametrizations"] = custom
    if schedule != "constant" or a.warmup_steps:  # absent from the key of constant runs, which stay resumable
        identity.update(schedule=schedule, warmup_steps=a.warmup_steps)
    if hvp != "tangent":  # likewise absent from the key of runs made before it existed
        identity.update(hvp=hvp)
    return identity


def _train_chunk(layout, prog: Program, data, sweep: Sweep, table: dict, groups, group: int, segments: int, *,
                 clock, bar) -> tuple[dict, np.ndarray]:
    """Train the groups of one chunk through ``layout``: ``(records[name] [members, record, ...], diverged_at)``.

    Each group is padded to ``group`` members (:func:`dynsim.padding.pad_group`) and runs ``segments`` segments; a
    group whose members have all diverged stops early, its remaining records NaN.
    """
    recs, div = {n: [] for n in prog.observables}, []
    for members in groups:
        placed = layout.place(prog, member_hyper(sweep, members, group, table=table), table["width"][members])
        with clock:
            state, rec0 = layout.init(prog, data, placed)
        parts = {n: [np.asarray(rec0[n])[:, None]] for n in prog.observables}
        for seg in range(segments):
            with clock:
                state, r = layout.advance(prog, data, state, placed, jnp.asarray(seg * prog.steps_per_segment))
            for n in prog.observables:
                parts[n].append(np.moveaxis(np.asarray(r[n]), 0, 1))
            bar.update(len(members) * prog.steps_per_segment)
            if not np.asarray(state.alive)[: len(members)].any():
                left = segments - seg - 1
                for n in prog.observables:
                    shape = parts[n][-1].shape
                    parts[n].append(np.full((shape[0], left * prog.records_per_segment, *shape[2:]), np.nan))
                bar.update(len(members) * left * prog.steps_per_segment)
                break
        for n in prog.observables:
            recs[n].append(np.concatenate(parts[n], axis=1)[: len(members)])
        div.append(np.asarray(state.diverged_at)[: len(members)])
    return {n: np.concatenate(v) for n, v in recs.items()}, np.concatenate(div)


def _with_twins(stored: np.ndarray, values: dict, div: np.ndarray, source: np.ndarray, copies: np.ndarray):
    """``stored`` members and their records, extended by the members that duplicate one of them (their twins, which
    train identically: :meth:`dynsim.Sweep.sources`) with their source's records."""
    twins = np.flatnonzero(copies & np.isin(source, stored))
    if not twins.size:
        return stored, values, div
    order = np.argsort(stored)
    at = order[np.searchsorted(stored, source[twins], sorter=order)]  # each twin's source, in stored
    return (np.concatenate([stored, twins]), {n: np.concatenate([v, v[at]]) for n, v in values.items()},
            np.concatenate([div, div[at]]))


def run(model: Model, task: Task, sweep: Sweep | dict, *, steps: int, record_every: int = 10, batch_size: int = 0,
        observables: Sequence[str] = ("loss", "test_loss"), out=None, progress: bool | None = None,
        group: int | None = None, buckets=None, slab_bytes: float | None = None,
        diverge_factor: float = 1e4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        chunk_members: int = 256, layout: str = "auto", sample_chunk: int = 0, schedule: str = "constant",
        warmup_steps: int = 0, hvp: str = "tangent", spec: dict | None = None, log=None,
        dry_run: bool = False) -> xr.Dataset:
    """Train every member of ``sweep`` and return its records.

    Args:
      model: model spec, e.g. ``dynsim.models.MLP(d_in=32, depth=3)``.
      task: task spec, e.g. ``dynsim.tasks.TeacherStudent(d_in=32, n_train=256)``; the compiled programs are keyed by
        ``task.program_task()`` (:class:`dynsim.tasks.Task`).
      sweep: the axes to sweep: a :class:`~dynsim.Sweep`, or a dict of its arguments.
      steps: training steps (a multiple of ``record_every``).
      record_every: steps between records; records are taken at steps ``0, k, 2k, ..., steps``.
      batch_size: samples per step; 0 is full batch. The same as the sweep's ``batch_size`` axis with this one
        value (give one or the other); to compare batch sizes, sweep that axis.
      observables: names from :func:`dynsim.observables.names` (a repeated name is recorded once). They replace the
        default ``("loss", "test_loss")``: list those too to keep them.
      out: a results directory. Each finished chunk is written there at once; a run started again with the same
        directory resumes, skipping what is stored. ``None`` keeps everything in memory.
      progress: ``None`` (default): a bar on a terminal or in Jupyter, else progress lines on stderr with an ETA;
        ``True`` the bar, ``False`` nothing (:func:`dynsim.progress.tracker`).
      group: force the number of members per vectorised step (default: chosen per backend and bucket, and halved
        where a group would not fit 80% of a device's memory; a forced group that does not fit is refused).
      buckets: force the width buckets, e.g. ``[[64, 128], [256]]``.
      slab_bytes: activation footprint per group targeted by the CPU group-size rule.
      diverge_factor: loss ratio (to ``max(loss_0, 1)``) above which a member counts as diverged.
      betas, eps: Adam constants.
      chunk_members: members per stored chunk (rounded to whole groups).
      layout: ``"vmap"`` (members padded to their bucket's width and vmapped), ``"packed"`` (two-layer networks:
        the units of members of any widths side by side) or ``"auto"``: packed where the model is two-layer, every
        observable reads only the outputs, ``group`` and ``buckets`` are not set, and the packed readout is cheap or
        the members small and there is one local device (:func:`choose_layout`); else vmap.
      sample_chunk: samples per gradient chunk within a step of the vmapped layout (0: the whole batch at once).
        Chunks bound a step's activation memory and change only the order of a sum (they do not make CPU steps
        faster: ``docs/measurements.md``).
      schedule: learning-rate schedule, ``"constant"`` or ``"cosine"`` (decaying to 0 at ``steps``); it multiplies
        every member's learning rate (see :func:`dynsim.optim.lr_schedule`). To give members different schedules,
        sweep them instead (``Sweep(schedule=[...])``, :func:`dynsim.optim.schedule_multipliers`; then this stays
        ``"constant"``).
      warmup_steps: steps of linear warmup from 0 before the schedule (the swept schedules' too).
      hvp: how the Hessian-vector products of the sharpness observables (``sharpness``,
        ``preconditioned_sharpness`` and their ``_err``) are computed: ``"tangent"``
        (forward-over-reverse, exact) or ``"fd"`` (a forward difference of gradients: about 70% of the cost per
        product, with a relative error near ``sqrt(eps)``; smooth activations only). See
        :func:`dynsim.observables.hessian_matvec`.
      spec: the full experiment spec, stored in the results' attributes.
      log: optional callable receiving one-line progress messages.
      dry_run: plan without training: check the arguments, plan as a run would, and return a
        :class:`dynsim.executor.RunPlan` (buckets, groups, chunks, memory per device; ``calibrate()`` adds time
        estimates) instead of results. Give no ``out``: nothing is read or written.
    Returns:
      ``xarray.Dataset`` with dims ``optimizer, param, width, lr, seed, init_scale, weight_decay, momentum, step``
      (``batch_size`` after ``width`` when the sweep holds several; plus the observables' own dims), a variable per
      observable, ``diverged_at``, and attributes ``spec`` and versions.

    Example::

        import dynsim as ds
        res = ds.run(ds.models.MLP(d_in=16), ds.tasks.TeacherStudent(d_in=16, n_train=128),
                     ds.Sweep(width=[64, 256], lr=[0.1, 0.3], seed=[0, 1]), steps=100)
        res["loss"].isel(step=-1).mean("seed")
    """
    if isinstance(task, Task) and task.loss is not None:  # the task's loss; None: the model's, unchanged
        model = WithLoss(model, task.loss)
    a = _arguments(model, task, sweep, steps=steps, record_every=record_every, batch_size=batch_size,
                   observables=observables, group=group, buckets=buckets, diverge_factor=diverge_factor,
                   betas=betas, eps=eps, chunk_members=chunk_members, layout=layout, sample_chunk=sample_chunk,
                   schedule=schedule, warmup_steps=warmup_steps, hvp=hvp)
    sweep, steps, layout = a.sweep, a.steps, a.layout
    intervals = steps // a.record_every
    n_rec = _segment_records(intervals, a.record_every)
    batch = a.batch_size or task.n_train
    program_task = task.program_task()

    def make_prog(bucket):
        return Program(model=model, task=program_task, optimizer=bucket.optimizer, n_pad=bucket.n_pad,
                       record_every=a.record_every, records_per_segment=n_rec, batch_size=bucket.batch_size,
                       observables=a.observables, diverge_factor=diverge_factor, betas=tuple(betas), eps=eps,
                       weight_decay=any(v != 0 for v in sweep.weight_decay),
                       momentum=any(v != 0 for v in sweep.momentum), layout=layout,
                       sample_chunk=a.sample_chunk if layout == "vmap" else 0, schedule=schedule,
                       warmup_steps=0 if sweep.traced_schedule else a.warmup_steps,  # else in the members' table
                       decay_steps=steps if schedule == "cosine" else 0, hvp=hvp, lr_table=sweep.traced_schedule)

    probe = make_prog(Bucket(sweep.optimizer[0], 1, np.zeros(1, int), 1, batch_size=sweep.batch_size[0]))
    variables = {o.name: {"dims": list(o.dims), "shape": list(o.shape(probe)), "description": o.doc}
                 for o in map(_obs.get, a.observables)}
    identity = _identity(model, task, a, diverge_factor=diverge_factor, betas=betas, eps=eps, schedule=schedule,
                         hvp=hvp)
    record_steps = (np.arange(intervals + 1) * a.record_every).tolist()
    meta = {"axes": list(sweep.dims), "coords": sweep.to_dict(), "steps": record_steps, "variables": variables,
            "key": _spec_key(identity), "spec": json.dumps(spec if spec is not None else identity, default=str),
            **versions()}

    check_out(out)  # several processes (dynsim.executor._distributed) share their chunks through `out`
    agree("the spec (the key of the results directory)", meta["key"], "start every process with the same spec")
    store = _io.Store(out, meta) if out is not None else _MemoryStore(meta)
    done = store.done()
    source = sweep.sources()
    copies = source != np.arange(sweep.size)  # trained once, by their source member
    planned = dict(steps=steps, batch=batch, group=a.group, buckets=buckets, slab_bytes=slab_bytes, done=copies)
    all_buckets = plan(sweep, model, layout=layout, **planned)
    if a.auto and layout == "packed" and not packs_fit(all_buckets, make_prog):
        layout = "vmap"  # the packs chosen for speed would not fit the device; vmapped groups can shrink to fit
        all_buckets = plan(sweep, model, layout=layout, **planned)
    if a.group is None:  # a group the caller set is kept, and refused below if it cannot fit
        all_buckets = fit_groups(all_buckets, make_prog)
    # Chunks and groups come from the plan of the full sweep, so an interrupted run resumed with the same settings
    # recomputes exactly the missing chunks; with other settings only groups holding a missing member run, and only
    # missing members are written.
    trained = done.copy()  # a source member counts as done once it and all its copies are stored
    np.logical_and.at(trained, source, done)
    work = share([(b, c) for b in all_buckets for c in chunks(b, a.chunk_members)],  # this process's order
                 lambda w: f"{w[0].n_pad} {w[0].group} {_io.chunk_id(np.concatenate(w[1]))}")
    work = [(b, c) for b, c in work if not trained[np.concatenate(c)].all()]
    if dry_run:
        return RunPlan.of(task, sweep, layout, all_buckets, make_prog, chunk_members=a.chunk_members, steps=steps,
                          copies=copies, layouts=LAYOUTS)
    data = task.make()
    timing = {"compile_s": 0.0, "run_s": 0.0, "members": int(sum(len(g) for _, c in work for g in c))}
    t_start = time.perf_counter()
    bar = _progress.tracker(timing["members"] * steps, progress, "training", "member-step")
    clock = CompileClock()
    table = member_table(sweep, steps, a.warmup_steps)
    copy_ids = np.flatnonzero(copies)  # a chunk stores its members and their copies
    members_of = lambda item: np.concatenate([*item[1], copy_ids[np.isin(source[copy_ids], np.concatenate(item[1]))]])
    for bucket, chunk in store.claim_each(work, members_of, log=log):  # skips chunks other runs into `out` compute
        prog = make_prog(bucket)
        check_memory(device_share(prog, bucket.group), bucket)
        groups = [members for members in chunk if not trained[members].all()]
        values, div = _train_chunk(LAYOUTS[prog.layout], prog, data, sweep, table, groups, bucket.group,
                                   intervals // n_rec, clock=clock, bar=bar)
        stored, values, div = _with_twins(np.concatenate(groups), values, div, source, copies)
        new = ~done[stored]
        store.write_chunk(stored[new], {n: v[new] for n, v in values.items()}, div[new])
        if log is not None:
            log(f"bucket n_pad={bucket.n_pad} ({bucket.optimizer}, batch {bucket.batch_size or batch}): stored "
                f"{len(stored)} members")
    bar.close()
    timing["compile_s"] = clock.total
    timing["run_s"] = time.perf_counter() - t_start
    return finish(store, {"timing": json.dumps(timing), "layout": layout,
                          "buckets": json.dumps([[b.optimizer, b.n_pad, len(b.members), b.group]
                                                 + ([b.batch_size] if len(sweep.batch_size) > 1 else [])
                                                 for b in all_buckets])})


class CompileClock:
    """Sums JAX's own compile-phase durations (trace, lowering, backend compile) inside its ``with`` blocks.

    Uses the public :mod:`jax.monitoring` events, so the figure excludes execution and dispatch. A clock
    accumulates over all its blocks; clocks may nest (the benchmark times the engine's own clock's work).

    Example::

        with CompileClock() as clock:
            dynsim.run(...)
        clock.total  # seconds spent compiling
    """

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")
    _listening: list = []  # whether the process-wide listener is registered
    _current: list = []  # clocks inside a `with` block

    def __init__(self):
        self.total = 0.0
        if not CompileClock._listening:
            jax.monitoring.register_event_duration_secs_listener(CompileClock._dispatch)
            CompileClock._listening.append(True)

    @staticmethod
    def _dispatch(event, duration, **_):
        if event in CompileClock.EVENTS:
            for clock in CompileClock._current:
                clock.total += duration

    def __enter__(self):
        CompileClock._current.append(self)
        return self

    def __exit__(self, *exc):
        CompileClock._current.remove(self)


class _MemoryStore:
    """In-memory stand-in for :class:`dynsim.io.Store` (same interface, nothing written)."""

    def __init__(self, meta):
        self.meta = meta
        self.size = int(np.prod([len(meta["coords"][a]) for a in meta["axes"]]))
        self._chunks = []

    def done(self):
        return np.zeros(self.size, bool)

    def claim_each(self, items, members, log=None):
        return iter(items)  # nothing is shared: every chunk is this run's

    def write_chunk(self, members, variables, diverged_at):
        self._chunks.append((np.asarray(members), variables, np.asarray(diverged_at)))

    def finalize(self, attrs=None):
        ds = _io.grid_dataset(self.meta, self._chunks)
        ds.attrs.update(attrs or {})
        return ds
