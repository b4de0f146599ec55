"""Experiment specs: TOML files and ``--set`` overrides, validated at load.

A spec has five tables, and a sixth for a hypergradient run::

    experiment = "lr-transfer"      # which analysis runs on the results ("sweep": none beyond figures)
    [model]  kind ("mlp", "uv", "random_features", "linearized", "superposition"), depth, act, norm, decay,
             importance_decay, lr_exponent
    [task]   kind ("teacher_student"): d_in, d_out, n_train, n_test, teacher, teacher_width, noise, input_alpha, seed
             kind ("sparse_features"): n_features, alpha, p_active, n_test, seed
    [train]  steps, record_every, batch_size, observables, diverge_factor, betas, group, chunk_members, layout,
             schedule, warmup_steps, hvp
    [sweep]  width, batch_size, schedule, lr, seed, param, optimizer, init_scale, weight_decay, momentum; alpha (a
             task axis: one engine run per value, see :data:`TASK_AXES`)
    [analysis]  experiment-specific settings
    [hypergrad] wrt, objective, mode, remat_every: with ``experiment = "sweep"``, the sweep's members are
             differentiated (:func:`dynsim.hypergrad`) instead of recorded (:func:`dynsim.run`)

A sweep axis is a list, a single value, or a range table: ``{logspace = [-4, 1, 16]}`` (base-10 exponents),
``{geomspace = [16, 1024, 7]}`` or ``{linspace = [0, 1, 5]}``; integer axes (width, seed) round geometric ranges.
Every error is a :class:`SpecError` whose message is one sentence naming the offending key.
"""

from __future__ import annotations

import copy
import difflib
import math
import pathlib
import tomllib
from collections.abc import Callable, Iterable

import numpy as np

from . import observables as _obs
from . import param as _param
from .executor import HYPERGRAD_MODES, HYPERGRAD_OBJECTIVES, HYPERGRAD_WRT
from .observables import HVP_METHODS
from .optim import OPTIMIZERS, SCHEDULES, SWEPT_SCHEDULES, check_schedule

__all__ = ["SpecError", "load", "apply_sets", "validate", "parse_set", "merge", "positive_int", "nonnegative_int",
           "TASK_AXES"]


