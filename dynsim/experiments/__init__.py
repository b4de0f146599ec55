"""Named experiments: a default spec, a quick size, and an analysis that compares results with theory.

Each experiment writes into its output directory the results store (:mod:`dynsim.io`), ``summary.json``,
``report.md`` and PNG figures. :func:`run` strings the stages together; every stage is a plain function. The table
:data:`EXPERIMENTS` lists them; how to add one: ``docs/architecture.md``.
"""

from ..spec import SpecError
from . import (
    _runner,
    bare_sweep,
    batch_size,
    catapult,
    data_pruning,
    edge_of_stability,
    hyper_descent,
    kernel_regime,
    lr_annealing,
    lr_sensitivity,
    lr_transfer,
    sharpness_width,
    superposition,
    weight_decay_transfer,
    width_scaling,
)
from ._contract import VERDICTS as VERDICTS
from ._contract import Check as Check
from ._contract import Experiment as Experiment
from ._contract import Requirements as Requirements
from ._coord_check import coord_check as coord_check
from ._report import ci_errors as ci_errors
from ._report import final as final
from ._report import table as table
from ._report import verdict_text as verdict_text
from ._runner import build as build

# Every named experiment, by its command-line name.
EXPERIMENTS = {e.name: e for e in (lr_transfer.EXPERIMENT, edge_of_stability.EXPERIMENT, catapult.EXPERIMENT,
                                   superposition.EXPERIMENT, kernel_regime.EXPERIMENT, width_scaling.EXPERIMENT,
                                   sharpness_width.EXPERIMENT, bare_sweep.EXPERIMENT,
                                   data_pruning.EXPERIMENT, weight_decay_transfer.EXPERIMENT,
                                   lr_sensitivity.EXPERIMENT, batch_size.EXPERIMENT,
                                   hyper_descent.EXPERIMENT, lr_annealing.EXPERIMENT)}


def names() -> tuple[str, ...]:
    """The experiments' names, sorted."""
    return tuple(sorted(EXPERIMENTS))


def get(name: str) -> Experiment:
    """The experiment called ``name``; a one-sentence :class:`dynsim.spec.SpecError` naming the choices if none."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise SpecError(f"unknown experiment {name!r}; `dynsim list` shows the choices: "
                        f"{', '.join(names())}.") from None


def resolve_spec(name_or_path: str, *, quick: bool = False, sets=()) -> tuple[Experiment, dict]:
    """The experiment and its validated spec from a name or a TOML file, with ``--quick`` and ``--set`` overrides
    (:func:`dynsim.experiments._runner.resolve`)."""
    return _runner.resolve(get, name_or_path, quick=quick, sets=sets)


def run(name_or_path: str, *, out=None, quick: bool = False, sets=(), progress: bool | None = None, log=print):
    """Run an experiment end to end and write its results, summary, report and figures into ``out``.

    Returns:
      ``(out_dir, summary_dict)``.
    """
    exp, spec = resolve_spec(name_or_path, quick=quick, sets=sets)
    return _runner.run(exp, spec, out=out, quick=quick, progress=progress, log=log)


__all__ = ["EXPERIMENTS", "Check", "VERDICTS", "Experiment", "Requirements", "build", "get", "names",
           "resolve_spec", "run", "verdict_text", "final", "ci_errors", "table", "coord_check"]
