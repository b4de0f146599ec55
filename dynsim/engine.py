"""The sweep executor: plan, compile, execute, store.

:func:`run` trains every member of a :class:`~dynsim.sweep.Sweep` and returns an ``xarray.Dataset``. Each stage is
also a plain function: :func:`dynsim.sweep.plan` makes the buckets, :func:`member_hyper` builds the traced
numbers of a group, :func:`dynsim.train.init_group` / :func:`dynsim.train.run_segment` run it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from . import io as _io
from . import obs as _obs
from . import packed as _packed
from . import param as _param
from . import progress as _progress
from .models import Model
from .obs_sharpness import HVP_METHODS
from .sweep import AXES, Bucket, Sweep, balanced, plan
from .tasks import Task
from .train import SCHEDULES, Hyper, Program, init_group, memory_estimate, run_segment

__all__ = ["run", "member_hyper", "member_table", "chunks", "versions", "InputError", "CompileClock"]


class InputError(ValueError):
    """An argument of :func:`run` that cannot work; the message is one sentence naming it."""


def versions() -> dict:
    import optax

    from . import __version__

    return {"dynsim": __version__, "jax": jax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "backend": jax.default_backend(), "device_count": jax.device_count(),
            "devices": str(jax.devices()[0].device_kind), "x64": bool(jax.config.jax_enable_x64)}


def member_hyper(sweep: Sweep, members: np.ndarray, group: int | None = None, *, table: dict | None = None) -> Hyper:
    """Traced numbers of ``members`` (flat indices), padded to ``group`` by repeating the last member.

    ``table`` is :func:`member_table` of ``sweep``, computed once per run instead of once per group.
    """
    members = np.asarray(members)
    if group is not None and len(members) < group:
        members = np.concatenate([members, np.full(group - len(members), members[-1])])
    table = table if table is not None else member_table(sweep)
    dtype = jnp.result_type(float)
    f = lambda name: jnp.asarray(table[name][members], dtype)
    return Hyper(width=f("width"), lr=f("lr"), momentum=f("momentum"), weight_decay=f("weight_decay"),
                 init_scale=f("init_scale"), abc=jnp.asarray(table["abc"][members], dtype),
                 key=jnp.asarray(table["key"][members]))


def member_table(sweep: Sweep) -> dict[str, np.ndarray]:
    """The sweep's member table with numeric columns, each member's parametrization exponents (``abc``) and the
    key data of its seed (``key``)."""
    table = sweep.members()
    out = {name: np.asarray(table[name], np.float64) for name in ("width", "lr", "momentum", "weight_decay",
                                                                   "init_scale")}
    tables = {(p, o): _param.get(p).table(o) for p in sweep.param for o in sweep.optimizer}
    out["abc"] = np.stack([tables[(p, o)] for p, o in zip(table["param"], table["optimizer"])])
    seed_keys = {s: np.asarray(jax.random.key_data(jax.random.key(s))) for s in sweep.seed}
    out["key"] = np.stack([seed_keys[int(s)] for s in table["seed"]])
    return out


def chunks(bucket: Bucket, max_members: int) -> list[list[np.ndarray]]:
    """Split a bucket into storage chunks: lists of whole groups, about ``max_members`` members each."""
    out, current, size = [], [], 0
    for group in bucket.member_groups():
        if current and size + len(group) > max_members:
            out.append(current)
            current, size = [], 0
        current.append(group)
        size += len(group)
    if current:
        out.append(current)
    return out


def _check_objects(model, task, sweep) -> Sweep:
    """The sweep (a ``Sweep``, or a dict of its axes), after checking that model and task are what they claim."""
    if not (hasattr(model, "init") and hasattr(model, "apply") and hasattr(model, "d_in")):
        raise InputError(f"model must be a model spec such as dynsim.models.MLP(...), got {type(model).__name__}.")
    if not (hasattr(task, "make") and hasattr(task, "batch") and hasattr(task, "validate_batch_size")):
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


def run(model: Model, task: Task, sweep: Sweep | dict, *, steps: int, record_every: int = 10, batch_size: int = 0,
        observables: Sequence[str] = ("loss", "test_loss"), out=None, progress: bool | None = None,
        group: int | None = None, buckets=None, slab_bytes: float | None = None,
        diverge_factor: float = 1e4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        chunk_members: int = 256, layout: str = "auto", sample_chunk: int = 0, schedule: str = "constant",
        warmup_steps: int = 0, hvp: str = "tangent", spec: dict | None = None, log=None) -> xr.Dataset:
    """Train every member of ``sweep`` and return its records.

    Args:
      model: model spec, e.g. ``dynsim.models.MLP(d_in=32, depth=3)``.
      task: task spec, e.g. ``dynsim.tasks.TeacherStudent(d_in=32, n_train=256)``. A task whose settings only
        shape the arrays of ``task.make()`` may define ``task.program_task()``, the task the compiled programs are
        keyed by, so that runs differing only in those settings share programs.
      sweep: the axes to sweep: a :class:`~dynsim.sweep.Sweep`, or a dict of its arguments.
      steps: training steps (a multiple of ``record_every``).
      record_every: steps between records; records are taken at steps ``0, k, 2k, ..., steps``.
      batch_size: samples per step; 0 is full batch.
      observables: names from :func:`dynsim.obs.names` (a repeated name is recorded once). They replace the
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
        the units of members of any widths side by side, see :mod:`dynsim.packed`) or ``"auto"``: packed where the
        model is two-layer, every observable is available packed, ``group`` and ``buckets`` are not set, and the
        packed readout is cheap or the members small and there is one local device (see ``_choose_layout``); else
        vmap.
      sample_chunk: samples per gradient chunk within a step of the vmapped layout (0: the whole batch at once).
        Chunks bound a step's activation memory and change only the order of a sum. They do not make CPU steps
        faster: on shape (i) of ``benchmarks/throughput.py`` (P = 1024) whole batches took 48.7 s against
        50.9-52.1 s in chunks of 128 or 256 samples on 2 cores.
      schedule: learning-rate schedule, ``"constant"`` or ``"cosine"`` (decaying to 0 at ``steps``); it multiplies
        every member's learning rate (see :func:`dynsim.train.lr_schedule`).
      warmup_steps: steps of linear warmup from 0 before the schedule.
      hvp: how the Hessian-vector products of the sharpness observables (``sharpness``,
        ``preconditioned_sharpness`` and their ``_err``) are computed: ``"tangent"``
        (forward-over-reverse, exact) or ``"fd"`` (a forward difference of gradients: about 70% of the cost per
        product, with a relative error near ``sqrt(eps)``; smooth activations only). See
        :func:`dynsim.obs_sharpness.hessian_matvec`.
      spec: the full experiment spec, stored in the results' attributes.
      log: optional callable receiving one-line progress messages.
    Returns:
      ``xarray.Dataset`` with dims ``optimizer, param, width, lr, seed, init_scale, weight_decay, momentum, step``
      (plus the observables' own dims), a variable per observable, ``diverged_at``, and attributes ``spec`` and
      versions.

    Example::

        import dynsim as ds
        res = ds.run(ds.models.MLP(d_in=16), ds.tasks.TeacherStudent(d_in=16, n_train=128),
                     ds.Sweep(width=[64, 256], lr=[0.1, 0.3], seed=[0, 1]), steps=100)
        res["loss"].isel(step=-1).mean("seed")
    """
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
    try:
        task.validate_batch_size(batch_size)
    except ValueError as e:
        raise InputError(str(e)) from None
    if model.d_in != task.d_in or model.d_out != task.d_out:
        raise InputError(f"model d_in/d_out ({model.d_in}, {model.d_out}) must match the task's "
                         f"({task.d_in}, {task.d_out}).")
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}.")
    if not 0 <= warmup_steps < steps:
        raise InputError(f"warmup_steps ({warmup_steps}) must lie in [0, steps) = [0, {steps}).")
    if hvp not in HVP_METHODS:
        raise InputError(f"hvp must be one of {', '.join(HVP_METHODS)}, got {hvp!r}.")
    if hvp == "fd" and not getattr(model, "smooth", False):
        raise InputError("hvp 'fd' needs a smooth model (tanh, erf or linear activations): a difference of "
                         "gradients jumps where a ReLU unit switches; use hvp 'tangent'.")
    observables = tuple(dict.fromkeys((observables,) if isinstance(observables, str) else observables))
    obs_defs = []
    for name in observables:
        try:
            o = _obs.get(name)
        except ValueError as e:
            raise InputError(str(e)) from None
        if o.applies is not None and not o.applies(model):
            raise InputError(f"observable {name!r} applies to {o.applies_to}, not to {type(model).__name__}.")
        obs_defs.append(o)
    if not getattr(model, "parametrized", True) and len(sweep.param) > 1:
        raise InputError(f"{type(model).__name__} does not use a parametrization, so sweeping param over "
                         f"{list(sweep.param)} would train identical copies; give one value.")
    if layout == "auto" and (group is not None or buckets is not None):
        layout = "vmap"  # group sizes and width buckets are settings of the vmapped layout
    auto = layout == "auto"
    layout = _choose_layout(layout, model, observables, sweep, batch_size or task.n_train)
    intervals = steps // record_every
    record_steps = np.arange(intervals + 1) * record_every
    n_rec = _segment_records(intervals, record_every)
    batch = batch_size or task.n_train
    if sample_chunk < 0 or (sample_chunk and batch % sample_chunk):
        raise InputError(f"sample_chunk ({sample_chunk}) must be 0 or divide the batch ({batch}).")

    program_task = task.program_task() if hasattr(task, "program_task") else task

    def make_prog(bucket):
        return Program(model=model, task=program_task, optimizer=bucket.optimizer, n_pad=bucket.n_pad,
                       record_every=record_every, records_per_segment=n_rec, batch_size=batch_size,
                       observables=observables, diverge_factor=diverge_factor, betas=tuple(betas), eps=eps,
                       weight_decay=any(v != 0 for v in sweep.weight_decay),
                       momentum=any(v != 0 for v in sweep.momentum), layout=layout,
                       sample_chunk=sample_chunk if layout == "vmap" else 0, schedule=schedule,
                       warmup_steps=warmup_steps, decay_steps=steps if schedule == "cosine" else 0, hvp=hvp)

    probe = make_prog(Bucket(sweep.optimizer[0], 1, np.zeros(1, int), 1))
    variables = {o.name: {"dims": list(o.dims), "shape": list(o.shape(probe)), "description": o.doc}
                 for o in obs_defs}
    identity = {"model": dataclasses.asdict(model), "task": dataclasses.asdict(task), "sweep": sweep.to_dict(),
                "steps": steps, "record_every": record_every, "batch_size": batch_size,
                "observables": list(observables), "diverge_factor": diverge_factor, "betas": list(betas),
                "eps": eps, "x64": bool(jax.config.jax_enable_x64)}
    defined = {o.name: [o.doc, list(o.dims)] for o in obs_defs if not _obs.builtin(o.name)}
    if defined:  # a user-defined observable's description joins the key: describe a changed computation anew
        identity["observable_definitions"] = defined
    custom = {p: dataclasses.asdict(_param.get(p)) for p in sweep.param if p not in _param.NAMES}
    if custom:  # a custom table's exponents, not only its name, identify the computation
        identity["parametrizations"] = custom
    if schedule != "constant" or warmup_steps:  # absent from the key of constant runs, which stay resumable
        identity.update(schedule=schedule, warmup_steps=warmup_steps)
    if hvp != "tangent":  # likewise absent from the key of runs made before it existed
        identity.update(hvp=hvp)
    meta = {"axes": list(AXES), "coords": sweep.to_dict(), "steps": record_steps.tolist(), "variables": variables,
            "key": _spec_key(identity), "spec": json.dumps(spec if spec is not None else identity, default=str),
            **versions()}

    store = _io.Store(out, meta) if out is not None else _MemoryStore(meta)
    done = store.done()
    source = sweep.sources()
    copies = source != np.arange(sweep.size)  # trained once, by their source member
    all_buckets = plan(sweep, model, steps=steps, batch=batch, group=group, buckets=buckets, slab_bytes=slab_bytes,
                       layout=layout, done=copies)
    if auto and layout == "packed" and not _packs_fit(all_buckets, make_prog):
        layout = "vmap"  # the packs chosen for speed would not fit the device; vmapped groups can shrink to fit
        all_buckets = plan(sweep, model, steps=steps, batch=batch, group=group, buckets=buckets,
                           slab_bytes=slab_bytes, layout=layout, done=copies)
    if group is None:  # a group the caller set is kept, and refused below if it cannot fit
        all_buckets = _fit_groups(all_buckets, make_prog)
    # Chunks and groups come from the plan of the full sweep, so an interrupted run resumed with the same settings
    # recomputes exactly the missing chunks; with other settings only groups holding a missing member run, and only
    # missing members are written.
    trained = done.copy()  # a source member counts as done once it and all its copies are stored
    np.logical_and.at(trained, source, done)
    work = [(b, c) for b in all_buckets for c in chunks(b, chunk_members) if not trained[np.concatenate(c)].all()]
    data = task.make()
    timing = {"compile_s": 0.0, "run_s": 0.0, "members": int(sum(len(g) for _, c in work for g in c))}
    t_start = time.perf_counter()
    bar = _progress.tracker(timing["members"] * steps, progress, "training", "member-step")
    clock = CompileClock()
    table = member_table(sweep)
    copy_ids = np.flatnonzero(copies)  # a chunk stores its members and their copies
    members_of = lambda item: np.concatenate([*item[1], copy_ids[np.isin(source[copy_ids], np.concatenate(item[1]))]])
    for bucket, chunk in store.claim_each(work, members_of, log=log):  # skips chunks other runs into `out` compute
        prog = make_prog(bucket)
        _check_memory(_device_share(prog, bucket.group), bucket)
        recs = {n: [] for n in observables}
        div = []
        chunk = [members for members in chunk if not trained[members].all()]
        for members in chunk:
            hyper = _shard(member_hyper(sweep, members, bucket.group, table=table), prog)
            if prog.layout == "packed":
                pack = _packed.pack_arrays(table["width"][members].astype(int), bucket.n_pad, bucket.group)
                init = lambda: _packed.init_packed(prog, data, hyper, pack)
                advance = lambda st, t0: _packed.run_packed(prog, data, st, hyper, pack, t0)
            else:
                init = lambda: init_group(prog, data, hyper)
                advance = lambda st, t0: run_segment(prog, data, st, hyper, t0)
            with clock:
                state, rec0 = init()
            parts = {n: [np.asarray(rec0[n])[:, None]] for n in observables}
            for seg in range(intervals // n_rec):
                with clock:
                    state, r = advance(state, jnp.asarray(seg * n_rec * record_every))
                for n in observables:
                    parts[n].append(np.moveaxis(np.asarray(r[n]), 0, 1))
                bar.update(len(members) * n_rec * record_every)
                if not np.asarray(state.alive)[: len(members)].any():
                    left = intervals // n_rec - seg - 1
                    for n in observables:
                        shape = parts[n][-1].shape
                        parts[n].append(np.full((shape[0], left * n_rec, *shape[2:]), np.nan))
                    bar.update(len(members) * left * n_rec * record_every)
                    break
            for n in observables:
                recs[n].append(np.concatenate(parts[n], axis=1)[: len(members)])
            div.append(np.asarray(state.diverged_at)[: len(members)])
        stored = np.concatenate(chunk)
        values = {n: np.concatenate(v) for n, v in recs.items()}
        div = np.concatenate(div)
        twins = np.flatnonzero(copies & np.isin(source, stored))
        if twins.size:  # members that duplicate one of these get its records
            order = np.argsort(stored)
            at = order[np.searchsorted(stored, source[twins], sorter=order)]  # each twin's source, in stored
            stored = np.concatenate([stored, twins])
            values = {n: np.concatenate([v, v[at]]) for n, v in values.items()}
            div = np.concatenate([div, div[at]])
        new = ~done[stored]
        store.write_chunk(stored[new], {n: v[new] for n, v in values.items()}, div[new])
        if log is not None:
            log(f"bucket n_pad={bucket.n_pad} ({bucket.optimizer}): stored {len(stored)} members")
    bar.close()
    timing["compile_s"] = clock.total
    timing["run_s"] = time.perf_counter() - t_start
    return store.finalize({"timing": json.dumps(timing), "layout": layout,
                           "buckets": json.dumps([[b.optimizer, b.n_pad, len(b.members), b.group]
                                                  for b in all_buckets])})


def _shard(hyper: Hyper, prog) -> Hyper:
    """Shard a vmapped group's member axis over the local devices (state follows through jit); no-op on one."""
    devices = jax.local_devices()
    if len(devices) == 1 or prog.layout != "vmap":
        return hyper
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    return jax.tree.map(lambda a: jax.device_put(a, spec), hyper)


def _choose_layout(layout: str, model, observables, sweep: Sweep, batch: int) -> str:
    """Pick the layout. ``auto`` packs two-layer sweeps whose members are small or few per pack (or vmaps when the
    caller set ``group`` or ``buckets``, which belong to the vmapped layout).

    Packing compiles one program instead of one per width bucket and wastes nothing on padding, which wins when
    members are small (``batch * max_width * d_in <= 2**22`` multiply-adds per step) or a pack holds few members
    for its input dimension (``4 * M * d_out <= d_in``). Measured with ``benchmarks/throughput.py`` on 2 CPU cores:
    packed is 2.8x the per-width loop on the overhead-bound shape and 1.9x on the wide-spread one; on the
    FLOP-bound shape (64 members of each of 16 widths, P = 1024, d = 64) vmapped groups in cache-sized slabs are
    faster (47 s against 58 s packed), and the rule keeps them. With several local devices ``auto`` vmaps: only
    vmapped groups are sharded over devices (:func:`_shard`), and a pack would run on one.
    """
    packable = getattr(model, "packable", False) and set(observables) <= _packed.SUPPORTED_OBSERVABLES
    if layout == "auto":
        if not packable or jax.local_device_count() > 1:
            return "vmap"
        widths = np.asarray(sweep.width)
        n_members = sweep.size // max(len(sweep.optimizer), 1)
        _, slots = _packed.choose_capacity(widths, model.d_in, batch)
        slots = min(slots, n_members)
        small = batch * widths.max() * model.d_in <= 2**22
        cheap_readout = 4 * slots * model.d_out <= model.d_in
        return "packed" if (small or cheap_readout) else "vmap"
    if layout == "packed" and not packable:
        raise InputError("the packed layout needs a two-layer MLP and observables among "
                         f"{', '.join(sorted(_packed.SUPPORTED_OBSERVABLES))}.")
    if layout not in ("vmap", "packed"):
        raise InputError(f"layout must be 'auto', 'vmap' or 'packed', got {layout!r}.")
    return layout


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


def _memory_limit() -> int | None:
    """Bytes the first device may use: its allocator's limit on an accelerator, the machine's memory on CPU."""
    try:
        stats = jax.devices()[0].memory_stats()
        if stats and "bytes_limit" in stats:
            return int(stats["bytes_limit"])
    except Exception:  # backends without memory stats (CPU)
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _device_share(prog: Program, group: int, n_dev: int | None = None) -> int:
    """Bytes one device holds of a group: a vmapped group's members are split over the ``n_dev`` local devices."""
    n_dev = (n_dev or jax.local_device_count()) if prog.layout == "vmap" else 1
    return memory_estimate(prog, -(-group // n_dev))


def _fit_groups(buckets: list[Bucket], make_prog, n_dev: int | None = None) -> list[Bucket]:
    """Vmapped buckets whose groups would need more than 80% of a device's memory (:func:`memory_estimate` of the
    group's share on each of the ``n_dev`` local devices) get smaller groups: on accelerators a group is a whole
    bucket by default, which wide members with many parameters may not fit. A shrunk group is balanced over the
    bucket and stays a multiple of ``n_dev`` (the member axis is sharded over the devices). Deterministic for a
    machine, so a resumed run plans the same chunks. Packs are left alone."""
    limit = _memory_limit()
    if limit is None:
        return buckets
    n_dev = n_dev or jax.local_device_count()
    out = []
    for b in buckets:
        group = b.group
        if b.packs is None:
            prog = make_prog(b)
            while group > n_dev and _device_share(prog, group, n_dev) > 0.8 * limit:
                group = -(-group // 2)
            if group < b.group:
                group = balanced(len(b.members), group, n_dev)
        out.append(b if group == b.group else dataclasses.replace(b, group=group))
    return out


def _packs_fit(buckets: list[Bucket], make_prog) -> bool:
    """Whether every pack's program fits 80% of the device's memory (:func:`memory_estimate`)."""
    limit = _memory_limit()
    return limit is None or all(memory_estimate(make_prog(b), b.group) <= 0.8 * limit
                                for b in buckets if b.packs is not None)


def _check_memory(need: int, bucket: Bucket) -> None:
    limit = _memory_limit()
    if limit is None:
        return
    if need > 0.8 * limit:
        what = (f"a pack of {bucket.n_pad} units" if bucket.packs is not None else
                f"a group of {bucket.group} member{'s' if bucket.group > 1 else ''} at width {bucket.n_pad}")
        advice = ("use layout='vmap' with a small group" if bucket.packs is not None else
                  "pass a smaller group" if bucket.group > 1 else "use a smaller width or batch")
        raise MemoryError(f"{what} needs about {need / 2**30:.1f} GiB, more than 80% of the "
                          f"{limit / 2**30:.1f} GiB available; {advice}.")


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
