"""The sharpness-width experiment: exponent, spread and finite-width estimators, spec validation before training, the
quick run end to end, and wrong simulations that its checks must not pass."""

import json

import numpy as np
import pytest

from dynsim import experiments, io
from dynsim.experiments import sharpness_width as sw
from dynsim.spec import SpecError


def test_exponent_and_spread_recover_known_laws():
    widths = np.array([32, 64, 128, 256])
    rng = np.random.default_rng(0)
    noise = np.exp(0.01 * rng.standard_normal((4, 4)))  # 1% multiplicative seed noise
    measured, ci = sw.exponent(widths, 3.0 * widths[None, :] ** 1.0 * noise)
    # Slope of 1% noise over a factor 8 in width: standard error about 0.01 / log(8) / sqrt(4); 0.05 is ample.
    assert measured == pytest.approx(1.0, abs=0.05) and ci[0] <= measured <= ci[1]
    flat = np.stack([np.full((4, 4), 2.0), np.full((4, 4), 2.0)], axis=-1)  # [seed, width, step]
    np.testing.assert_allclose(sw.spread(flat), 0.0, atol=1e-12)
    grows = np.broadcast_to(widths[None, :, None] * 1.0, (4, 4, 2))
    np.testing.assert_allclose(sw.spread(grows), np.std(np.log(widths)), rtol=1e-12)


def test_finite_width_laws_give_the_slope_their_correction_bends_to():
    widths = np.array([32, 64, 128, 256, 512])
    # SP: A n + B is fitted exactly (round-off, 1e-9) and its log-log slope is the least-squares one of the law.
    law = 0.125 * widths + 1.7
    (a, b), slope = sw.finite_width_law("sp", widths, law)
    assert (a, b) == pytest.approx((0.125, 1.7), rel=1e-9)
    assert slope == pytest.approx(np.polyfit(np.log(widths), np.log(law), 1)[0], rel=1e-9)
    assert 0.85 < slope < 0.9  # B / A = 13.6 bends it by about 0.11 over 32-512 (the quick sweep's SP)
    assert sw.finite_width_law("sp", widths, 2.0 * widths)[1] == pytest.approx(1.0, rel=1e-9)  # no correction
    # Widths in the wrong order: A n + B with A, B >= 0 cannot fall, so it is flat and its slope is 0 (model error 1).
    assert sw.finite_width_law("sp", widths, 100.0 / widths)[1] == pytest.approx(0.0, abs=1e-9)
    # muP / NTK: A + B n^-1/2 is fitted exactly, a constant has slope 0.
    (a, b), slope = sw.finite_width_law("mup", widths, 2.0 - 3.0 / np.sqrt(widths))
    assert (a, b) == pytest.approx((2.0, -3.0), rel=1e-9) and slope > 0
    assert sw.finite_width_law("ntk", widths, np.full(5, 0.4))[1] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(sw.finite_width_law("sp", widths[:2], law[:2])[1])  # two widths leave no residual


def test_spread_floor_is_the_spread_of_seed_noise_alone():
    # A width-independent law measured with 3 seeds of 5% log-normal noise at each of 5 widths: the floor estimates
    # the root-mean-square spread of the seed means, 0.05 sqrt(4/5 / 3) = 0.0258. Over 2000 draws the mean floor and
    # the rms spread have standard errors under 1% of it; 5% is ample for the first-order (delta-method) floor.
    rng = np.random.default_rng(0)
    values = 1.7 * np.exp(0.05 * rng.standard_normal((2000, 3, 5)))
    floors = np.array([sw.spread_floor(v) for v in values])
    spreads = np.array([sw.spread(v[:, :, None])[0] for v in values])
    expected = 0.05 * np.sqrt(4 / 5 / 3)
    assert np.sqrt(np.mean(floors ** 2)) == pytest.approx(expected, rel=0.05)
    assert np.sqrt(np.mean(spreads ** 2)) == pytest.approx(expected, rel=0.05)
    assert np.isnan(sw.spread_floor(values[0, :1]))  # one seed: no variance to take


