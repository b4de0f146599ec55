"""The experiment contract (DESIGN.md section 7)."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable

import numpy as np
import xarray as xr

from .. import engine as _engine
from .. import fit as _fit
from .. import io as _io
from .. import spec as _spec
from ..models import MLP, Linearized, random_features, uv
from ..superposition import SparseFeatures, Superposition
from ..sweep import AXES, Sweep
from ..tasks import TeacherStudent

__all__ = ["Check", "VERDICTS", "Requirements", "Experiment", "register", "get", "names", "resolve_spec",
           "engine_required", "build", "task_variants", "squeeze_axes", "final", "ci_errors", "table", "spec_error", "run", "verdict_text"]

_TASKS = {"teacher_student": TeacherStudent, "sparse_features": SparseFeatures}


VERDICTS = ("agrees", "inconclusive", "disagrees")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One comparison of a measurement with theory, against the competing law it exists to rule out.

    Attributes:
      name: what is compared.
      measured: the point estimate.
      ci: its confidence interval ``(lo, hi)``.
      predicted: the theory value.
      competitor: the competing law, in words (e.g. ``"SP's 1/width"``): what a wrong simulation, or the other
        regime, would give.
      competing: that law's value on the scale of ``predicted``.
      tolerance: the model error of the measurement at the swept sizes (finite width, finite training), computed
        where it can be (e.g. the theory's own finite-size slope over the same range) and stated in ``reason``; the
        interval is widened by it on both sides.
      reason: where the tolerance and the interval come from.

    The verdict (:func:`dynsim.fit.verdict`) is **agrees** when the widened interval holds the prediction and not the
    competitor, **inconclusive** when it holds both (or nothing was measured), and **disagrees** when it does not hold
    the prediction. ``in_ci`` tells an agreement the interval itself gives from one that needs the model error.
    """

    name: str
    measured: float
    ci: tuple[float, float]
    predicted: float
    competitor: str
    competing: float
    tolerance: float = 0.0
    reason: str = ""

    def __post_init__(self):
        if not self.competitor:
            raise ValueError(f"check {self.name!r} names no competing law; a check must be able to fail.")
        if not (self.tolerance >= 0 or math.isnan(self.tolerance)):
            raise ValueError(f"check {self.name!r} has a negative tolerance {self.tolerance!r}.")

    @property
    def verdict(self) -> str:
        return _fit.verdict(self.ci, self.predicted, [self.competing], self.tolerance)

    @property
    def agrees(self) -> bool:
        return self.verdict == "agrees"

    @property
    def in_ci(self) -> bool:
        lo, hi = self.ci
        return bool(lo <= self.predicted <= hi)

    def to_dict(self) -> dict:
        clean = lambda v: None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
        return {"name": self.name, "measured": clean(self.measured), "ci": [clean(self.ci[0]), clean(self.ci[1])],
                "predicted": clean(self.predicted), "competitor": self.competitor,
                "competing": clean(self.competing), "tolerance": clean(self.tolerance), "verdict": self.verdict,
                "agrees": self.agrees, "in_ci": self.in_ci, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What an experiment's analysis needs of its spec, as data: checked with the spec, before anything is trained,
    each failure one sentence naming the key.

    Attributes:
      observables: names ``train.observables`` must include.
      single: sweep axes that must hold exactly one value.
      at_least: ``(axis, n, why)``: sweep axes that need at least ``n`` values, and what for.
      full_batch: whether ``train.batch_size`` must be 0.
      analysis: ``analysis.<key>`` -> ``(check, what)``: the keys the analysis takes, each with a predicate and
        the words for what it must be; any other ``analysis`` key is refused. ``None``: the experiment's own
        ``validate`` checks them.
    """

    observables: tuple[str, ...] = ()
    single: tuple[str, ...] = ()
    at_least: tuple[tuple[str, int, str], ...] = ()
    full_batch: bool = False
    analysis: dict | None = None

    def check(self, spec: dict, name: str) -> None:
        """Raise :class:`dynsim.spec.SpecError` for the first requirement ``spec`` misses."""
        analysis = spec.get("analysis", {}) if self.analysis is not None else {}
        for key, value in analysis.items():
            if key not in self.analysis:
                takes = ", ".join(f"analysis.{k}" for k in sorted(self.analysis)) or "no analysis keys"
                raise _spec.SpecError(f"unknown spec key 'analysis.{key}'; {name} takes {takes}.")
            ok, what = self.analysis[key]
            if not ok(value):
                raise _spec.SpecError(f"spec key 'analysis.{key}' must be {what}, got {value!r}.")
        recorded = spec.get("train", {}).get("observables", ["loss", "test_loss"])
        for o in self.observables:
            if o not in recorded:
                raise _spec.SpecError(f"spec key 'train.observables' must include {o!r} for the {name} analysis.")
        sweep = spec.get("sweep", {})
        for axis in self.single:
            if len(sweep.get(axis, [None])) != 1:
                raise _spec.SpecError(f"spec key 'sweep.{axis}' must hold one value for the {name} analysis, got "
                                      f"{sweep[axis]!r}.")
        for axis, n, why in self.at_least:
            if len(sweep.get(axis, [None])) < n:
                raise _spec.SpecError(f"spec key 'sweep.{axis}' needs at least {n} values for the {name} analysis "
                                      f"({why}), got {sweep.get(axis, 'one')!r}.")
        if self.full_batch and spec.get("train", {}).get("batch_size", 0) != 0:
            raise _spec.SpecError(f"spec key 'train.batch_size' must be 0 (full batch) for the {name} analysis.")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named experiment.

    Attributes:
      name: the CLI name.
      doc: one line for ``dynsim list``.
      defaults: the full-size spec.
      quick: overrides for ``--quick`` (well under a minute on 2 CPU cores).
      analyse: ``(ds, spec, outdir) -> {"checks": [Check], "regimes": {...}, "figures": [paths],
        "report": markdown}``.
      validate: ``(spec) -> None``, raising :class:`dynsim.spec.SpecError` for experiment-specific keys
        (``[analysis]``) before anything is computed.
      execute: ``(spec, out, progress) -> xarray.Dataset`` for an experiment whose results do not come from
        training through the engine (e.g. closed-form solutions); it writes the results store into ``out``.
        ``None`` (the default) trains the spec's model, task and sweep with :func:`dynsim.engine.run`, which then
        needs the keys of :func:`engine_required`.
      required: dotted spec keys (``"sweep.lr"``) the experiment needs, checked with every other key by
        :func:`dynsim.spec.validate` before ``validate``; an experiment without ``execute`` needs
        :func:`engine_required` as well, which is added to these.
      requires: what the analysis needs of the spec (:class:`Requirements`), checked before ``validate``.
    """

    name: str
    doc: str
    defaults: dict
    quick: dict
    analyse: Callable
    validate: Callable | None = None
    execute: Callable | None = None
    required: tuple[str, ...] = ()
    requires: Requirements = Requirements()


def engine_required(spec: dict) -> tuple[str, ...]:
    """The spec keys :func:`dynsim.engine.run` needs to train the spec's model, task and sweep."""
    dim = "task.n_features" if spec.get("task", {}).get("kind") == "sparse_features" else "task.d_in"
    return (dim, "train.steps", "sweep.width", "sweep.lr")


_REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    _REGISTRY[exp.name] = exp
    return exp


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Experiment:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _spec.SpecError(f"unknown experiment {name!r}; `dynsim list` shows the choices: "
                              f"{', '.join(names())}.") from None


def resolve_spec(name_or_path: str, *, quick: bool = False, sets=()) -> tuple[Experiment, dict]:
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
            model = random_features(task.d_in, m.get("act", "relu"), task.d_out)
        else:
            model = MLP(d_in=task.d_in, d_out=task.d_out, **m)
            model = Linearized(base=model) if kind == "linearized" else model
        sweep = Sweep(**sweep_axes)
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


def squeeze_axes(obj, dims=None, *, keep=()):
    """``obj`` (a DataArray or Dataset) without its length-1 axes among ``dims`` (default: all of them) and not in
    ``keep``: the sweep axes an experiment holds at one value. Longer axes and names ``obj`` lacks are left alone."""
    dims = list(obj.sizes) if dims is None else dims
    return obj.squeeze([d for d in dims if d in obj.sizes and d not in keep and obj.sizes[d] == 1])


def final(ds, name: str, keep=()):
    """``ds[name]`` at the last record, without the sweep axes that hold one value (other than ``keep``)."""
    return squeeze_axes(ds[name].isel(step=-1), AXES, keep=keep)


def ci_errors(value, lo, hi) -> np.ndarray:
    """Error bars ``[2, ...]`` (below, above) for ``Axes.errorbar`` from a point estimate and its interval; an end
    that is NaN, or on the wrong side of the estimate, draws no bar."""
    value, lo, hi = (np.asarray(v, dtype=float) for v in (value, lo, hi))
    err = np.stack([value - lo, hi - value])
    return np.where(np.isfinite(err) & (err > 0), err, 0.0)


def table(header, rows) -> str:
    """A markdown table: ``header`` a list of column titles, ``rows`` lists of cells (numbers as ``%.3g``)."""
    cell = lambda v: _fmt(v) if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _run_variants(model, variants, sweep, out: pathlib.Path, progress, spec, opts, log) -> xr.Dataset:
    """Run each task variant into its own results directory and concatenate them along the task axes.

    The combined grid, with the engine's ``width`` renamed to the model's ``width_name``, is stored in
    ``out/results.nc``; each variant's directory resumes on its own.
    """
    parts, timing = [], {}
    for coords, task in variants:
        sub = out / "_".join(f"{k}={v:g}" for k, v in coords.items())
        log(f"dynsim: {', '.join(f'{k} = {v:g}' for k, v in coords.items())} -> {sub}")
        ds = _engine.run(model, task, sweep, out=sub, progress=progress, spec=spec, **opts)
        for k, v in json.loads(ds.attrs.get("timing", "{}")).items():
            timing[k] = timing.get(k, 0) + v
        parts.append(ds.expand_dims({k: [v] for k, v in coords.items()}))
    combined = xr.combine_by_coords(parts, combine_attrs="drop_conflicts")
    combined.attrs["timing"] = json.dumps(timing)
    combined = combined.rename(width=model.width_name) if model.width_name != "width" else combined
    _io.write_results(combined, out / "results.nc")
    return combined


def run(name_or_path: str, *, out=None, quick: bool = False, sets=(), progress: bool | None = None, log=print):
    """Run an experiment end to end and write its results, summary, report and figures into ``out``.

    Returns:
      ``(out_dir, summary_dict)``.
    """
    exp, spec = resolve_spec(name_or_path, quick=quick, sets=sets)
    if exp.execute is not None:
        out = pathlib.Path(out or f"runs/{exp.name}{'-quick' if quick else ''}")
        out.mkdir(parents=True, exist_ok=True)
        log(f"dynsim: {exp.name} -> {out}")
        t0 = time.perf_counter()
        ds = exp.execute(spec, out, progress)
        return _finish(exp, spec, ds, out, t0, time.perf_counter() - t0)
    model, task, sweep, opts = build(spec)
    try:  # reject a layout the model cannot use before anything is written
        _engine._choose_layout(opts["layout"], model, opts["observables"], sweep, opts["batch_size"] or task.n_train)
    except _engine.InputError as e:
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
            ds = _engine.run(model, task, sweep, out=out, progress=progress, spec=spec, **opts)
    except (_io.MetaMismatch, _engine.InputError) as e:  # inputs the engine rejects
        raise spec_error(e) from None
    return _finish(exp, spec, ds, out, t0, time.perf_counter() - t0)


def spec_error(e: Exception) -> _spec.SpecError:
    """The command line's one-sentence error for an input the engine or the store rejects."""
    if isinstance(e, _io.MetaMismatch):
        return _spec.SpecError(f"{e.path} holds results of a different spec; choose another --out directory.")
    return _spec.SpecError(str(e))


def _finish(exp: Experiment, spec: dict, ds, out: pathlib.Path, t0: float, t_train: float):
    """Analyse the results and write ``summary.json`` and ``report.md``."""
    result = exp.analyse(ds, spec, out)
    timing = json.loads(ds.attrs.get("timing", "{}"))
    timing.update({"train_s": t_train, "analysis_s": time.perf_counter() - t0 - t_train})
    summary = {"experiment": exp.name, "spec": spec, "checks": [c.to_dict() for c in result["checks"]],
               "regimes": result.get("regimes", {}), "timing": timing,
               "figures": [str(pathlib.Path(f).name) for f in result.get("figures", [])],
               "versions": {k: ds.attrs.get(k) for k in ("dynsim", "jax", "optax", "backend", "device_count")}}
    _io.write_text(out / "summary.json", json.dumps(summary, indent=1, default=_json_default))
    _io.write_text(out / "report.md", _report(exp, summary, result.get("report", "")))
    return out, summary


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v)}")


