"""The edge-of-stability experiment: thresholds and competitors in dynsim's units, the model error's parts, spec
validation before training, the quick run end to end, and wrong simulations that its checks must not pass."""

import json

import numpy as np
import pytest
import xarray as xr

from dynsim import experiments, io
from dynsim.experiments import edge_of_stability as eos
from dynsim.spec import SpecError


def _coords(**over):
    base = {"optimizer": ["sgd"], "param": ["sp"], "width": [64], "lr": [0.1, 0.2], "seed": [0],
            "init_scale": [1.0], "weight_decay": [0.0], "momentum": [0.0, 0.5]}
    base.update(over)
    return xr.Dataset(coords=base)


def test_threshold_is_two_over_lr_for_gd_and_momentum_threshold_otherwise():
    thr = eos.threshold(_coords()).squeeze()
    np.testing.assert_allclose(thr.sel(momentum=0.0).values, [20.0, 10.0])  # 2 / lr
    np.testing.assert_allclose(thr.sel(momentum=0.5).values, [30.0, 15.0])  # (2 + 2 beta) / lr


def test_threshold_is_in_units_of_the_base_lr_with_weight_decay_and_adam():
    # The recorded matrix is D H with D = n^-c (mean field: every layer steps lr * n), so the threshold is 2 / lr.
    thr = eos.threshold(_coords(param=["mean_field"], width=[8], lr=[0.1], momentum=[0.0])).squeeze()
    assert float(thr) == pytest.approx(2 / 0.1)
    # Coupled L2 adds wd to every eigenvalue of H, i.e. wd n^-c to those of D H; the recorded one excludes it.
    thr = eos.threshold(_coords(lr=[0.1], momentum=[0.0], weight_decay=[0.5])).squeeze()
    assert float(thr) == pytest.approx(20.0 - 0.5)
    thr = eos.threshold(_coords(param=["mean_field"], width=[8], lr=[0.1], momentum=[0.0], weight_decay=[0.5]))
    assert float(thr.squeeze()) == pytest.approx(20.0 - 0.5 * 8)  # 2 / lr - wd n (c = -1): round-off (default rel 1e-6)
    # Adam: (2 + 2 beta1) / ((1 - beta1) lr), whatever the momentum axis says.
    thr = eos.threshold(_coords(optimizer=["sgd", "adam"], lr=[0.1]), beta1=0.9).squeeze()
    np.testing.assert_allclose(thr.sel(optimizer="adam").values, [380.0, 380.0])
    np.testing.assert_allclose(thr.sel(optimizer="sgd").values, [20.0, 30.0])


def test_competitors_are_the_other_thresholds_on_the_scale_of_the_ratio():
    ratio = eos.competing_ratio(_coords(optimizer=["sgd", "adam"], lr=[0.1]), beta1=0.9).squeeze()
    # Heavy ball: plain GD's 2/lr over (2 + 2 beta)/lr; Adam: 2/lr over 38/lr. Round-off (default rel 1e-7).
    np.testing.assert_allclose(ratio.sel(optimizer="sgd", momentum=0.5), 1 / 1.5)
    np.testing.assert_allclose(ratio.sel(optimizer="adam").values, [0.1 / 1.9, 0.1 / 1.9])
    assert np.isnan(ratio.sel(optimizer="sgd", momentum=0.0))  # GD's competitor is its own initial ratio
    # With coupled decay both thresholds shift by the same wd n^-c.
    ratio = eos.competing_ratio(_coords(lr=[0.1], momentum=[0.5], weight_decay=[0.5])).squeeze()
    assert float(ratio) == pytest.approx((20.0 - 0.5) / (30.0 - 0.5))


def test_late_window_is_the_last_third_after_step_zero():
    assert eos.late_window(61, 1 / 3) == slice(41, None)  # records 41..60 of 0..60
    assert eos.late_window(4, 1 / 3) == slice(2, None)  # at least two records


def test_sawtooth_is_the_oscillation_about_the_trend_and_t_ci_the_student_interval():
    steps = np.arange(0, 400, 1.0)
    wave = 0.1 * np.cos(2 * np.pi * (steps - steps.mean()) / 40)  # 10 whole periods, even about the window's centre
    half = np.diff(np.percentile(wave, [10, 90]))[0] / 2
    # An even wave on a symmetric window has a flat least-squares line and a ramp is taken out whole: what is left is
    # the wave's own half 10-90% range, to round-off (1e-9).
    np.testing.assert_allclose(eos.sawtooth(np.stack([1 + wave, 0.8 + wave + steps / 1000]), steps), half, rtol=1e-9)
    # A sine's 10th / 90th percentiles are -/+ amplitude sin(0.4 pi); the 40 sampled phases move them by 2.4%.
    assert half == pytest.approx(0.1 * np.sin(0.4 * np.pi), rel=0.05)
    assert eos.sawtooth(np.stack([0.5 + steps / 400]), steps)[0] == pytest.approx(0, abs=1e-12)  # a ramp: round-off
    late_err = np.full((2, steps.size), 0.01)
    saw, lag = eos.model_error(np.stack([1 + wave, 1 + wave]), late_err, steps)
    assert saw == pytest.approx(half, rel=1e-9) and lag == pytest.approx(0.01)  # round-off
    # mean +- t_{2, 0.975} s / sqrt(3); t_{2, 0.975} = 4.3027 (tables, 4 digits)
    mean, (lo, hi) = eos.t_ci([1.0, 1.1, 1.2])
    assert mean == pytest.approx(1.1) and hi - mean == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
    assert np.isnan(eos.t_ci([1.0, np.nan])[1]).all()  # one seed: nothing to measure the scatter with