class SpecError(ValueError):
    """A spec is invalid; the message names the key."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(v):
    return (_is_int(v) and v >= 1, "a positive integer")


def nonnegative_int(v):
    return (_is_int(v) and v >= 0, "a non-negative integer")


def _nonneg_num(v):
    return (_is_num(v) and math.isfinite(v) and v >= 0, "a non-negative number")


def _pos_num(v):
    return (_is_num(v) and math.isfinite(v) and v > 0, "a positive number")


def _num(v):
    return (_is_num(v) and math.isfinite(v), "a finite number")


def _choice(*options):
    return lambda v: (v in options, "one of " + ", ".join(repr(o) for o in options))


def _str(v):
    return (isinstance(v, str) and bool(v), "a non-empty string")


def _observables(v):
    ok = isinstance(v, list) and v and all(isinstance(x, str) and x in _obs.names() for x in v)
    return (ok, "a non-empty list of observable names from " + ", ".join(_obs.names()))


def _wrt(v):
    names = [v] if isinstance(v, str) else v
    ok = (isinstance(names, list) and names and all(isinstance(x, str) and x in HYPERGRAD_WRT for x in names)
          and len(set(names)) == len(names))
    return (ok, "a list of distinct hyperparameter names from " + ", ".join(HYPERGRAD_WRT))


def _betas(v):
    ok = isinstance(v, list) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v)
    return (ok, "a list of two numbers in [0, 1)")


SCHEMA: dict[str, dict[str, Callable]] = {
    "model": {"kind": _choice("mlp", "uv", "random_features", "linearized", "superposition"),
              "depth": lambda v: (_is_int(v) and v >= 2, "an integer >= 2"),
              "act": _choice("relu", "tanh", "erf", "linear"),
              "importance_decay": lambda v: (_is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
              "lr_exponent": lambda v: (_is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
              "norm": _choice("none", "rms", "layer"), "decay": _choice("all", "hidden")},
    "task": {"kind": _choice("teacher_student", "sparse_features"), "d_in": positive_int, "n_train": nonnegative_int,
             "n_test": positive_int, "teacher": _choice("linear", "mlp"), "teacher_width": positive_int,
             "noise": _nonneg_num, "input_alpha": _nonneg_num, "seed": nonnegative_int, "d_out": positive_int,
             "n_features": lambda v: (_is_int(v) and v >= 2, "an integer >= 2"), "alpha": _nonneg_num,
             "p_active": _pos_num},
    "train": {"steps": positive_int, "record_every": positive_int, "batch_size": nonnegative_int,
              "observables": _observables, "diverge_factor": lambda v: (_is_num(v) and v > 1, "a number > 1"),
              "betas": _betas, "eps": _pos_num, "group": positive_int, "chunk_members": positive_int,
              "layout": _choice("auto", "vmap", "packed"), "schedule": _choice(*SCHEDULES),
              "warmup_steps": nonnegative_int, "hvp": _choice(*HVP_METHODS)},
    "sweep": {},  # checked by _sweep_axis
    "hypergrad": {"wrt": _wrt, "objective": _choice(*HYPERGRAD_OBJECTIVES), "mode": _choice(*HYPERGRAD_MODES),
                  "remat_every": positive_int},
    "analysis": {},  # free-form, checked by the experiment
}
TOP_KEYS = {"experiment": _str}
AXIS_KINDS = {"width": "int+", "batch_size": "int0", "schedule": "schedule", "lr": "num+", "seed": "int0",
              "param": "param", "optimizer": "optimizer", "init_scale": "num+", "weight_decay": "num",
              "momentum": "unit", "alpha": "num0"}
# Sweep axes that are fields of the task, not of the engine's member table: they change the data every member of a
# run shares, so each value is its own engine run (the results are concatenated along the axis).
TASK_AXES = {"alpha": "sparse_features"}


def _suggest(key: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else "."


def _expand_range(key: str, table: dict, kind: str) -> list:
    if len(table) != 1:
        raise SpecError(f"spec key {key!r} as a table needs exactly one of logspace, geomspace, linspace.")
    (how, args), = table.items()
    if how not in ("logspace", "geomspace", "linspace"):
        raise SpecError(f"spec key {key!r} has unknown range {how!r}; use logspace, geomspace or linspace.")
    if not (isinstance(args, list) and len(args) == 3 and all(_is_num(a) for a in args) and _is_int(args[2])
            and args[2] >= 1):
        raise SpecError(f"spec key {key!r}: {how} takes [start, stop, count] with an integer count >= 1.")
    start, stop, num = args
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise SpecError(f"spec key {key!r}: {how} needs a finite start and stop.")
    if how == "geomspace" and (start <= 0 or stop <= 0):
        raise SpecError(f"spec key {key!r}: geomspace needs positive start and stop.")
    with np.errstate(all="ignore"):
        values = getattr(np, how)(start, stop, num).tolist()
    if not all(math.isfinite(v) for v in values):
        raise SpecError(f"spec key {key!r}: {how} {args!r} gives values too large to represent.")
    if kind.startswith("int"):
        values = sorted({int(round(v)) for v in values})
    return values


def _is_schedule(v) -> bool:
    try:
        check_schedule(v)
    except ValueError:
        return False
    return True


def _sweep_axis(key: str, value, kind: str) -> list:
    full = f"sweep.{key}"
    if isinstance(value, dict):
        value = _expand_range(full, value, kind)
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise SpecError(f"spec key {full!r} is an empty list; give at least one value.")
    checks = {
        "int+": (lambda v: _is_int(v) and v >= 1, "positive integers"),
        "int0": (lambda v: _is_int(v) and v >= 0, "non-negative integers"),
        "num+": (lambda v: _is_num(v) and math.isfinite(v) and v > 0, "positive numbers"),
        "num0": (lambda v: _is_num(v) and math.isfinite(v) and v >= 0, "non-negative numbers"),
        "num": (lambda v: _is_num(v) and math.isfinite(v), "finite numbers"),
        "unit": (lambda v: _is_num(v) and 0 <= v < 1, "numbers in [0, 1)"),
        "param": (lambda v: v in _param.NAMES, "parametrization names from " + ", ".join(_param.NAMES)),
        "optimizer": (lambda v: v in OPTIMIZERS, "optimizer names from " + ", ".join(OPTIMIZERS)),
        "schedule": (_is_schedule, "schedule names from " + ", ".join(SWEPT_SCHEDULES)),
    }
    ok, what = checks[kind]
    for v in value:
        if not ok(v):
            raise SpecError(f"spec key {full!r} takes {what}, got {v!r}.")
    if len(set(value)) != len(value):
        dup = next(v for i, v in enumerate(value) if v in value[:i])
        raise SpecError(f"spec key {full!r} has the value {dup!r} more than once.")
    return value


def validate(spec: dict, *, required: Iterable[str] = ()) -> dict:
    """Check every key and value of ``spec``; return a normalised copy (sweep ranges expanded to lists)."""
    if not isinstance(spec, dict):
        raise SpecError("a spec must be a table of tables.")
    out = copy.deepcopy(spec)
    for key, value in spec.items():
        if key in TOP_KEYS:
            ok, what = TOP_KEYS[key](value)
            if not ok:
                raise SpecError(f"spec key {key!r} must be {what}, got {value!r}.")
            continue
        if key not in SCHEMA:
            raise SpecError(f"unknown spec key {key!r}" + _suggest(key, list(SCHEMA) + list(TOP_KEYS)))
        if not isinstance(value, dict):
            raise SpecError(f"spec key {key!r} must be a table, got {value!r}.")
        for sub, v in value.items():
            full = f"{key}.{sub}"
            if key == "sweep":
                if sub not in AXIS_KINDS:
                    raise SpecError(f"unknown spec key {full!r}" + _suggest(sub, AXIS_KINDS))
                out[key][sub] = _sweep_axis(sub, v, AXIS_KINDS[sub])
            elif key == "analysis":
                continue
            else:
                if sub not in SCHEMA[key]:
                    raise SpecError(f"unknown spec key {full!r}" + _suggest(sub, SCHEMA[key]))
                ok, what = SCHEMA[key][sub](v)
                if not ok:
                    raise SpecError(f"spec key {full!r} must be {what}, got {v!r}.")
    for key in required:
        section, _, sub = key.partition(".")
        if sub not in out.get(section, {}):
            raise SpecError(f"spec key {key!r} is required.")
    train = out.get("train", {})
    steps, every = train.get("steps"), train.get("record_every")
    if steps is not None and every is not None and steps % every:
        raise SpecError(f"spec key 'train.steps' ({steps}) must be a multiple of 'train.record_every' ({every}).")
    if steps is not None and train.get("warmup_steps", 0) >= steps:
        raise SpecError(f"spec key 'train.warmup_steps' ({train['warmup_steps']}) must be below 'train.steps' "
                        f"({steps}).")
    task = out.get("task", {})
    kind = task.get("kind", "teacher_student")
    if "hypergrad" in out:
        _check_hypergrad(out)
    for axis, owner in TASK_AXES.items():
        if axis in out.get("sweep", {}) and kind != owner:
            raise SpecError(f"spec key 'sweep.{axis}' sweeps a field of task.kind = {owner!r}, not of {kind!r}.")
    swept = "batch_size" in out.get("sweep", {})  # checked with the axis below
    if kind == "sparse_features" and train.get("batch_size", 0) == 0 and not swept:
        raise SpecError("spec key 'train.batch_size' must be positive for task.kind = 'sparse_features' (fresh "
                        "batches every step).")
    if out.get("model", {}).get("kind") == "random_features" and out["model"].get("depth", 2) != 2:
        raise SpecError(f"spec key 'model.depth' ({out['model']['depth']}) must be 2 for model.kind = "
                        "'random_features'.")
    if out.get("model", {}).get("kind") == "uv" and task.get("d_out", 1) != 1:
        raise SpecError(f"spec key 'task.d_out' ({task['d_out']}) must be 1 for the scalar model.kind = 'uv'.")
    if kind == "teacher_student" and task.get("n_train", 1) == 0 and train.get("batch_size", 0) == 0 and not swept:
        raise SpecError("spec key 'train.batch_size' must be positive for an online task (task.n_train = 0).")
    if task.get("n_train", 0) and train.get("batch_size", 0) > task.get("n_train", 0):
        raise SpecError(f"spec key 'train.batch_size' ({train['batch_size']}) exceeds 'task.n_train' "
                        f"({task['n_train']}).")
    schedules = out.get("sweep", {}).get("schedule")
    if schedules is not None and schedules != ["constant"] and train.get("schedule", "constant") != "constant":
        raise SpecError(f"spec keys 'train.schedule' ({train['schedule']!r}) and 'sweep.schedule' ({schedules}) both "
                        "set the learning-rate schedule; give one.")
    sizes = out.get("sweep", {}).get("batch_size")
    if sizes is not None:
        if train.get("batch_size", 0):
            raise SpecError(f"spec keys 'train.batch_size' ({train['batch_size']}) and 'sweep.batch_size' "
                            f"({sizes}) both set the batch size; give one.")
        online = kind == "sparse_features" or (kind == "teacher_student" and task.get("n_train", 1) == 0)
        if online and 0 in sizes:
            raise SpecError("spec key 'sweep.batch_size' holds 0 (full batch), which a task drawing fresh batches "
                            "every step cannot serve.")
        too_big = [b for b in sizes if task.get("n_train", 0) and b > task["n_train"]]
        if too_big:
            raise SpecError(f"spec key 'sweep.batch_size' holds {too_big[0]}, more than 'task.n_train' "
                            f"({task['n_train']}).")
    return out


def _check_hypergrad(spec: dict) -> None:
    """What a ``[hypergrad]`` table needs of the rest of the spec (its own keys are checked by :data:`SCHEMA`)."""
    experiment = spec.get("experiment", "sweep")
    if experiment != "sweep":
        raise SpecError(f"spec key 'hypergrad' applies to experiment = 'sweep' only, not {experiment!r}, whose "
                        "analysis reads recorded runs.")
    train, hyper = spec.get("train", {}), spec["hypergrad"]
    if train.get("layout") == "packed":
        raise SpecError("spec key 'train.layout' must be 'auto' or 'vmap' with a [hypergrad] table (hypergradients "
                        "go through the vmapped layout).")
    if "observables" in train:
        raise SpecError("spec key 'train.observables' does not apply with a [hypergrad] table, which records the "
                        "objective and its derivatives instead.")
    steps = train.get("steps")
    if steps is not None and hyper.get("remat_every", 1) > steps:
        raise SpecError(f"spec key 'hypergrad.remat_every' ({hyper['remat_every']}) exceeds 'train.steps' "
                        f"({steps}).")
    axes = sorted(set(spec.get("sweep", {})) & set(TASK_AXES))
    if axes:
        raise SpecError(f"spec key 'sweep.{axes[0]}' (a task axis) cannot be swept with a [hypergrad] table; run "
                        "one spec per value.")
    wrt = hyper.get("wrt", ["log_lr"])
    if "momentum" in wrt and any(o != "sgd" for o in spec.get("sweep", {}).get("optimizer", ["sgd"])):
        raise SpecError("spec key 'hypergrad.wrt' names 'momentum', which only sgd has; leave it out or sweep "
                        "optimizer = ['sgd'].")


def parse_set(item: str) -> tuple[str, object]:
    """Parse one ``--set key=value``; the value is read as TOML (a bare word is a string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {item!r} is not of the form key=value.")
    try:
        parsed = tomllib.loads(f"v = {raw.strip()}")
    except tomllib.TOMLDecodeError:
        parsed = {}
    value = parsed["v"] if list(parsed) == ["v"] else raw.strip()  # one TOML value, else the text itself
    return key, value


def apply_sets(spec: dict, sets: Iterable[str]) -> dict:
    """Apply ``--set`` overrides. ``section.key=value``; a bare ``key`` resolves to the one section that has it."""
    out = copy.deepcopy(spec)
    for item in sets:
        key, value = parse_set(item)
        if "." in key:
            section, _, sub = key.partition(".")
            if section not in SCHEMA:
                raise SpecError(f"unknown spec key {key!r} in --set" + _suggest(section, SCHEMA))
        elif key in TOP_KEYS:
            out[key] = value
            continue
        elif key in SCHEMA:
            raise SpecError(f"spec key {key!r} is a table; --set one of its keys as {key}.KEY=VALUE.")
        else:
            owners = [s for s, keys in SCHEMA.items() if key in keys] + (["sweep"] if key in AXIS_KINDS else [])
            if key == "batch_size":
                owners = ["train"]  # as before batch size was an axis too: sweep it as sweep.batch_size
            elif "sweep" in owners and len(owners) > 1:
                owners = ["sweep"]  # `seed`: a bare name means the sweep axis; use task.seed for the data seed
            if len(owners) > 1:
                raise SpecError(f"spec key {key!r} in --set is ambiguous; write "
                                + " or ".join(f"{s}.{key}" for s in owners) + ".")
            if not owners:
                known = sorted({k for keys in SCHEMA.values() for k in keys} | set(AXIS_KINDS))
                raise SpecError(f"unknown spec key {key!r} in --set" + _suggest(key, known))
            section, sub = owners[0], key
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise SpecError(f"spec key {section!r} must be a table.")
        out[section][sub] = value
    return out


def load(path) -> dict:
    """Read a TOML spec file (not yet validated against an experiment)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read spec file {str(path)!r}: {e.strerror or e}.") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec file {str(path)!r} is not UTF-8 text, as TOML requires.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"spec file {str(path)!r} is not valid TOML: {e}.") from None


def merge(base: dict, over: dict, _section: str | None = None) -> dict:
    """Deep-merge two specs (``over`` wins; a sweep axis, list or range table, is replaced whole)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and _section != "sweep":
            out[k] = merge(out[k], v, k if _section is None else _section)
        else:
            out[k] = copy.deepcopy(v)
    return out
