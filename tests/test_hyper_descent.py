"""The ``hyper-descent`` experiment: lr* exponents in width from hypergradients alone, and an analysis that fails
on a wrong simulation."""

import json

import numpy as np
import pytest

from dynsim import experiments, io
from dynsim.experiments import hyper_descent
from dynsim.spec import SpecError

# Smaller than --quick (three widths, fewer outer steps), to keep the slow suite short.
SMALL = ["sweep.width=[32, 64, 128]", "analysis.outer_steps=14"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("hyper-descent")
    return experiments.run("hyper-descent", quick=True, sets=SMALL, out=out, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_hyper_descent_finds_the_lr_exponents_from_gradients(small):
    out, summary = small
    assert json.loads((out / "summary.json").read_text())["experiment"] == "hyper-descent"
    for name in ("report.md", "lr_paths.png", "lr_star_vs_width.png", "results.nc"):
        assert (out / name).exists(), name
    checks = {c["name"]: c for c in summary["checks"]}
    assert set(checks) == {"lr* exponent from hypergradients, sp / sgd", "lr* exponent from hypergradients, mup / sgd"}
    for c in checks.values():  # -1 against 0: each told apart from its competitor
        assert c["verdict"] == "agrees", c
    ds = io.load(out)
    assert int(ds["rejected"].sel(param="sp").sum()) > 0  # SP's optimum is the edge: the descent met it


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_checks(small, tmp_path):
    """SP's descent filed under muP and the reverse (the calibration at init left in place): both disagree."""
    out, summary = small
    ds = io.load(out)
    swapped = [{"sp": "mup", "mup": "sp"}[str(p)] for p in ds["param"].values]
    trained = ds.drop_vars("lr_scale").assign_coords(param=np.asarray(swapped, dtype=ds["param"].dtype))
    trained = trained.assign(lr_scale=ds["lr_scale"])
    verdicts = {c.name: c.verdict for c in hyper_descent.analyse(trained, summary["spec"], tmp_path)["checks"]}
    assert set(verdicts.values()) == {"disagrees"}, verdicts


def test_spec_errors_are_one_sentence_before_anything_runs():
    with pytest.raises(SpecError, match="sweep.lr"):
        experiments.resolve_spec("hyper-descent", quick=True, sets=["sweep.lr=[0.1, 0.2]"])
    with pytest.raises(SpecError, match="analysis.outer_steps"):
        experiments.resolve_spec("hyper-descent", quick=True, sets=["analysis.outer_steps=0"])
    with pytest.raises(SpecError, match="sweep.optimizer"):
        experiments.resolve_spec("hyper-descent", quick=True, sets=["sweep.optimizer=['adam']"])