@pytest.mark.parametrize("sets,match", [
    (["optimizer=['adamw']"], "adamw"),
    (["weight_decay=[0.1]"], "weight_decay"),
    (["analysis.late_fraction=1.5"], "analysis\\.late_fraction"),
    (["analysis.metric='loss'"], "analysis\\.metric"),
    (["record_every=500"], "train\\.record_every"),
])
def test_spec_validation(sets, match):
    with pytest.raises(SpecError, match=match):
        experiments.resolve_spec("edge-of-stability", quick=True, sets=sets)


@pytest.mark.parametrize("sets, key", [
    (["seed=[0]"], "sweep.seed"),  # one seed gives no interval over seeds
    (["observables=['loss','preconditioned_sharpness']"], "train.observables"),  # no residual: no estimator error
    (["observables=['loss']"], "train.observables"),
    (["batch_size=16"], "train.batch_size"),  # the thresholds are full-batch statements
    (["analysis.reach=0"], "analysis.reach"),
])
def test_an_analysis_that_cannot_run_is_refused_before_training(sets, key):
    with pytest.raises(SpecError, match=key.replace(".", "\\.")) as info:
        experiments.resolve_spec("edge-of-stability", quick=True, sets=sets)
    assert str(info.value).endswith(".") and str(info.value).count(". ") == 0  # one sentence


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("edge-of-stability")
    return experiments.run("edge-of-stability", quick=True, out=out, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_edge_of_stability_quick(quick):
    out, summary = quick
    assert json.loads((out / "summary.json").read_text())["experiment"] == "edge-of-stability"
    for name in ("report.md", "sharpness_vs_step.png", "loss_vs_step.png", "sharpness_ratio.png", "results.nc"):
        assert (out / name).exists(), name
    assert summary["figures"] == ["sharpness_vs_step.png", "loss_vs_step.png", "sharpness_ratio.png"]
    checks = {c["name"]: c for c in summary["checks"]}
    lrs = (0.15, 0.3)
    assert set(checks) == {f"sharpness / threshold, {m}, lr={lr:g}" for m in ("GD", "momentum 0.5", "Adam")
                            for lr in lrs}
    # Plain GD is the case Cohen et al. (2021) establish, Adam's preconditioned sharpness the case of Cohen et al.
    # (2022), heavy ball their appendix's: every late ratio is told apart from its competitor (measured 1.02-1.03 for
    # GD against initial ratios 0.71 and 1.41, 0.99-1.00 for momentum 0.5 against 0.67, 0.99 for Adam against 0.053).
    for c in checks.values():
        assert c["verdict"] == "agrees", c
        assert c["ci"][1] > c["ci"][0] and c["tolerance"] > 0, c
        # The model error is the measured saw-tooth (0.04-0.10 here) plus the estimator's residual (below 0.01):
        # never the size of the gap to a competitor.
        assert c["tolerance"] < 0.15, c
    # lr = 0.15 starts below 2/lr (about 0.7 of it) and gets there by progressive sharpening; lr = 0.3 starts above,
    # catapults below and sharpens back; Adam starts far above (its first step divides by one squared gradient).
    assert summary["regimes"]["GD, lr=0.15"].startswith("progressive sharpening")
    assert summary["regimes"]["GD, lr=0.3"].startswith("started above the edge")
    assert summary["regimes"]["Adam, lr=0.15"].startswith("started above the edge")
    assert "hovers" in summary["regimes"]["GD, lr=0.15"]
    assert "| GD, lr=0.15 |" in (out / "report.md").read_text()


def _verdicts(ds, spec, out):
    checks = eos.analyse(ds, spec, out)["checks"]
    return {c.name.removeprefix("sharpness / threshold, "): c.verdict for c in checks}


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_checks(quick, tmp_path):
    out, summary = quick
    ds, spec = io.load(out), summary["spec"]
    # Untrained weights: the step-0 records stand for the late ones. GD's late ratio is then its competitor, Adam's
    # its first preconditioner's; momentum 0.5 at lr 0.15 starts at half its threshold. At lr 0.3 momentum 0.5 starts
    # at 0.90-0.97 of its threshold, so an untrained network is as close to it as a trained one: that check rules out
    # plain GD's threshold only (the module docstring), and is left out here.
    untrained = ds.copy()
    for name in (eos.SHARPNESS, eos.SHARPNESS_ERR):
        untrained[name] = ds[name].isel(step=0, drop=True).broadcast_like(ds[name]).transpose(*ds[name].dims)
    verdicts = _verdicts(untrained, spec, tmp_path)
    assert all(v != "agrees" for m, v in verdicts.items() if m != "momentum 0.5, lr=0.3"), verdicts
    # The learning rates relabelled (0.15 <-> 0.3): every threshold is off by a factor 2.
    relabelled = ds.assign_coords(lr=ds["lr"].values[::-1].copy())
    assert set(_verdicts(relabelled, spec, tmp_path).values()) == {"disagrees"}
    # GD's results filed under momentum 0.5 and the reverse: each lands near the other's threshold, i.e. on the heavy
    # ball's competitor (1 / 1.5) or 1.5 times GD's threshold.
    swapped = ds.assign_coords(momentum=ds["momentum"].values[::-1].copy())
    verdicts = _verdicts(swapped, spec, tmp_path)
    assert all(v == "disagrees" for m, v in verdicts.items() if not m.startswith("Adam")), verdicts
