"""From a name or a spec file to a finished experiment: the spec (:func:`resolve`), the objects it describes
(:func:`build`), the runs, the analysis, ``summary.json`` and ``report.md`` (:func:`run`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable

import numpy as np
import xarray as xr

from .. import executor as _executor
from .. import io as _io
from .. import spec as _spec
from ..models import MLP, Linearized, Superposition, random_feature_model, uv
from ..tasks import SparseFeatures, TeacherStudent
from ._contract import Experiment, engine_required
from ._report import report

__all__ = ["resolve", "build", "task_variants", "run", "spec_error", "merge"]

_TASKS = {"teacher_student": TeacherStudent, "sparse_features": SparseFeatures}


def resolve(get: Callable[[str], Experiment], name_or_path: str, *, quick: bool = False, sets=()
            ) -> tuple[Experiment, dict]:
    """The experiment and its validated spec from a name or a TOML file, ``--quick`` and ``--set`` overrides.

    Layers, later ones winning: the experiment's defaults, its quick size (``--quick``), the spec file, the spec
    file's own ``[quick]`` table (``--quick``), ``--set``. Validation runs once, on the result. ``--quick`` with a
    file that overrides the experiment's quick size and has no ``[quick]`` table is refused rather than run at full
    size.
    """
    path = pathlib.Path(name_or_path)
    user, user_quick = {}, None
    if name_or_path.endswith(".toml") or path.is_file():
        user = _spec.load(path)
        user_quick = user.pop("quick", None)
        if user_quick is not None and not isinstance(user_quick, dict):
            raise _spec.SpecError("spec key 'quick' must be a table of the overrides --quick applies.")
        name = user.get("experiment", "sweep")
        if not isinstance(name, str):
            raise _spec.SpecError(f"spec key 'experiment' must be an experiment name, got {name!r}.")
        exp = get(name)
    else:
        exp = get(name_or_path)
    for item in sets:
        if item.partition("=")[0].strip() == "experiment":
            raise _spec.SpecError("spec key 'experiment' cannot be changed with --set; name the experiment or "
                                  "put it in the spec file.")
    spec = _spec.merge(exp.defaults, exp.quick) if quick else _spec.merge(exp.defaults, {})
    spec = _spec.merge(spec, user)
    if quick:  # the file's sizes hide the experiment's quick ones unless its own [quick] table sets them again
        hidden = sorted(_leaf_keys(exp.quick) & _leaf_keys(user) - _leaf_keys(user_quick or {}))
        if hidden:
            raise _spec.SpecError(f"--quick cannot shrink this spec file, which sets {', '.join(hidden)} itself; "
                                  "give them smaller values in a [quick] table of the file.")
    if quick and user_quick:
        spec = _spec.merge(spec, user_quick)
    spec = _spec.apply_sets(spec, sets)
    spec["experiment"] = exp.name
    required = exp.required + (engine_required(spec) if exp.execute is None else ())
    spec = _spec.validate(spec, required=required)
    exp.requires.check(spec, exp.name)
    if exp.validate is not None:
        exp.validate(spec)
    return exp, spec


def _leaf_keys(spec: dict, prefix: str = "") -> set[str]:
    """Dotted names of a spec's values (a sweep axis counts as one value)."""
    keys = set()
    for k, v in spec.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and prefix != "sweep.":
            keys |= _leaf_keys(v, name + ".")
        else:
            keys.add(name)
    return keys


def build(spec: dict):
    """Model, task, sweep and run options from a validated spec (task axes such as ``sweep.alpha`` are left to
    :func:`task_variants`)."""
    m = dict(spec.get("model", {}))
    t = dict(spec.get("task", {}))
    task_kind = t.pop("kind", "teacher_student")
    kind = m.pop("kind", "mlp")
    m.pop("d_out", None)  # the task's output dimension is the model's
    fields = {f.name for f in dataclasses.fields(_TASKS[task_kind])}
    for key in t:
        if key not in fields:
            raise _spec.SpecError(f"spec key 'task.{key}' does not apply to task.kind = {task_kind!r}.")
    sweep_axes = {k: v for k, v in spec["sweep"].items() if k not in _spec.TASK_AXES}
    t.update({k: v[0] for k, v in spec["sweep"].items() if k in _spec.TASK_AXES})  # the task of the first variant
    try:
        task = _TASKS[task_kind](**t)
        if kind == "superposition":
            model = Superposition(n_features=task.d_in, **m)
        elif kind == "uv":
            model = uv(task.d_in)
        elif kind == "random_features":
            model = random_feature_model(task.d_in, m.get("act", "relu"), task.d_out)
        else:
            model = MLP(d_in=task.d_in, d_out=task.d_out, **m)
            model = Linearized(base=model) if kind == "linearized" else model
        sweep = _executor.Sweep(**sweep_axes)
    except (TypeError, ValueError) as e:
        raise _spec.SpecError(str(e)) from None
    train = dict(spec.get("train", {}))
    opts = {"steps": train.pop("steps"), "record_every": train.pop("record_every", 10),
            "batch_size": train.pop("batch_size", 0), "observables": tuple(train.pop("observables",
                                                                                   ["loss", "test_loss"])),
            "diverge_factor": train.pop("diverge_factor", 1e4), "betas": tuple(train.pop("betas", (0.9, 0.999))),
            "eps": train.pop("eps", 1e-8), "group": train.pop("group", None),
            "chunk_members": train.pop("chunk_members", 256), "layout": train.pop("layout", "auto"),
            "schedule": train.pop("schedule", "constant"), "warmup_steps": train.pop("warmup_steps", 0),
            "hvp": train.pop("hvp", "tangent")}
    return model, task, sweep, opts


