"""The four scaling regimes from simulation (the ``width-scaling`` experiment at quick size) against their exponents,
and the random-feature machinery they rest on."""

import json

import numpy as np
import pytest

from dynsim import experiments, io
from dynsim import random_features as rf
from dynsim.experiments import width_scaling
from dynsim.spec import SpecError
from dynsim.theory import kernel_regression as kr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("width-scaling")
    return experiments.run("width-scaling", quick=True, out=out, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_four_regimes_have_their_exponents(quick_run):
    out, summary = quick_run
    checks = {c["name"]: c for c in summary["checks"]}
    analysis = summary["spec"]["analysis"]
    resolution = lambda resource: kr.resolution_limited_exponent(analysis["alpha"], analysis["beta"], resource)
    expected = {"width, P >> N": resolution("width"), "n_train, N >> P": resolution("n_train"), "width, N >> P": 1.0,
                "n_train, P >> N": 1.0}
    for curve, exponent in expected.items():
        check = checks[f"exponent, {curve}"]
        assert check["predicted"] == pytest.approx(exponent)  # same closed form: float64 round-off (default rel 1e-6)
        # Finite-size bias of the asymptotic exponent at quick sizes is <= 0.06 (the deterministic equivalent's own
        # slope over the same points), seed noise about 0.05: +-0.15 (the band the regimes are told apart by, since
        # the variance- and resolution-limited exponents differ by 0.5 here).
        assert abs(check["measured"] - exponent) < 0.15, check
        expected_regime = "variance" if exponent == 1.0 else "resolution"
        assert summary["regimes"][curve].startswith(expected_regime), summary["regimes"][curve]
    assert all(c["agrees"] for c in summary["checks"]), [c for c in summary["checks"] if not c["agrees"]]


@pytest.mark.slow
def test_quick_run_writes_a_self_describing_store_and_report(quick_run):
    out, summary = quick_run
    for name in ("summary.json", "report.md", "width_scaling.png", "results.nc"):
        assert (out / name).exists(), name
    ds = io.load(out)
    assert ds["test_loss"].dims == ("width", "n_train", "seed")
    assert json.loads(ds.attrs["spec"])["experiment"] == "width-scaling"
    # Exactly the four curves' cells are filled (a cell two curves share holds the same members).
    cells = {(int(n), int(p)) for curve in width_scaling.CURVES
             for n, p in zip(*width_scaling.curve_points(summary["spec"]["analysis"], curve))}
    filled = np.isfinite(ds["test_loss"]).all("seed")
    assert int(filled.sum()) == len(cells)
    assert all(bool(filled.sel(width=n, n_train=p)) for n, p in cells)
    assert json.loads((out / "summary.json").read_text())["experiment"] == "width-scaling"


@pytest.mark.parametrize("sets, match", [
    (["analysis.alpha=0.4"], "alpha"),
    (["analysis.seeds=1"], "seeds"),
    (["analysis.large=100"], "large"),
    (["analysis.colour=3"], "unknown spec key 'analysis.colour'"),
    (["analysis.variance_sizes=[1, 2]"], "variance_sizes"),
    (["train.steps=10"], "not used by width-scaling"),
])
def test_bad_specs_are_refused_with_one_sentence(sets, match):
    with pytest.raises(SpecError, match=match):
        experiments.resolve_spec("width-scaling", quick=True, sets=sets)


def test_width_fluctuation_is_a_zero_mean_control_variate():
    model = rf.PowerLawRF(n_latent=512, alpha=1.25, beta=0.0)
    out = rf.member_losses(model, [1024], [32], range(24), [0.0], limits=("infinite_width_loss",))
    excess = out["test_loss"][0, :, 0] - out["infinite_width_loss"][0, :, 0]
    fluctuation = out["width_fluctuation"][0, :, 0]
    # Zero mean: within 4 standard errors of 0 over 24 draws.
    assert abs(fluctuation.mean()) < 4 * fluctuation.std(ddof=1) / np.sqrt(fluctuation.size)
    # It carries the draw-to-draw noise: subtracting it shrinks the spread (O(1/sqrt(N)) -> O(1/N): by ~3x here).
    assert np.std(excess - fluctuation) < 0.5 * np.std(excess)


def test_padding_does_not_change_a_member():
    # A member's draws come from per-unit and per-sample keys, so padding it inside a larger group changes nothing.
    model = rf.PowerLawRF(n_latent=256, noise_var=0.1)
    alone = rf.member_losses(model, [40], [60], [3], [0.0, 1e-3])
    padded = rf.member_losses(model, [40, 90], [60, 120], [3], [0.0, 1e-3])
    for name in rf.NAMES:
        np.testing.assert_allclose(padded[name][0], alone[name][0], rtol=1e-9)  # float64 round-off of the solves


def test_sweep_returns_the_grid():
    model = rf.PowerLawRF(n_latent=64)
    ds = rf.sweep(model, [16], [10, 20, 40], ridges=[0.0, 1e-2], seeds=[0, 1], progress=False)  # one program
    assert ds["test_loss"].dims == ("width", "n_train", "ridge", "seed")
    assert ds["test_loss"].shape == (1, 3, 2, 2) and np.all(np.isfinite(ds["test_loss"]))
    # The grid holds the same numbers as the members computed alone.
    alone = rf.member_losses(model, [16], [20], [1], [1e-2])["test_loss"][0, 0, 0]
    np.testing.assert_allclose(ds["test_loss"].sel(width=16, n_train=20, ridge=1e-2, seed=1), alone, rtol=1e-9)


def test_nearly_linear_erf_features_give_the_linear_risk():
    # Pre-activations have variance sum(lambda) / M ~ 3e-3, where erf(u) = (2 / sqrt(pi)) u (1 - u^2 / 3 + ...): the
    # ridgeless fit is scale-free, so erf features fit like linear ones up to ~1e-3 relative.
    linear = rf.PowerLawRF(n_latent=512, features="linear")
    erf = rf.PowerLawRF(n_latent=512, features="erf", n_test=8192)
    exact = rf.member_losses(linear, [64], [128], range(4), [0.0], limits=())["test_loss"][0, :, 0]
    sampled = rf.member_losses(erf, [64], [128], range(4), [0.0], limits=())["test_loss"][0, :, 0]
    # erf's risk is a mean over n_test Gaussian test errors: relative standard error sqrt(2 / n_test) = 1.6%; 4 of
    # them plus the 1e-3 nonlinearity.
    np.testing.assert_allclose(sampled, exact, rtol=4 * np.sqrt(2 / 8192) + 1e-3)
