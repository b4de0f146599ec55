"""The four scaling regimes from simulation (the ``width-scaling`` experiment at quick size) against their exponents,
the checks' power to fail on a wrong simulation or a wrong theory, and the random-feature machinery they rest on."""

import json

import jax
import numpy as np
import pytest

from dynsim import experiments, io
from dynsim import ridge as rf
from dynsim.experiments import width_scaling
from dynsim.spec import SpecError
from dynsim.theory import kernel_regression as kr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("width-scaling")
    return experiments.run("width-scaling", quick=True, out=out, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_four_regimes_agree_with_their_exponents_at_quick_size(quick_run):
    out, summary = quick_run
    checks = {c["name"]: c for c in summary["checks"]}
    analysis = summary["spec"]["analysis"]
    resolution = lambda resource: kr.resolution_limited_exponent(analysis["alpha"], analysis["beta"], resource)
    expected = {"width, P >> N": (resolution("width"), 1.0), "n_train, N >> P": (resolution("n_train"), 1.0),
                "width, N >> P": (1.0, resolution("width")), "n_train, P >> N": (1.0, resolution("n_train"))}
    for curve, (exponent, competing) in expected.items():
        check = checks[f"exponent, {curve}"]
        # Same closed forms: float64 round-off (default rel 1e-6).
        assert check["predicted"] == pytest.approx(exponent) and check["competing"] == pytest.approx(competing)
        # The competitor is one the check can rule out: the regimes' exponents differ by more than the CI plus the
        # model error on both sides.
        assert abs(exponent - competing) > (check["ci"][1] - check["ci"][0]) / 2 + 2 * check["tolerance"], check
        expected_regime = "variance" if exponent == 1.0 else "resolution"
        assert summary["regimes"][curve].startswith(expected_regime), summary["regimes"][curve]
    assert len(checks) == 8
    assert all(c["verdict"] == "agrees" for c in summary["checks"]), [c for c in summary["checks"]
                                                                     if c["verdict"] != "agrees"]
    for c in summary["checks"]:  # every check has a real interval and a stated model error
        assert c["ci"][0] < c["measured"] < c["ci"][1] and c["tolerance"] >= 0 and c["reason"], c


@pytest.mark.slow
def test_quick_run_writes_a_self_describing_store_and_report(quick_run):
    out, summary = quick_run
    for name in ("summary.json", "report.md", "width_scaling.png", "results.nc"):
        assert (out / name).exists(), name
    ds = io.load(out)
    analysis = summary["spec"]["analysis"]
    assert ds["test_loss"].dims == ("width", "n_train", "seed")
    assert ds.sizes["seed"] == analysis["limit_seeds"]
    assert json.loads(ds.attrs["spec"])["experiment"] == "width-scaling"
    # Exactly the four curves' cells hold full solves, for the curve's seeds (a cell two curves share holds the same
    # members); each cell's one-side-infinite loss is drawn for every seed.
    seeds = {}
    for curve in width_scaling.CURVES:
        for n, p in zip(*width_scaling.curve_points(analysis, curve)):
            seeds[(int(n), int(p))] = max(seeds.get((int(n), int(p)), 0), width_scaling.curve_seeds(analysis, curve))
            assert bool(np.isfinite(ds[width_scaling.curve_limit(curve)].sel(width=n, n_train=p)).all()), (curve, n, p)
    filled = np.isfinite(ds["test_loss"]).sum("seed")
    assert int((filled > 0).sum()) == len(seeds)
    assert all(int(filled.sel(width=n, n_train=p)) == s for (n, p), s in seeds.items())
    report = (out / "report.md").read_text()
    assert "agrees" in report and "truncation alone" in report


# --- The checks fail on a wrong simulation or a wrong theory (the quick run's results, analysed again) -------------


def _points(analysis, curve):
    varied = width_scaling.CURVES[curve][0]
    n, p = width_scaling.curve_points(analysis, curve)
    return n, p, (n if varied == "width" else p).astype(float)


def _relabel_widths(ds, analysis, mapping):
    """The widths' labels permuted: each loss is filed under another width."""
    return ds.assign_coords(width=[mapping.get(int(w), int(w)) for w in ds["width"].values]).sortby("width")


def _scale_curve(ds, analysis, curve, factor):
    """``curve``'s plotted quantity multiplied by ``factor(x) [K]``: the loss and its limit on a resolution-limited
    curve, the excess over the limit (and its control variate) on a variance-limited one."""
    ds = ds.copy(deep=True)
    _, side, _ = width_scaling.CURVES[curve]
    limit = width_scaling.curve_limit(curve)
    n, p, x = _points(analysis, curve)
    for a, b, f in zip(n, p, factor(x)):
        cell = dict(width=a, n_train=b)
        loss, z = ds["test_loss"].loc[cell].values, ds[limit].loc[cell].values
        if side == "large":
            ds["test_loss"].loc[cell], ds[limit].loc[cell] = loss * f, z * f
        else:
            ds["test_loss"].loc[cell] = z + (loss - z) * f
            ds["width_fluctuation"].loc[cell] = ds["width_fluctuation"].loc[cell].values * f
    return ds


def _verdicts(ds, spec, out):
    return {c.name: c.verdict for c in width_scaling.analyse(ds, spec, out)["checks"]}


@pytest.fixture(scope="module")
def results(quick_run):
    out, summary = quick_run
    return io.load(out), summary["spec"]


@pytest.mark.slow
def test_shuffled_widths_disagree(results, tmp_path):
    ds, spec = results
    # 16 <-> 128 on the resolution-limited curve, 256 <-> 1024 on the variance-limited one (no other curve's cells).
    verdicts = _verdicts(_relabel_widths(ds, spec["analysis"], {16: 128, 128: 16, 256: 1024, 1024: 256}), spec,
                         tmp_path)
    for name in ("exponent, width, P >> N", "deterministic equivalent as n -> inf, width, P >> N",
                 "exponent, width, N >> P", "1/n coefficient over the limit, width, N >> P"):
        assert verdicts[name] == "disagrees", (name, verdicts)
    assert verdicts["exponent, n_train, N >> P"] == "agrees"  # the curves in P do not read those widths


@pytest.mark.slow
@pytest.mark.parametrize("curve", list(width_scaling.CURVES))
def test_the_competing_regimes_law_disagrees(results, tmp_path, curve):
    ds, spec = results
    analysis = spec["analysis"]
    _, side, _ = width_scaling.CURVES[curve]
    predicted = width_scaling.predicted_exponent(analysis, curve)
    competing = 1.0 if side == "large" else float(kr.resolution_limited_exponent(
        analysis["alpha"], analysis["beta"], width_scaling.CURVES[curve][0]))
    # The curve's measurements tilted by x^(predicted - competing): the same draws following the other regime.
    substituted = _scale_curve(ds, analysis, curve, lambda x: (x / x[0]) ** (predicted - competing))
    summary = width_scaling.analyse(substituted, spec, tmp_path)
    check = next(c for c in summary["checks"] if c.name == f"exponent, {curve}")
    assert check.verdict == "disagrees", check
    assert "not " + width_scaling.CURVES[curve][2] in summary["regimes"][curve], summary["regimes"][curve]


@pytest.mark.slow
def test_losses_off_by_a_quarter_disagree_with_the_equivalent(results, tmp_path):
    ds, spec = results
    scaled = ds.copy(deep=True)
    for name in rf.NAMES:
        scaled[name] = scaled[name] * 1.25
    verdicts = _verdicts(scaled, spec, tmp_path)
    for curve, (_, side, _) in width_scaling.CURVES.items():
        if side == "large":
            assert verdicts[f"deterministic equivalent as n -> inf, {curve}"] == "disagrees", verdicts
        assert verdicts[f"exponent, {curve}"] == "agrees", verdicts  # a factor leaves exponents alone


@pytest.mark.slow
def test_an_equivalent_off_by_a_fifth_disagrees(results, tmp_path, monkeypatch):
    ds, spec = results
    exact = kr.rf_excess_risk
    monkeypatch.setattr(kr, "rf_excess_risk", lambda *args, **kwargs: 1.2 * exact(*args, **kwargs))
    verdicts = _verdicts(ds, spec, tmp_path)
    for curve in ("width, P >> N", "n_train, N >> P"):
        assert verdicts[f"deterministic equivalent as n -> inf, {curve}"] == "disagrees", verdicts


@pytest.mark.slow
def test_a_coefficient_off_by_two_disagrees(results, tmp_path, monkeypatch):
    ds, spec = results
    variance = [c for c, (_, side, _) in width_scaling.CURVES.items() if side == "small"]
    doubled = ds
    for curve in variance:  # the simulated excess doubled
        doubled = _scale_curve(doubled, spec["analysis"], curve, lambda x: np.full(x.shape, 2.0))
    verdicts = _verdicts(doubled, spec, tmp_path)
    assert all(verdicts[f"1/n coefficient over the limit, {c}"] == "disagrees" for c in variance), verdicts
    exact = kr.variance_limited_coefficient  # the theory's coefficient doubled
    monkeypatch.setattr(kr, "variance_limited_coefficient",
                        lambda *args, **kwargs: (lambda r: (r[0], 2 * r[1]))(exact(*args, **kwargs)))
    verdicts = _verdicts(ds, spec, tmp_path)
    assert all(verdicts[f"1/n coefficient over the limit, {c}"] == "disagrees" for c in variance), verdicts


# --- Specs the analysis cannot use are refused before anything is solved ------------------------------------------


@pytest.mark.parametrize("sets, match", [
    (["analysis.alpha=0.4"], "analysis.alpha"),
    (["analysis.seeds=1"], "analysis.seeds"),
    (["analysis.variance_seeds=1"], "analysis.variance_seeds"),
    (["analysis.limit_seeds=4"], "analysis.limit_seeds"),
    (["analysis.large=100"], "analysis.large"),
    (["analysis.colour=3"], "unknown spec key 'analysis.colour'"),
    (["analysis.variance_sizes=[1, 2]"], "analysis.variance_sizes"),
    (["analysis.resolution_sizes=[64, 32, 16]"], "analysis.resolution_sizes"),
    (["analysis.ridge=0.01"], "analysis.ridge"),
    (["analysis.alpha=0.75", "analysis.beta=0.25"], "cannot tell the regimes apart"),
    (["analysis.n_latent=100"], "analysis.n_latent"),
    (["train.steps=10"], "not used by width-scaling"),
])
def test_bad_specs_are_refused_with_one_sentence(sets, match):
    with pytest.raises(SpecError, match=match) as info:
        experiments.resolve_spec("width-scaling", quick=True, sets=sets)
    assert str(info.value).count(". ") == 0, str(info.value)  # one sentence


def test_the_quick_spec_is_accepted_and_its_regimes_differ():
    _, spec = experiments.resolve_spec("width-scaling", quick=True)
    analysis = spec["analysis"]
    for varied in ("width", "n_train"):
        gap = abs(float(kr.resolution_limited_exponent(analysis["alpha"], analysis["beta"], varied)) - 1.0)
        assert gap >= width_scaling.MIN_EXPONENT_GAP


# --- The estimator and the random-feature machinery ----------------------------------------------------------------


@pytest.mark.slow
def test_control_variate_intervals_cover_the_mean():
    # Draws shaped like the P >> N curve's: z log-normal with 35% spread (a heavy right tail), y = b z plus 1% noise,
    # 8 full seeds and 256 limit-only ones. The estimate is unbiased and its 95% interval covers the true mean.
    rng = np.random.default_rng(1)
    x, b = np.array([16.0, 32.0]), np.array([1.01, 1.02])
    mean_z = np.exp(0.35**2 / 2)  # E[exp(0.35 g)]
    covered, estimates = 0, []
    for _ in range(200):
        z = np.exp(0.35 * rng.standard_normal((256, 2)))
        y = b * z[:8] + 0.01 * rng.standard_normal((8, 2))
        point, lo, hi = width_scaling.estimate(width_scaling.Samples(x, y, z, b), lambda m, zbar: m[:, 0], rng)
        covered += lo <= b[0] * mean_z <= hi
        estimates.append(point)
    # Binomial noise of 200 intervals at 95%: sd 1.5%; 0.90 is 3.3 sd below.
    assert covered / 200 >= 0.90, covered
    # Unbiased: the mean of 200 estimates within 4 standard errors of the truth.
    assert abs(np.mean(estimates) - b[0] * mean_z) < 4 * np.std(estimates) / np.sqrt(200)


@pytest.mark.slow
def test_limit_losses_are_the_limits_of_the_same_draws():
    # The nested factorisations against least squares on each seed's own draws (rf.draw, as member_losses draws them).
    model = rf.PowerLawRF(n_latent=64, alpha=0.9, beta=0.3, noise_var=0.1)
    lam, coefs = model.spectrum()
    data = rf.limit_losses(model, [10, 20], range(3), "infinite_data_loss")
    width = rf.limit_losses(model, [40, 30], range(3), "infinite_width_loss")
    risk = lambda beta_hat: float(lam @ (beta_hat - coefs) ** 2)
    with rf._float64():
        for seed in range(3):
            w, x, y = (np.asarray(a) for a in rf.draw(model, jax.random.key(seed), 20, 40))
            for k, n in enumerate([10, 20]):  # P -> inf: least squares of the target on the first n features
                g = np.sqrt(lam)[:, None] * w[:, :n]
                c = np.linalg.lstsq(g, np.sqrt(lam) * coefs, rcond=None)[0]
                # float64 round-off amplified by the Gram matrices' condition numbers (<= 1e6 here): 1e-8 relative.
                assert data[k, seed] == pytest.approx(risk(w[:, :n] @ c), rel=1e-8)
            for k, p in enumerate([40, 30]):  # N -> inf: the minimum-norm interpolant of the first p samples
                assert width[k, seed] == pytest.approx(risk(np.linalg.pinv(x[:p]) @ y[:p]), rel=1e-8)
    with pytest.raises(ValueError, match="sizes must lie in"):
        rf.limit_losses(model, [64], range(2), "infinite_width_loss")


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
    ds = rf.solve(model, [16], [10, 20, 40], ridges=[0.0, 1e-2], seeds=[0, 1], progress=False)  # one program
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