@pytest.mark.parametrize("sets, key", [
    (["width=[32, 64]"], "sweep.width"),  # a two-parameter finite-width law through two widths has no residual
    (["lr=[0.01, 0.02]"], "sweep.lr"),
    (["momentum=[0.0, 0.5]"], "sweep.momentum"),
    (["seed=[0]"], "sweep.seed"),  # one seed: no bootstrap, no seed variance
    (["observables=['loss']"], "train.observables"),
    (["optimizer=['adam']"], "sweep.optimizer"),
    (["analysis.late_fraction=0.5"], "analysis.late_fraction"),
])
def test_an_analysis_that_cannot_run_is_refused_before_training(sets, key):
    with pytest.raises(SpecError, match=key.replace(".", "\\.")) as info:
        experiments.resolve_spec("sharpness-width", quick=True, sets=sets)
    assert str(info.value).endswith(".") and str(info.value).count(". ") == 0  # one sentence


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharpness-width")
    return experiments.run("sharpness-width", quick=True, out=out, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_sharpness_width_quick(quick):
    out, summary = quick
    assert json.loads((out / "summary.json").read_text())["experiment"] == "sharpness-width"
    assert (out / "sharpness_width.png").exists() and "lr-transfer" in (out / "report.md").read_text()
    checks = {c["name"]: c for c in summary["checks"]}
    assert len(checks) == 7  # init and late exponents of three parametrizations, and muP's late spread
    for c in checks.values():
        assert c["verdict"] == "agrees", c
        assert c["ci"][1] > c["ci"][0], c
    # The contrast itself: SP's sharpness grows with width (measured 0.89), muP's and NTK's do not (-0.08 to 0.11).
    sp = checks["width exponent of the sharpness, sp, init (step 0)"]
    mup = checks["width exponent of the sharpness, mup, late (step 300)"]
    assert sp["measured"] > 0.7 and abs(mup["measured"]) < 0.15
    # SP's model error is the bend of its fitted A n + B (B / A about 13: 0.11), not the gap to the competitor.
    assert 0.05 < sp["tolerance"] < 0.2 and not sp["in_ci"], sp
    assert "Here the trajectories collapse" in (out / "report.md").read_text()


def _verdicts(ds, spec, out):
    return {c.name: c.verdict for c in sw.analyse(ds, spec, out)["checks"]}


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_checks(quick, tmp_path):
    out, summary = quick
    ds, spec = io.load(out), summary["spec"]
    init, late = "init (step 0)", "late (step 300)"
    # Widths in the wrong order: SP's sharpness falls with the width label, which no A n + B law does.
    reversed_ = ds.assign_coords(width=ds["width"].values[::-1].copy())
    verdicts = _verdicts(reversed_, spec, tmp_path)
    for when in (init, late):
        assert verdicts[f"width exponent of the sharpness, sp, {when}"] == "disagrees", verdicts
    # Shuffled: SP's measured slope is -0.28, nowhere near 1.
    shuffled = ds.assign_coords(width=ds["width"].values[[2, 4, 0, 3, 1]])
    verdicts = _verdicts(shuffled, spec, tmp_path)
    for when in (init, late):
        assert verdicts[f"width exponent of the sharpness, sp, {when}"] != "agrees", verdicts
    # SP's results labelled muP: its exponents and its spread are SP's. (muP's are width-independent, so shuffling
    # the widths leaves them, rightly, as they were.)
    sp_as_mup = ds.copy()
    sp_as_mup["sharpness"] = ds["sharpness"].copy(data=ds["sharpness"].values.copy())
    sp_as_mup["sharpness"].loc[{"param": "mup"}] = ds["sharpness"].sel(param="sp").values
    verdicts = _verdicts(sp_as_mup, spec, tmp_path)
    for name in (f"width exponent of the sharpness, mup, {init}", f"width exponent of the sharpness, mup, {late}",
                 "spread of log sharpness across widths, mup, step 300"):
        assert verdicts[name] != "agrees", verdicts
    # muP's results labelled SP: a flat sharpness fits A n + B only with B / A far beyond the widths, so its model
    # error takes in 0 as well: SP's exponent is not established.
    mup_as_sp = ds.copy()
    mup_as_sp["sharpness"] = ds["sharpness"].copy(data=ds["sharpness"].values.copy())
    mup_as_sp["sharpness"].loc[{"param": "sp"}] = ds["sharpness"].sel(param="mup").values
    verdicts = _verdicts(mup_as_sp, spec, tmp_path)
    for when in (init, late):
        assert verdicts[f"width exponent of the sharpness, sp, {when}"] != "agrees", verdicts