def task_variants(spec: dict, task) -> list[tuple[dict, object]]:
    """One ``(coords, task)`` per point of the spec's task axes (``sweep.alpha``); ``[]`` when it has none.

    A task axis changes the data that all members of an engine run share, so each value is a separate run.
    """
    axes = {k: v for k, v in spec.get("sweep", {}).items() if k in _spec.TASK_AXES}
    if not axes:
        return []
    grids = np.meshgrid(*[np.arange(len(v)) for v in axes.values()], indexing="ij")
    out = []
    for point in zip(*[g.ravel() for g in grids]):
        coords = {k: v[i] for (k, v), i in zip(axes.items(), point)}
        try:
            out.append((coords, dataclasses.replace(task, **coords)))
        except ValueError as e:
            raise _spec.SpecError(str(e)) from None
    return out


def _run_variants(model, variants, sweep, out: pathlib.Path, progress, spec, opts, log) -> xr.Dataset:
    """Run each task variant into its own results directory and concatenate them along the task axes.

    The combined grid, with the engine's ``width`` renamed to the model's ``width_name``, is stored in
    ``out/results.nc``; each variant's directory resumes on its own.
    """
    parts, timing = [], {}
    for coords, task in variants:
        sub = out / "_".join(f"{k}={v:g}" for k, v in coords.items())
        log(f"dynsim: {', '.join(f'{k} = {v:g}' for k, v in coords.items())} -> {sub}")
        ds = _executor.run(model, task, sweep, out=sub, progress=progress, spec=spec, **opts)
        for k, v in json.loads(ds.attrs.get("timing", "{}")).items():
            timing[k] = timing.get(k, 0) + v
        parts.append(ds.expand_dims({k: [v] for k, v in coords.items()}))
    combined = xr.combine_by_coords(parts, combine_attrs="drop_conflicts")
    combined.attrs["timing"] = json.dumps(timing)
    combined = combined.rename(width=model.width_name) if model.width_name != "width" else combined
    _io.write_results(combined, out / "results.nc")
    return combined


def run(exp: Experiment, spec: dict, *, out=None, quick: bool = False, progress: bool | None = None, log=print):
    """Run experiment ``exp`` on its resolved ``spec`` end to end and write its results, summary, report and figures
    into ``out``.

    Returns:
      ``(out_dir, summary_dict)``.
    """
    if exp.execute is not None:
        out = pathlib.Path(out or f"runs/{exp.name}{'-quick' if quick else ''}")
        out.mkdir(parents=True, exist_ok=True)
        log(f"dynsim: {exp.name} -> {out}")
        t0 = time.perf_counter()
        ds = exp.execute(spec, out, progress)
        return _finish(exp, spec, ds, out, t0, time.perf_counter() - t0)
    model, task, sweep, opts = build(spec)
    if "hypergrad" in spec:
        return _run_hypergrad(exp, spec, model, task, sweep, opts, out, quick, log)
    try:  # reject a layout the model cannot use before anything is written
        _executor.choose_layout(opts["layout"], model, opts["observables"], sweep, opts["batch_size"] or task.n_train)
    except _executor.InputError as e:
        raise _spec.SpecError(str(e)) from None
    out = pathlib.Path(out or f"runs/{exp.name}{'-quick' if quick else ''}")
    variants = task_variants(spec, task)  # every task variant is valid before anything is written
    out.mkdir(parents=True, exist_ok=True)
    log(f"dynsim: {exp.name}: {sweep.size * max(len(variants), 1)} members, {opts['steps']} steps -> {out}")
    stored = len(list(out.glob("chunks/*.nc"))) + len(list(out.glob("*/chunks/*.nc")))
    if stored:
        log(f"dynsim: {stored} stored chunks found in {out}: members stored with the same spec are kept")
    t0 = time.perf_counter()
    try:
        if variants:
            ds = _run_variants(model, variants, sweep, out, progress, spec, opts, log)
        else:
            ds = _executor.run(model, task, sweep, out=out, progress=progress, spec=spec, **opts)
    except (_io.MetaMismatch, _executor.InputError) as e:  # inputs the engine rejects
        raise spec_error(e) from None
    return _finish(exp, spec, ds, out, t0, time.perf_counter() - t0)


