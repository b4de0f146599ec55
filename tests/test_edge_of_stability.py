"""The edge-of-stability experiment: thresholds in dynsim's units, spec validation, and the quick run end to end."""

import json

import numpy as np
import pytest
import xarray as xr

from dynsim import experiments
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


def test_late_window_is_the_last_third_after_step_zero():
    assert eos.late_window(61, 1 / 3) == slice(41, None)  # records 41..60 of 0..60
    assert eos.late_window(4, 1 / 3) == slice(2, None)  # at least two records


@pytest.mark.parametrize("sets,match", [
    (["optimizer=['adamw']"], "adamw"),
    (["weight_decay=[0.1]"], "weight_decay"),
    (["observables=['loss']"], "sharpness"),
    (["batch_size=16"], "full batch"),
    (["analysis.late_fraction=1.5"], "late_fraction"),
    (["analysis.metric='loss'"], "analysis.metric"),
])
def test_spec_validation(sets, match):
    with pytest.raises(SpecError, match=match):
        experiments.resolve_spec("edge-of-stability", quick=True, sets=sets)


@pytest.mark.slow
def test_edge_of_stability_quick(tmp_path):
    out, summary = experiments.run("edge-of-stability", quick=True, out=tmp_path, progress=False,
                                   log=lambda s: None)
    assert json.loads((out / "summary.json").read_text())["experiment"] == "edge-of-stability"
    for name in ("report.md", "sharpness_vs_step.png", "loss_vs_step.png", "sharpness_ratio.png", "results.nc"):
        assert (out / name).exists(), name
    assert summary["figures"] == ["sharpness_vs_step.png", "loss_vs_step.png", "sharpness_ratio.png"]
    checks = {c["name"]: c for c in summary["checks"]}
    lrs = (0.15, 0.3)
    assert set(checks) == {f"sharpness / threshold, {m}, lr={lr:g}" for m in ("GD", "momentum 0.5", "Adam")
                            for lr in lrs}
    # Plain GD is the case Cohen et al. (2021) establish, Adam's preconditioned sharpness the case of Cohen et al.
    # (2022): their late ratios must agree with 1 (measured 1.02-1.03 for GD, 0.99 for Adam).
    for m in ("GD", "Adam"):
        for lr in lrs:
            c = checks[f"sharpness / threshold, {m}, lr={lr:g}"]
            assert c["agrees"] and abs(c["measured"] - 1) < 0.1, c  # 0.1 = eos.TOLERANCE (saw-tooth, overshoot, lag)
    # Every member trained (no divergence) and the sharpness is near the threshold, not stuck low or far above.
    for c in checks.values():
        assert 0.8 < c["measured"] < 1.2, c
    # lr = 0.15 starts below 2/lr (about 0.7 of it) and gets there by progressive sharpening; lr = 0.3 starts above,
    # catapults below and sharpens back; Adam starts far above (its first step divides by one squared gradient).
    assert summary["regimes"]["GD, lr=0.15"].startswith("progressive sharpening")
    assert summary["regimes"]["GD, lr=0.3"].startswith("started above the edge")
    assert summary["regimes"]["Adam, lr=0.15"].startswith("started above the edge")
    assert "hovers" in summary["regimes"]["GD, lr=0.15"]
    assert "| GD, lr=0.15 |" in (out / "report.md").read_text()
