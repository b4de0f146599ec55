"""The experiment contract: an :class:`Experiment` declares its specs, what its analysis needs
(:class:`Requirements`) and how it analyses results into :class:`Check` verdicts against theory.

How to add an experiment: ``docs/architecture.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from .. import fit as _fit
from .. import spec as _spec

__all__ = ["Check", "VERDICTS", "Requirements", "Experiment", "engine_required"]


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
        ``None`` (the default) trains the spec's model, task and sweep with :func:`dynsim.run`, which then
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
    """The spec keys :func:`dynsim.run` needs to train the spec's model, task and sweep."""
    dim = "task.n_features" if spec.get("task", {}).get("kind") == "sparse_features" else "task.d_in"
    return (dim, "train.steps", "sweep.width", "sweep.lr")


_REGISTRY: dict[str, Experiment] = {}