def _fmt(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def verdict_text(check: dict) -> str:
    """A check's verdict in words: ``agrees (in CI)``, ``agrees (within model error)``, ``inconclusive`` with
    the reason, or ``disagrees``."""
    v = check["verdict"]
    if v == "agrees":
        return "agrees (in CI)" if check.get("in_ci") else "agrees (within model error)"
    if v == "inconclusive":
        if check["ci"][0] is None or check["predicted"] is None:
            return "inconclusive (nothing measured)"
        return f"inconclusive (also consistent with {check['competitor']})"
    return "disagrees"


def _report(exp: Experiment, summary: dict, body: str) -> str:
    lines = [f"# {exp.name}", "", exp.doc, ""]
    if summary["checks"]:
        lines += ["## Checks", "", "Each check names the competing law it exists to rule out. It **agrees** when the "
                  "CI, widened by the model error (finite size, finite training; its reason is given), holds the "
                  "prediction and not the competitor; it is **inconclusive** when it holds both, and **disagrees** "
                  "when it does not hold the prediction.", "",
                  "| check | measured | CI | predicted | competitor | model error | verdict |",
                  "|---|---|---|---|---|---|---|"]
    for c in summary["checks"]:
        text = verdict_text(c)
        text = text if c["verdict"] == "agrees" else f"**{text}**"
        lines.append(f"| {c['name']} | {_fmt(c['measured'])} | [{_fmt(c['ci'][0])}, {_fmt(c['ci'][1])}] | "
                     f"{_fmt(c['predicted'])} | {c['competitor']}: {_fmt(c['competing'])} | "
                     f"{_fmt(c['tolerance'])} | {text} |")
    if summary["checks"]:
        lines += ["", "Model errors and intervals:", ""] + [f"- {c['name']}: {c['reason']}" for c in summary["checks"]
                                                           if c["reason"]]
    if summary["regimes"]:
        lines += ["", "## Regimes", ""] + [f"- {k}: {v}" for k, v in summary["regimes"].items()]
    lines += ["", body, "", "## Figures", ""] + [f"![{f}]({f})" for f in summary["figures"]]
    t = summary["timing"]
    names = {"members": "members trained (copies and stored members excluded)"}
    lines += ["", "## Timing", "", ", ".join(f"{names.get(k, k)}: {v:.3g}" if isinstance(v, float)
                                              else f"{names.get(k, k)}: {v}" for k, v in t.items())]
    return "\n".join(lines) + "\n"
