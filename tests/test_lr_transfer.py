"""The lr-transfer experiment end to end at quick size, and the parametrization exponents it checks."""

import json

import numpy as np
import pytest

from dynsim import experiments, fit
from dynsim.spec import SpecError
from dynsim.theory.parametrization import lr_exponent


def test_lr_exponent_table():
    assert lr_exponent("mup", "adam") == 0 and lr_exponent("sp", "sgd") == -1
    with pytest.raises(ValueError):
        lr_exponent("sp", "lion")


def test_lr_optimum_interpolates_in_log_lr():
    lr = np.logspace(-3, 0, 7)
    loss = (np.log10(lr)[None, :] - np.array([[-1.3], [-2.9]])) ** 2 + 1
    est = fit.lr_optimum(lr, np.exp(loss))  # exp of a parabola in log lr: the vertex is recovered exactly
    np.testing.assert_allclose(np.log10(est[0]), -1.3, atol=1e-9)
    assert np.isnan(est[1])  # optimum below the grid: unresolved, not clipped to the edge


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr-transfer")
    return experiments.run("lr-transfer", quick=True, out=out, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_lr_transfer_quick(quick):
    out, summary = quick
    assert json.loads((out / "summary.json").read_text())["experiment"] == "lr-transfer"
    for name in ("report.md", "loss_vs_lr.png", "lr_star_vs_width.png", "results.nc"):
        assert (out / name).exists(), name
    checks = {c["name"]: c for c in summary["checks"]}
    assert len(checks) == 8
    # Every exponent is told apart from its competitor (0 against -1): each check agrees, in its CI or within the
    # model error computed at these widths.
    for c in checks.values():
        assert c["verdict"] == "agrees", c
        assert c["ci"][1] > c["ci"][0], c  # the refined edge leaves no zero-width interval
    assert summary["regimes"]["mup/sgd"].startswith("transfers")
    assert summary["regimes"]["sp/sgd"].startswith("shifts as 1/width")


def _relabelled(ds, **swaps):
    """``ds`` with coordinate labels exchanged: the analysis then sees another member's results under a name."""
    for dim, order in swaps.items():
        ds = ds.assign_coords({dim: np.asarray(order, dtype=ds[dim].dtype)})
    return ds


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_checks(quick, tmp_path):
    """SP's results labelled muP (and the reverse), or widths shuffled, cannot agree with the theory."""
    from dynsim import io
    from dynsim.experiments import lr_transfer

    out, summary = quick
    ds = io.load(out)
    spec = summary["spec"]
    params = [str(p) for p in ds["param"].values]
    swapped = [{"sp": "mup", "mup": "sp"}.get(p, p) for p in params]
    # SP's training runs filed under muP and the reverse, the calibration at init left where it was: each exponent
    # lands on its competitor.
    trained = _relabelled(ds.drop_vars("lr_scale"), param=swapped).assign(lr_scale=ds["lr_scale"])
    verdicts = {c.name: c.verdict for c in lr_transfer.analyse(trained, spec, tmp_path)["checks"]}
    for opt in ("sgd", "adam"):
        assert verdicts[f"lr* exponent, mup / {opt}"] == "disagrees", verdicts
        assert verdicts[f"lr* exponent, sp / {opt}"] == "disagrees", verdicts
    # Everything relabelled, the calibration too: its finite-width slope then says the asymptotic law is nowhere near
    # operating (a model error as large as the gap between the laws), so nothing can agree.
    checks = lr_transfer.analyse(_relabelled(ds, param=swapped), spec, tmp_path)["checks"]
    verdicts = {c.name: c.verdict for c in checks}
    for opt in ("sgd", "adam"):
        assert verdicts[f"lr* exponent, mup / {opt}"] != "agrees", verdicts
        assert verdicts[f"lr* exponent, sp / {opt}"] != "agrees", verdicts
    widths = ds["width"].values
    shuffled = widths[[2, 4, 0, 3, 1]]  # the widest member's lr* now sits at width 64, and so on
    checks = lr_transfer.analyse(_relabelled(ds, width=shuffled), spec, tmp_path)["checks"]
    verdicts = {c.name: c.verdict for c in checks}
    assert verdicts["lr* exponent, sp / sgd"] != "agrees", verdicts


@pytest.mark.parametrize("sets, key", [
    (["lr=[0.0003,0.001]"], "sweep.lr"),  # two rates cannot locate an optimum between neighbours
    (["width=[64]"], "sweep.width"),  # one width gives no slope
    (["seed=[0]"], "sweep.seed"),  # one seed gives no bootstrap interval
    (["analysis.metric=test_loss", "train.observables=['loss']"], "analysis.metric"),
    (["analysis.edge_points=0"], "analysis.edge_points"),
])
def test_an_analysis_that_cannot_run_is_refused_before_training(sets, key):
    with pytest.raises(SpecError, match=key.replace(".", "\\.")) as info:
        experiments.resolve_spec("lr-transfer", quick=True, sets=sets)
    assert str(info.value).endswith(".") and str(info.value).count(". ") == 0  # one sentence


def test_flat_decades_measure_the_width_of_the_optimum():
    import xarray as xr

    from dynsim.experiments import lr_transfer

    lrs = np.logspace(-3, 0, 10)  # a third of a decade apart
    sharp = (np.log10(lrs) + 5 / 3) ** 2 + 1e-3  # a V at the grid point 10^-5/3; its neighbours are 100x higher
    flat = np.where(np.abs(np.log10(lrs) + 5 / 3) <= 0.5, 1.0, 10.0)  # equal at 10^-2, 10^-5/3 and 10^-4/3
    loss = np.stack([sharp, flat])[None, :, None, :, None, None, None, None, None]  # [opt, param, width, lr, ...]
    dims = ("optimizer", "param", "width", "lr", "seed", "init_scale", "weight_decay", "momentum", "step")
    never = np.full(loss.shape[:-1], -1)  # no member diverged
    coords = {"optimizer": ["sgd"], "param": ["sharp", "flat"], "width": [8], "lr": lrs, "seed": [0],
              "init_scale": [1.0], "weight_decay": [0.0], "momentum": [0.0], "step": [10]}
    ds = xr.Dataset({"loss": (dims, loss), "diverged_at": (dims[:-1], never)}, coords=coords)
    decades = lr_transfer.flat_decades(ds)[0, :, 0]
    np.testing.assert_allclose(decades, [0.0, 2 / 3], atol=1e-12)  # grid spacing 1/3; float64 logs