def _run_hypergrad(exp: Experiment, spec: dict, model, task, sweep, opts, out, quick: bool, log):
    """A spec with a ``[hypergrad]`` table: its members' objective and derivatives (:func:`dynsim.hypergrad`) in
    ``out/results.nc``, with the spec in its attributes, then the experiment's analysis. Nothing is resumed: the
    derivatives of a member come from one pass over all its steps, so a rerun computes them again."""
    out = pathlib.Path(out or f"runs/{exp.name}{'-quick' if quick else ''}")
    if (out / "meta.json").exists():
        raise _spec.SpecError(f"{out} holds the recorded runs of a spec without [hypergrad]; choose another --out "
                              "directory.")
    hyper = spec["hypergrad"]
    wrt = hyper.get("wrt", ["log_lr"])
    kwargs = dict(steps=opts["steps"], wrt=tuple([wrt] if isinstance(wrt, str) else wrt),
                  objective=hyper.get("objective", "final_loss"), mode=hyper.get("mode", "auto"),
                  remat_every=hyper.get("remat_every"), batch_size=opts["batch_size"], group=opts["group"],
                  diverge_factor=opts["diverge_factor"], betas=opts["betas"], eps=opts["eps"],
                  schedule=opts["schedule"], warmup_steps=opts["warmup_steps"], layout=opts["layout"])
    log(f"dynsim: {exp.name}: hypergradients of {kwargs['objective']} in {', '.join(kwargs['wrt'])} for "
        f"{sweep.size} members, {opts['steps']} steps -> {out}")
    t0 = time.perf_counter()
    try:
        ds = _executor.hypergrad(model, task, sweep, **kwargs)  # every input is checked before any training
    except _executor.InputError as e:
        raise spec_error(e) from None
    ds.attrs["spec"] = json.dumps(spec)
    out.mkdir(parents=True, exist_ok=True)
    _io.write_results(ds, out / "results.nc")
    return _finish(exp, spec, ds, out, t0, time.perf_counter() - t0)


def spec_error(e: Exception) -> _spec.SpecError:
    """The command line's one-sentence error for an input the engine or the store rejects."""
    if isinstance(e, _io.MetaMismatch):
        return _spec.SpecError(f"{e.path} holds results of a different spec; choose another --out directory.")
    return _spec.SpecError(str(e))


def _finish(exp: Experiment, spec: dict, ds, out: pathlib.Path, t0: float, t_train: float):
    """Analyse the results and write ``summary.json`` and ``report.md`` (process 0 of a distributed run alone; the
    others return ``(out, None)``)."""
    if _executor.process_index() != 0:
        return out, None
    result = exp.analyse(ds, spec, out)
    timing = json.loads(ds.attrs.get("timing", "{}"))
    timing.update({"train_s": t_train, "analysis_s": time.perf_counter() - t0 - t_train})
    summary = {"experiment": exp.name, "spec": spec, "checks": [c.to_dict() for c in result["checks"]],
               "regimes": result.get("regimes", {}), "timing": timing,
               "figures": [str(pathlib.Path(f).name) for f in result.get("figures", [])],
               "versions": {k: ds.attrs.get(k) for k in ("dynsim", "jax", "optax", "backend", "device_count")}}
    _io.write_text(out / "summary.json", json.dumps(summary, indent=1, default=_json_default))
    _io.write_text(out / "report.md", report(exp, summary, result.get("report", "")))
    return out, summary


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v)}")


def merge(parts: list[xr.Dataset]) -> xr.Dataset:
    """The union of several runs over their coordinates; members no run computed are NaN, ``diverged_at == -2``."""
    merged = functools.reduce(lambda a, b: a.combine_first(b), parts)
    merged["diverged_at"] = merged["diverged_at"].fillna(-2).astype(np.int64)
    merged.attrs = dict(parts[0].attrs)
    timing = {}
    for part in parts:
        for k, v in json.loads(part.attrs.get("timing", "{}")).items():
            timing[k] = timing.get(k, 0) + v
    merged.attrs["timing"] = json.dumps(timing)
    return merged
