"""The kernel-regime experiment: the quick size end to end with every check agreeing, wrongly simulated datasets that
must not agree, the model error of an exponent, and one-sentence spec errors before training."""

import json

import numpy as np
import pytest
import xarray as xr

from dynsim import experiments
from dynsim.experiments import kernel_regime
from dynsim.spec import SpecError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run (15-30 s on 2 shared cores) for every slow test of this module."""
    out = tmp_path_factory.mktemp("kernel-regime")
    return experiments.run("kernel-regime", quick=True, out=out, progress=False, log=lambda m: None)


@pytest.mark.slow
def test_quick_run_agrees_with_theory(quick):
    out, summary = quick
    checks = {c["name"]: c for c in summary["checks"]}
    assert len(checks) == 5
    assert all(c["verdict"] == "agrees" for c in checks.values()), checks
    assert all(c["competitor"] and np.isfinite(c["competing"]) for c in checks.values())
    assert all(c["ci"][0] < c["ci"][1] for c in checks.values())  # no zero-width interval
    # The two parametrizations are told apart: the lazy kernel exponent is far from muP's.
    assert checks["kernel movement exponent, ntk"]["ci"][0] > checks["kernel movement exponent, mup"]["ci"][1] + 0.3
    assert summary["regimes"]["ntk"].startswith("lazy, as predicted")
    assert summary["regimes"]["mup"].startswith("feature learning, as predicted")
    assert json.loads((out / "summary.json").read_text())["experiment"] == "kernel-regime"
    for name in ("movement_vs_width.png", "test_loss.png", "ntk_spectrum.png", "report.md"):
        assert (out / name).stat().st_size > 0


def _untrained(ds):
    """The records at step 0 in place of the last ones (step labels kept): a network that never trained."""
    ds = ds.copy(deep=True)
    for name in ds.data_vars:
        if "step" in ds[name].dims:
            ds[name][{"step": -1}] = ds[name].isel(step=0)
    return ds


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["untrained", "widths reversed", "parametrizations swapped"])
def test_wrong_simulations_do_not_agree(quick, wrong, tmp_path):
    out, summary = quick
    ds = xr.load_dataset(out / "results.nc")
    if wrong == "untrained":
        ds = _untrained(ds)
    elif wrong == "widths reversed":
        ds = ds.assign_coords(width=ds["width"].values[::-1])
    else:  # the competing law's data: muP's records labelled NTK and vice versa
        ds = ds.assign_coords(param=ds["param"].values[::-1])
    result = kernel_regime.analyse(ds, summary["spec"], tmp_path)
    verdicts = {c.name: c.verdict for c in result["checks"]}
    if wrong == "untrained":
        # nothing moved: every movement exponent is +inf, which no prediction holds; the test loss is the untrained one
        assert set(verdicts.values()) == {"disagrees"}, verdicts
        assert all("untrained" in r for r in result["regimes"].values())
    elif wrong == "widths reversed":
        # the lazy kernel's exponent changes sign; the flat laws (muP's kernel, both outputs) are blind to the order
        # of the widths, and the test loss is measured at one width, so only the lazy exponent can tell
        assert verdicts["kernel movement exponent, ntk"] == "disagrees", verdicts
        assert not result["regimes"]["ntk"].startswith("lazy, as predicted")
    else:
        assert verdicts["kernel movement exponent, ntk"] == "disagrees", verdicts
        assert verdicts["kernel movement exponent, mup"] == "disagrees", verdicts
        assert [v for k, v in verdicts.items() if k.startswith("test loss")] == ["disagrees"], verdicts


def test_curvature_error_is_the_drift_of_the_local_exponent():
    widths = np.array([32.0, 64, 128, 256, 512])
    # A pure power law does not bend: no model error (float64 round-off of a least-squares fit, ~1e-15).
    assert kernel_regime.curvature_error(widths, 3.0 * widths**-0.75) == pytest.approx(0.0, abs=1e-12)
    # n^-3/4 + n^-1 (the smooth next-order term of ReLU's kernel movement): the local exponent rises towards 1 at
    # small widths, 0.75 + 0.25 n^-1/4 / (1 + n^-1/4); from n = 32 to 512 it falls by 0.031, and the quadratic
    # fit's |kappa| L is half that (measured 0.01530 against 0.01529; 10% allows for the higher orders in log n
    # that a quadratic omits).
    means = widths**-0.75 + widths**-1.0
    local = 0.75 + 0.25 * widths**-0.25 / (1 + widths**-0.25)
    assert kernel_regime.curvature_error(widths, means) == pytest.approx((local[0] - local[-1]) / 2, rel=0.1)
    assert np.isnan(kernel_regime.curvature_error(widths[:2], means[:2]))  # two points fix no curvature


def test_movement_of_an_untrained_network_is_frozen():
    m = kernel_regime.movement([32.0, 64, 128, 256], np.zeros((3, 4)))
    assert m.exponent == np.inf and m.ci == (np.inf, np.inf) and m.line is None
    check = experiments.Check(name="kernel", measured=m.exponent, ci=m.ci, predicted=0.0, competitor="lazy",
                              competing=0.75, tolerance=m.tolerance, reason=m.reason)
    assert check.verdict == "disagrees"


@pytest.mark.parametrize("sets,key", [
    (["model.depth=3"], "model.kind"),
    (["model.act='tanh'"], "model.act"),
    (["sweep.momentum=[0.5]"], "sweep.momentum"),
    (["sweep.seed=[0]"], "sweep.seed"),
    (["sweep.width=[64, 128, 256]"], "sweep.width"),
    (["sweep.lr=[0.1, 0.5]"], "sweep.lr"),
    (["sweep.param=['sp']"], "sweep.param"),
    (["train.observables=['loss']"], "train.observables"),
    (["train.batch_size=16"], "train.batch_size"),
    (["analysis.probes=4"], "analysis.probes"),
])
def test_spec_errors_are_one_sentence(sets, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")) as err:
        experiments.resolve_spec("kernel-regime", quick=True, sets=sets)
    assert str(err.value).count(". ") == 0 and "\n" not in str(err.value)
