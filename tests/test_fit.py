"""Tests for dynsim.fit: power-law / line fits with bootstrap confidence intervals.

All data are synthetic with a known truth; every random draw uses a fixed seed, so the tests are deterministic. The
statistical tolerances are nevertheless chosen so that they would also pass for the overwhelming majority of seeds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dynsim import fit

NAN = float("nan")

# Shared design: 10 log-spaced abscissae over three decades.
X = np.logspace(1.0, 4.0, 10)
LX = np.log(X)
SXX = float(np.sum((LX - LX.mean()) ** 2))


def _lognormal(shape: tuple[int, ...], sigma: float, seed: int) -> np.ndarray:
    """Multiplicative noise ``exp(sigma * N(0, 1))``."""
    return np.exp(sigma * np.random.default_rng(seed).standard_normal(shape))


def _ols_slope_se(sigma: float, n_seeds: int) -> float:
    """Standard error of the OLS slope of ``log(mean_s y)`` on ``log x``.

    With multiplicative lognormal noise of log-scale ``sigma``, ``log(mean over S seeds)`` has noise of standard
    deviation ``~ sigma / sqrt(S)`` at each x (delta method), and the OLS slope's standard error is that divided by
    ``sqrt(sum_k (log x_k - mean)^2)``.
    """
    return sigma / math.sqrt(n_seeds * SXX)


# ----------------------------------------------------------------------------------------------------------------------
# power_law without offset
# ----------------------------------------------------------------------------------------------------------------------


def test_power_law_seed_replicates_recovers_exponent():
    sigma, n_seeds = 0.05, 8
    y = 3.0 * X**-0.7 * _lognormal((n_seeds, X.size), sigma, seed=1)
    res = fit.power_law(X, y)

    se = _ols_slope_se(sigma, n_seeds)
    # 4 standard errors: a Gaussian estimator misses this band with probability 6e-5.
    assert abs(res.exponent - 0.7) < 4 * se
    # Intercept SE = sigma/sqrt(S) * sqrt(1/K + mean(log x)^2 / Sxx); add sigma^2 for the log-of-mean bias
    # (log E[exp(sigma Z)] = sigma^2 / 2, shared by all x so it only moves the prefactor).
    se_log_c = sigma / math.sqrt(n_seeds) * math.sqrt(1 / X.size + LX.mean() ** 2 / SXX)
    assert abs(math.log(res.prefactor) - math.log(3.0)) < 4 * se_log_c + sigma**2
    assert res.offset == 0.0
    # A 95% interval covers the truth for 95% of datasets; with this fixed seed it does (deterministic check).
    lo, hi = res.exponent_ci
    assert lo < 0.7 < hi
    assert res.prefactor_ci[0] < 3.0 < res.prefactor_ci[1]
    # The bootstrap interval width should be of the order of the analytical one (2 * 1.96 * se); a factor 3 either
    # way allows for the small-sample (S = 8) variability of the bootstrap spread.
    assert (2 * 1.96 * se) / 3 < hi - lo < 3 * (2 * 1.96 * se)
    assert res.n_boot == 1000 and res.level == 0.95


def test_power_law_single_series_residual_bootstrap():
    sigma = 0.05
    y = 3.0 * X**-0.7 * _lognormal((X.size,), sigma, seed=2)
    res = fit.power_law(X, y, level=0.9)

    se = _ols_slope_se(sigma, 1)  # single series: no averaging over seeds
    assert abs(res.exponent - 0.7) < 4 * se  # 4 SE: miss probability 6e-5 for a Gaussian estimator
    assert res.exponent_ci[0] < 0.7 < res.exponent_ci[1]  # fixed-seed check of a 90% interval
    assert res.n_boot == 1000 and res.level == 0.9
    # A 2-D array with a single seed is the same data, so it takes the same (residual-bootstrap) path.
    assert fit.power_law(X, y[None, :], level=0.9) == res


def test_power_law_noiseless_exact():
    y = 3.0 * X**-0.7
    for data in (y, np.tile(y, (5, 1))):
        res = fit.power_law(X, data, n_boot=50)
        # Closed-form least squares on exact data: only floating-point rounding (~1e-15) remains; 1e-10 is generous.
        assert res.exponent == pytest.approx(0.7, abs=1e-10)
        assert res.prefactor == pytest.approx(3.0, rel=1e-10)
        # Every bootstrap replicate sees the same exact data (identical seeds / zero residuals): degenerate CI.
        assert res.exponent_ci == pytest.approx((0.7, 0.7), abs=1e-10)
        assert res.prefactor_ci == pytest.approx((3.0, 3.0), rel=1e-10)
        np.testing.assert_allclose(res.predict(X), y, rtol=1e-10)


def test_power_law_positive_exponent_sign_convention():
    growing = fit.power_law(X, 2.0 * X**0.3, n_boot=0)
    assert growing.exponent == pytest.approx(-0.3, abs=1e-10)  # exact data, rounding only
    decaying = fit.power_law(X, 2.0 * X**-0.3, n_boot=0)
    assert decaying.exponent == pytest.approx(0.3, abs=1e-10)


def test_power_law_without_bootstrap_has_nan_ci():
    res = fit.power_law(X, 3.0 * X**-0.7, n_boot=0)
    assert res.n_boot == 0
    for ci in (res.exponent_ci, res.prefactor_ci, res.offset_ci):
        assert all(math.isnan(v) for v in ci)


def test_power_law_ignores_nan_and_drops_bad_points():
    y = np.tile(3.0 * X**-0.7, (4, 1))
    y[0, 1] = NAN  # one missing seed: the mean of the others is still exact
    y[:, 2] = NAN  # a column with no data: dropped
    y[:, 5] = -1.0  # non-positive mean: dropped
    res = fit.power_law(X, y, n_boot=100)
    assert res.exponent == pytest.approx(0.7, abs=1e-10)  # remaining points are exact
    assert res.prefactor == pytest.approx(3.0, rel=1e-10)
    assert res.n_boot == 100

    # 1-D series with NaN and a zero: dropped, residual bootstrap runs on the remaining points.
    y1 = 3.0 * X**-0.7
    y1[[0, 4]] = [NAN, 0.0]
    res1 = fit.power_law(X, y1, n_boot=100)
    assert res1.exponent == pytest.approx(0.7, abs=1e-10)  # exact data: float64 rounding only


def test_power_law_bootstrap_skips_failed_refits():
    # Column 1..8 are NaN except in seed 0, so resamples without seed 0 keep only points 0 and 9 (still 2 points),
    # while the offset fit (needs 3) fails on them and those replicates are skipped.
    y = np.tile(2.0 * X**-0.5 + 0.1, (3, 1))
    y[1:, 1:9] = NAN
    res = fit.power_law(X, y, offset=True, n_boot=200, seed=3)
    # P(resample misses seed 0) = (2/3)^3 = 0.30, so ~60 of 200 fail; 0 < n_boot < 200 holds with overwhelming odds.
    assert 0 < res.n_boot < 200


def test_power_law_seed_reproducible_and_axis_seed():
    y = 3.0 * X**-0.7 * _lognormal((6, X.size), 0.05, seed=4)
    a = fit.power_law(X, y, seed=11)
    assert fit.power_law(X, y, seed=11) == a
    assert fit.power_law(X, y, seed=12).exponent_ci != a.exponent_ci
    assert fit.power_law(X, y.T, seed=11, axis_seed=1) == a
    assert fit.power_law(X, y, seed=11, axis_seed=0) == a


# ----------------------------------------------------------------------------------------------------------------------
# power_law with offset
# ----------------------------------------------------------------------------------------------------------------------


def _offset_fit_se(x: np.ndarray, c: float, alpha: float, y_inf: float, sigma: float, n_seeds: int) -> np.ndarray:
    """Delta-method standard errors of ``(y_inf, log c, alpha)`` for the log-space offset fit.

    The fit minimises ``sum_k [log ybar_k - log f_k]^2`` with ``f_k = c x_k^-alpha + y_inf``. Log-noise of variance
    ``sigma^2 / S`` on the seed mean gives ``Cov = (J^T J)^-1 sigma^2 / S``, with ``J`` the Jacobian of ``log f`` with
    respect to ``(y_inf, log c, alpha)``: rows ``(1, p_k, -p_k log x_k) / f_k`` where ``p_k = c x_k^-alpha``.
    """
    p = c * x**-alpha
    f = p + y_inf
    jac = np.stack([np.ones_like(x), p, -p * np.log(x)], axis=1) / f[:, None]
    return np.sqrt(np.diag(np.linalg.inv(jac.T @ jac))) * sigma / math.sqrt(n_seeds)


def test_power_law_offset_recovers_exponent_and_offset():
    sigma, n_seeds = 0.01, 8
    truth = 2.0 * X**-0.5 + 0.1
    y = truth * _lognormal((n_seeds, X.size), sigma, seed=5)
    res = fit.power_law(X, y, offset=True, n_boot=300)

    se_offset, se_log_c, se_alpha = _offset_fit_se(X, 2.0, 0.5, 0.1, sigma, n_seeds)
    # 4 delta-method standard errors (they match a 1000-dataset Monte Carlo to within 5%): miss probability ~1e-4.
    assert abs(res.exponent - 0.5) < 4 * se_alpha
    assert abs(res.offset - 0.1) < 4 * se_offset
    assert abs(math.log(res.prefactor) - math.log(2.0)) < 4 * se_log_c
    # Fixed-seed check that the 95% intervals cover the truth.
    assert res.exponent_ci[0] < 0.5 < res.exponent_ci[1]
    assert res.offset_ci[0] < 0.1 < res.offset_ci[1]
    assert res.prefactor_ci[0] < 2.0 < res.prefactor_ci[1]
    assert res.n_boot == 300
    # Student-t interval about the estimate: symmetric (log-symmetric for the prefactor) up to float64 rounding.
    assert sum(res.exponent_ci) / 2 == pytest.approx(res.exponent, rel=1e-12)
    assert math.log(res.prefactor_ci[0] * res.prefactor_ci[1]) / 2 == pytest.approx(math.log(res.prefactor), rel=1e-12)
    # Its width is 2 t_7 sqrt(8/7) SE (seed bootstrap, S = 8). The bootstrap variance of one dataset has S - 1 = 7
    # degrees of freedom: (SE_boot / SE)^2 ~ chi2_7 / 7, below (1/3)^2 with probability 0.2%, above 3^2 with 1e-10.
    expected = 2 * 2.365 * math.sqrt(8 / 7) * se_alpha
    assert expected / 3 < res.exponent_ci[1] - res.exponent_ci[0] < 3 * expected


def test_power_law_offset_noiseless():
    truth = 2.0 * X**-0.5 + 0.1
    res = fit.power_law(X, truth, offset=True, n_boot=0)
    # Levenberg-Marquardt stops once its steps are below 1e-9 in its O(1) coordinates (alpha, log of the power-law
    # part and y_inf relative to the data scale) and converges quadratically: 1e-6 bounds the error comfortably.
    assert res.exponent == pytest.approx(0.5, abs=1e-6)
    assert res.offset == pytest.approx(0.1, abs=1e-6)
    assert res.prefactor == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(res.predict(X), truth, rtol=1e-6)  # the bound above, on the fitted curve

    # Without a true offset the search must find y_inf ~ 0 (the lower bound), not a spurious interior optimum.
    res0 = fit.power_law(X, 2.0 * X**-0.5, offset=True, n_boot=0)
    assert res0.offset == pytest.approx(0.0, abs=1e-6 * 2.0 * X.max() ** -0.5)  # same tolerance, relative to min(y)
    assert res0.exponent == pytest.approx(0.5, abs=1e-6)

    # Identical seeds: every bootstrap refit sees the exact curve, so the intervals collapse onto the truth.
    rep = fit.power_law(X, np.tile(truth, (4, 1)), offset=True, n_boot=50)
    assert rep.n_boot == 50
    assert rep.exponent_ci == pytest.approx((0.5, 0.5), abs=1e-6)  # same bound as above
    assert rep.offset_ci == pytest.approx((0.1, 0.1), abs=1e-6)
    assert rep.prefactor_ci == pytest.approx((2.0, 2.0), rel=1e-6)


def test_power_law_offset_residual_bootstrap_runs():
    truth = 2.0 * X**-0.5 + 0.1
    y = truth * _lognormal((X.size,), 0.005, seed=6)
    res = fit.power_law(X, y, offset=True, n_boot=100)
    # Single series (S = 1): 4 delta-method standard errors, miss probability ~1e-4.
    assert abs(res.exponent - 0.5) < 4 * _offset_fit_se(X, 2.0, 0.5, 0.1, 0.005, 1)[2]
    assert res.n_boot > 90  # almost all refits succeed on 10 well-behaved points
    assert res.exponent_ci[0] <= res.exponent <= res.exponent_ci[1]

    # A dropped point (NaN) leaves 9 points for the fit and the residual bootstrap.
    y[3] = NAN
    dropped = fit.power_law(X, y, offset=True, n_boot=100)
    assert abs(dropped.exponent - 0.5) < 4 * _offset_fit_se(np.delete(X, 3), 2.0, 0.5, 0.1, 0.005, 1)[2]
    assert dropped.n_boot > 90 and dropped.exponent_ci[0] <= dropped.exponent <= dropped.exponent_ci[1]

    # Three points for three parameters: no residual degrees of freedom, so no interval.
    exact = fit.power_law(X[:3], y[:3], offset=True, n_boot=50)
    assert all(math.isnan(v) for v in exact.exponent_ci + exact.offset_ci + exact.prefactor_ci)


def test_power_law_offset_unidentified_exponent_does_not_fail():
    # The power-law part (x^-2 against y_inf = 0.1) rises above the 3% noise only at the first point or two, so the
    # exponent is hardly identified and the profile over it runs to the edge of the search. The fit must still
    # return finite values and a (wide) interval rather than fail.
    y = (X**-2.0 + 0.1) * _lognormal((X.size,), 0.03, seed=5032)
    res = fit.power_law(X, y, offset=True, n_boot=100)
    assert np.isfinite([res.exponent, res.prefactor, res.offset]).all()
    assert res.n_boot > 90 and res.exponent_ci[0] <= res.exponent <= res.exponent_ci[1]
    assert res.exponent_ci[1] - res.exponent_ci[0] > 1.0  # and the interval says so: wider than half the exponent


# ----------------------------------------------------------------------------------------------------------------------
# Coverage
# ----------------------------------------------------------------------------------------------------------------------

# (c, alpha, y_inf, sigma, seeds, offset). The offset law's power-law part falls from 0.1 to 1e-4 over x, against an
# offset of 0.1 and 1% noise: at the largest x it is far below the noise (a line through log(ybar - y_inf) collapses
# to y_inf = 0 on such data).
COVERAGE_CASES = {
    "no offset, 3 seeds": (3.0, 0.7, 0.0, 0.05, 3, False),
    "no offset, 8 seeds": (3.0, 0.7, 0.0, 0.05, 8, False),
    "no offset, one curve": (3.0, 0.7, 0.0, 0.05, 1, False),
    "offset, 8 seeds": (1.0, 1.0, 0.1, 0.01, 8, True),
    "offset, one curve": (1.0, 1.0, 0.1, 0.01, 1, True),
}


@pytest.mark.parametrize("case", list(COVERAGE_CASES))
def test_power_law_ci_coverage(case: str):
    """Over 200 datasets the nominal 95% intervals cover the true exponent, prefactor and offset 90% to 100% of the
    time: seed bootstrap (S = 3, 8) and residual bootstrap (one curve), with and without an offset.

    For honest intervals the hits are Binomial(200, 0.95), whose standard error is sqrt(0.95 * 0.05 / 200) = 1.5%, so
    the band's lower end, nominal - 5% = 0.90, lies 3.2 SE below: P(hits < 180) = 0.1%. An interval that really
    covers 85% passes with probability 2.5% (percentile intervals cover 75% with 3 seeds, 89% with 8). The estimates
    must also be unbiased: the mean over the datasets within 4 of its standard errors of the truth (miss probability
    6e-5); the log-of-mean bias sigma^2 / 2 only moves the prefactor (and y_inf by a factor 1 + 5e-5), not checked.
    """
    c, alpha, y_inf, sigma, n_seeds, offset = COVERAGE_CASES[case]
    n_datasets = 200
    truth = c * X**-alpha + y_inf
    hits = np.zeros(3)
    estimates = np.empty((n_datasets, 2))
    for i in range(n_datasets):
        y = truth * _lognormal((n_seeds, X.size), sigma, seed=3000 + i)
        res = fit.power_law(X, y if n_seeds > 1 else y[0], offset=offset, n_boot=200, level=0.95, seed=i)
        hits += [ci[0] <= v <= ci[1] for ci, v in
                 ((res.exponent_ci, alpha), (res.prefactor_ci, c), (res.offset_ci, y_inf))]
        estimates[i] = res.exponent, res.offset
    coverage = hits / n_datasets
    assert np.all((coverage >= 0.90) & (coverage <= 1.0)), coverage
    mean, se = estimates.mean(axis=0), estimates.std(axis=0, ddof=1) / math.sqrt(n_datasets)
    assert abs(mean[0] - alpha) < 4 * se[0]
    if offset:
        assert abs(mean[1] - y_inf) < 4 * se[1]


def test_power_law_seed_interval_is_student_t():
    """With seeds, the exponent's interval is ``alpha -+ t_{S-1} sqrt(S / (S - 1)) sd_boot``, which for a near-linear
    statistic of the seed mean is the textbook t interval ``-+ t_{S-1} s / sqrt(S)`` of the per-seed exponents.

    The bootstrap sd over 2000 replicates has Monte-Carlo noise 1/sqrt(2 * 2000) = 1.6%; the log-of-mean is linear in
    the per-seed log values up to O(sigma) = 5% relative corrections to the spread: 10% allows both.
    """
    n_seeds = 5
    y = 3.0 * X**-0.7 * _lognormal((n_seeds, X.size), 0.05, seed=8)
    res = fit.power_law(X, y, n_boot=2000)
    per_seed = np.array([fit.power_law(X, row, n_boot=0).exponent for row in y])
    half = (res.exponent_ci[1] - res.exponent_ci[0]) / 2
    t = 2.776  # t_4 at 0.975
    assert half == pytest.approx(t * per_seed.std(ddof=1) / math.sqrt(n_seeds), rel=0.1)
    assert sum(res.exponent_ci) / 2 == pytest.approx(res.exponent, rel=1e-12)  # centred on the estimate


def test_slope_residual_bootstrap_ci_coverage():
    """Over 40 datasets the 90% CI of :func:`fit.slope` on a single series covers the true slope at least 28 times.

    The residual bootstrap's percentile interval uses normal rather than Student-t quantiles, so its expected coverage
    is P(|t_10| < 1.645) = 0.87 with K = 12 points; hits are then Binomial(40, 0.87) and P(hits <= 27) = 0.13%, while
    an interval that is badly too narrow (true coverage 0.6) fails with probability > 99%.
    """
    x = np.linspace(0.0, 5.0, 12)
    hits = 0
    for i in range(40):
        y = 0.8 * x - 1.0 + 0.05 * np.random.default_rng(2000 + i).standard_normal(x.size)
        res = fit.slope(x, y, n_boot=400, level=0.9, seed=i)
        hits += res.slope_ci[0] <= 0.8 <= res.slope_ci[1]
    assert hits >= 28


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, kwargs",
    [
        (np.array([-1.0, 10.0, 100.0]), np.array([1.0, 0.5, 0.25]), {}),  # negative x
        (np.array([0.0, 10.0, 100.0]), np.array([1.0, 0.5, 0.25]), {}),  # zero x
        (np.array([1.0, np.nan, 100.0]), np.array([1.0, 0.5, 0.25]), {}),  # non-finite x
        (np.ones((2, 3)), np.ones(3), {}),  # 2-D x
        (np.array([10.0]), np.array([1.0]), {}),  # one point
        (np.array([10.0, 100.0]), np.array([1.0, 0.5]), {"offset": True}),  # two points with offset
        (np.array([10.0, 100.0, 1000.0]), np.array([1.0, np.nan, -1.0]), {}),  # one usable point
        (np.array([10.0, 100.0, 1000.0]), np.full((3, 3), np.nan), {}),  # no usable point
        (np.array([10.0, 10.0, 10.0]), np.array([1.0, 0.5, 0.25]), {}),  # no spread in x
        (np.array([10.0, 100.0, 1000.0]), np.array([1.0, 0.5]), {}),  # mismatched 1-D
        (np.array([10.0, 100.0, 1000.0]), np.ones((4, 2)), {}),  # mismatched 2-D
        (np.array([10.0, 100.0, 1000.0]), np.ones((2, 2, 3)), {}),  # 3-D y
        (np.array([10.0, 100.0, 1000.0]), np.ones(3), {"level": 1.0}),  # bad level
        (np.array([10.0, 100.0, 1000.0]), np.ones(3), {"n_boot": -1}),  # bad n_boot
    ],
)
def test_power_law_bad_input(x, y, kwargs):
    with pytest.raises(ValueError):
        fit.power_law(x, y, **kwargs)


@pytest.mark.parametrize(
    "x, y",
    [
        (np.array([1.0]), np.array([1.0])),  # one point
        (np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0])),  # mismatched
        (np.array([1.0, 2.0, 3.0]), np.array([[1.0, np.nan, np.nan], [np.nan, np.nan, np.nan]])),  # 1 usable point
        (np.array([np.inf, 2.0]), np.array([1.0, 2.0])),  # non-finite x
    ],
)
def test_slope_bad_input(x, y):
    with pytest.raises(ValueError):
        fit.slope(x, y)


# ----------------------------------------------------------------------------------------------------------------------
# slope
# ----------------------------------------------------------------------------------------------------------------------


def test_slope_on_bootstrap_rows():
    # Rows are bootstrap replicates of log lr* vs log width whose per-row slope is exactly b_r = -1 + delta_r, so the
    # CI must be the percentile interval of the b_r and the point estimate the slope of the row mean = mean(b_r).
    lw = np.log([64.0, 128.0, 256.0, 512.0, 1024.0])
    rng = np.random.default_rng(7)
    deltas = 0.1 * rng.standard_normal(500)
    intercepts = 2.0 + 0.3 * rng.standard_normal(500)
    rows = (-1.0 + deltas)[:, None] * lw + intercepts[:, None]
    res = fit.slope(lw, rows, level=0.9)

    # Exact linear rows: only floating-point rounding separates the fit from the construction; 1e-10 is generous.
    assert res.slope == pytest.approx(-1.0 + deltas.mean(), abs=1e-10)
    assert res.intercept == pytest.approx(intercepts.mean(), abs=1e-10)
    # Percentiles of exactly linear rows: float64 rounding only, as above.
    assert res.slope_ci == pytest.approx(tuple(np.percentile(-1.0 + deltas, [5.0, 95.0])), abs=1e-10)
    assert res.intercept_ci == pytest.approx(tuple(np.percentile(intercepts, [5.0, 95.0])), abs=1e-10)
    assert res.n_boot == 500 and res.level == 0.9


def test_slope_rows_with_missing_points():
    lw = np.log([64.0, 128.0, 256.0, 512.0])
    rows = np.tile(-0.5 * lw + 1.0, (4, 1))
    rows[0, 1:] = NAN  # one finite point: this row is skipped
    rows[1, 0] = NAN  # three finite points: still an exact fit
    rows[2, 3] = np.inf  # non-finite entries are ignored like NaN
    res = fit.slope(lw, rows)
    assert res.n_boot == 3
    assert res.slope == pytest.approx(-0.5, abs=1e-10)  # every usable point is exact
    assert res.slope_ci == pytest.approx((-0.5, -0.5), abs=1e-10)
    assert res.intercept_ci == pytest.approx((1.0, 1.0), abs=1e-10)


def test_slope_1d_residual_bootstrap():
    sigma = 0.05
    x = np.linspace(0.0, 5.0, 12)
    y = 0.8 * x - 1.0 + sigma * np.random.default_rng(0).standard_normal(x.size)
    res = fit.slope(x, y)
    se = sigma / math.sqrt(np.sum((x - x.mean()) ** 2))  # OLS slope standard error
    assert abs(res.slope - 0.8) < 4 * se  # 4 SE: miss probability 6e-5
    assert res.slope_ci[0] < 0.8 < res.slope_ci[1]  # fixed-seed check of the 95% interval
    assert res.n_boot == 1000
    np.testing.assert_allclose(res.predict(x), res.slope * x + res.intercept)

    no_boot = fit.slope(x, y, n_boot=0)
    assert no_boot.slope == res.slope and all(math.isnan(v) for v in no_boot.slope_ci)


# ----------------------------------------------------------------------------------------------------------------------
# agrees, verdict, regime, serialisation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ci, predicted, tolerance, expected",
    [
        ((0.4, 0.6), 0.5, 0.0, True),  # inside
        ((0.4, 0.6), 0.4, 0.0, True),  # on the lower edge (closed interval)
        ((0.4, 0.6), 0.6, 0.0, True),  # on the upper edge
        ((0.4, 0.6), 0.7, 0.0, False),  # above
        ((0.4, 0.6), 0.3, 0.0, False),  # below
        ((0.4, 0.6), 0.7, 0.15, True),  # above, rescued by tolerance
        ((0.4, 0.6), 0.2, 0.15, False),  # below, tolerance not enough
        ((0.5, 0.5), 0.5, 0.0, True),  # degenerate interval
        ((NAN, 0.6), 0.5, 1.0, False),  # NaN lower end
        ((0.4, NAN), 0.5, 1.0, False),  # NaN upper end
        ((0.4, 0.6), NAN, 1.0, False),  # NaN prediction
        ((0.4, 0.6), 0.5, NAN, False),  # NaN tolerance
    ],
)
def test_agrees_truth_table(ci, predicted, tolerance, expected):
    assert fit.agrees(ci, predicted, tolerance) is expected


@pytest.mark.parametrize(
    "ci, predicted, competitors, tolerance, expected",
    [
        ((0.4, 0.6), 0.5, (), 0.0, "agrees"),  # inside, no competitor
        ((0.4, 0.6), 0.5, (0.8, 0.2), 0.0, "agrees"),  # competitors outside on both sides
        ((0.4, 0.6), 0.5, (0.8, 0.55), 0.0, "inconclusive"),  # one competitor inside too
        ((0.4, 0.6), 0.5, (0.5,), 0.0, "inconclusive"),  # a competitor equal to the prediction
        ((0.4, 0.6), 0.6, (0.4,), 0.0, "inconclusive"),  # both on the (closed) edges
        ((0.4, 0.6), 0.5, (0.65,), 0.1, "inconclusive"),  # competitor brought in by the tolerance
        ((0.4, 0.6), 0.7, (), 0.0, "disagrees"),  # outside
        ((0.4, 0.6), 0.7, (0.5,), 0.0, "disagrees"),  # outside while a competitor is inside
        ((0.4, 0.6), 0.7, (), 0.15, "agrees"),  # outside, rescued by the tolerance
        ((0.5, 0.5), 0.5, (0.6,), 0.0, "agrees"),  # degenerate interval
        ((NAN, 0.6), 0.5, (), 0.0, "inconclusive"),  # nothing measured: neither agrees nor refutes
        ((0.4, NAN), 5.0, (), 0.0, "inconclusive"),
        ((NAN, NAN), 0.5, (0.5,), 0.0, "inconclusive"),
        ((0.4, 0.6), NAN, (0.5,), 0.0, "inconclusive"),  # nothing predicted
        ((0.4, 0.6), 0.5, (), NAN, "inconclusive"),  # NaN tolerance: the band is undefined
        ((0.4, 0.6), 0.5, (NAN,), 0.0, "agrees"),  # NaN competitors are ignored
        ((0.4, 0.6), 0.5, (NAN, 0.45), 0.0, "inconclusive"),
        ((0.4, 0.6), 0.9, (NAN,), 0.0, "disagrees"),
    ],
)
def test_verdict_truth_table(ci, predicted, competitors, tolerance, expected):
    assert fit.verdict(ci, predicted, competitors, tolerance) == expected


def test_verdict_arguments():
    assert fit.verdict((0.4, 0.6), 0.5) == "agrees"  # defaults: no competitors, no tolerance
    assert fit.verdict((0.4, 0.6), 0.5, competitors=(v for v in [0.55])) == "inconclusive"  # any iterable
    assert fit.verdict((0.4, 0.6), 0.5, competitors=np.array([0.9, 1.2])) == "agrees"
    assert fit.verdict(np.array([0.4, 0.6]), np.float64(0.5)) == "agrees"
    with pytest.raises(ValueError):
        fit.verdict((0.4, 0.6), 0.5, tolerance=-0.1)
    with pytest.raises(ValueError):
        fit.verdict((0.4, 0.5, 0.6), 0.5)  # type: ignore[arg-type]


def test_agrees_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fit.agrees((0.0, 1.0), 0.5, -0.1)
    with pytest.raises(ValueError):
        fit.agrees((0.0, 0.5, 1.0), 0.5, 0.1)  # type: ignore[arg-type]


def test_to_dict_is_json_serialisable():
    y = 3.0 * X**-0.7 * _lognormal((4, X.size), 0.05, seed=9)
    d = fit.power_law(X, y, n_boot=50).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"exponent", "prefactor", "offset", "exponent_ci", "prefactor_ci", "offset_ci", "n_boot", "level"}
    assert isinstance(d["exponent_ci"], list) and all(type(v) is float for v in d["exponent_ci"])

    ld = fit.slope(LX, np.log(y), level=0.8).to_dict()
    assert json.loads(json.dumps(ld)) == ld
    assert set(ld) == {"slope", "intercept", "slope_ci", "intercept_ci", "n_boot", "level"}


def test_mean_ci_covers_the_mean_and_shrinks_with_samples():
    rng = np.random.default_rng(1)
    small = rng.normal(3.0, 1.0, 16)
    large = rng.normal(3.0, 1.0, 1024)
    m_small, (lo_s, hi_s) = fit.mean_ci(small)
    m_large, (lo_l, hi_l) = fit.mean_ci(np.append(large, np.nan))  # non-finite entries are dropped
    assert lo_s < m_small < hi_s and lo_l < m_large < hi_l
    assert m_small == pytest.approx(small.mean())
    # A 95% CI of a mean is 2 * 1.96 * s / sqrt(n) wide (normal limit; the bootstrap's plug-in variance shrinks it by
    # sqrt((n - 1) / n)). 15% covers the Monte-Carlo noise of the 2.5% tails over 1000 resamples (about 3% of the
    # width) and the small-sample skew at n = 16.
    for v, (lo, hi) in ((small, (lo_s, hi_s)), (large, (lo_l, hi_l))):
        expected = 2 * 1.96 * v.std() / np.sqrt(v.size)
        assert (hi - lo) == pytest.approx(expected, rel=0.15)
    assert np.isnan(fit.mean_ci([np.nan])[0])


def test_regime_names_the_nearest_consistent_law_and_whether_the_ci_tells_the_laws_apart():
    laws = {"variance-limited": 1.0, "resolution-limited": 1.5}
    clear = fit.regime(1.07, (0.95, 1.2), laws)
    assert clear == fit.Regime("variance-limited", ("variance-limited",), False)
    both = fit.regime(1.3, (0.9, 1.6), laws)  # the CI covers both exponents
    assert both.name == "resolution-limited" and set(both.consistent) == set(laws) and both.ambiguous
    neither = fit.regime(2.5, (2.4, 2.6), laws, tolerance=0.1)  # the CI excludes both: no law is named
    assert neither == fit.Regime("", (), False)
    skewed = fit.regime(1.24, (1.22, 1.6), laws)  # nearer 1.0, but the interval rules 1.0 out
    assert skewed.name == "resolution-limited" and skewed.consistent == ("resolution-limited",)
    assert fit.regime(1.2, (1.0, 1.4), {"a": np.nan, "b": 1.5, "c": 1.1}).name == "c"
    assert fit.regime(float("nan"), (np.nan, np.nan), laws).name == ""


def test_docstring_examples_run():
    import doctest

    from dynsim.fit import _law, _power

    for module in (_power, _law):  # dynsim.fit re-exports them; their docstrings hold the examples
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_percentile_ci_leaves_out_replicates_that_measured_nothing():
    samples = np.array([np.nan, 3.0, 1.0, np.inf, 2.0, 5.0, 4.0])
    # The finite replicates' equal-tailed interval, as numpy computes it on them alone (same arithmetic: exact).
    assert fit.percentile_ci(samples, 0.5) == tuple(np.percentile([1.0, 2.0, 3.0, 4.0, 5.0], [25, 75]))
    lo, hi = fit.percentile_ci([np.nan, np.nan])
    assert np.isnan(lo) and np.isnan(hi)
