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
    grid = "lr* from hypergradients against the grid's, {} / sgd (mean log ratio over widths)"
    assert set(checks) == {"lr* exponent from hypergradients, sp / sgd", "lr* exponent from hypergradients, mup / sgd",
                           grid.format("sp"), grid.format("mup")}
    for c in checks.values():  # -1 against 0, and the grid's lr* against the starting rate: each told apart
        assert c["verdict"] == "agrees", c
    ds = io.load(out)
    assert int(ds["rejected"].sel(param="sp").sum()) > 0  # SP's optimum is the edge: the descent met it
    # The grid beside it: lr-transfer's 16 rates over the same members, its exponent in the report and figure.
    assert ds["grid_loss"].dims == ("param", "width", "seed", "grid_lr") and ds.sizes["grid_lr"] == 16
    assert "from the grid" in summary["regimes"]["sp/sgd"] and "lr* (grid)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_checks(small, tmp_path):
    """SP's descent filed under muP and the reverse (the calibration at init and the grid left in place): every
    check disagrees, the exponents with theory and each lr* with the other parametrization's grid."""
    out, summary = small
    ds = io.load(out)
    swapped = [{"sp": "mup", "mup": "sp"}[str(p)] for p in ds["param"].values]
    kept = ["lr_scale", "grid_loss"]
    trained = ds.drop_vars(kept).assign_coords(param=np.asarray(swapped, dtype=ds["param"].dtype))
    trained = trained.assign(lr_scale=ds["lr_scale"], grid_loss=ds["grid_loss"])
    verdicts = {c.name: c.verdict for c in hyper_descent.analyse(trained, summary["spec"], tmp_path)["checks"]}
    assert set(verdicts.values()) == {"disagrees"}, verdicts


def test_spec_errors_are_one_sentence_before_anything_runs():
    with pytest.raises(SpecError, match="sweep.lr"):
        experiments.resolve_spec("hyper-descent", quick=True, sets=["sweep.lr=[0.1, 0.2]"])
    with pytest.raises(SpecError, match="analysis.outer_steps"):
        experiments.resolve_spec("hyper-descent", quick=True, sets=["analysis.outer_steps=0"])
    with pytest.raises(SpecError, match="sweep.optimizer"):
        experiments.resolve_spec("hyper-descent", quick=True, sets=["sweep.optimizer=['adam']"])


def test_grid_lr_star_is_each_members_best_rate():
    rates = np.array([0.1, 0.2, 0.4])
    nan = np.nan
    loss = np.array([[[[0.5, 0.3, 0.4],       # interior optimum
                       [0.5, 0.2, nan],       # diverged at the largest rate: the best stable one
                       [nan, nan, nan]]]])    # diverged everywhere: no lr*
    np.testing.assert_array_equal(hyper_descent.grid_star(loss, rates), [[[0.2, 0.2, nan]]])
