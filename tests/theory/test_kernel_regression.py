"""Deterministic equivalents of (random-feature) ridge regression against closed-form ridge simulations, the
resolution-limited exponents against the deterministic equivalent, and exact gradient-descent loss curves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynsim import ridge as rf
from dynsim.theory import kernel_regression as kr

MODEL = rf.PowerLawRF(n_latent=1024, alpha=0.75, beta=0.5, noise_var=0.05)
SEEDS = range(12)


# Each case also checks the limit along its larger side (the other one would need a large eigendecomposition).
@pytest.mark.parametrize("width, n_train, ridge, limit", [(160, 640, 0.0, "infinite_data_loss"),
                                                          (640, 160, 1e-4, "infinite_width_loss")])
def test_random_feature_ridge_matches_its_deterministic_equivalent(width, n_train, ridge, limit):
    lam, coefs = MODEL.spectrum()
    out = rf.member_losses(MODEL, [width], [n_train], SEEDS, [ridge], limits=(limit,))
    checks = {  # measured [S] -> deterministic equivalent
        "test_loss": kr.rf_excess_risk(lam, coefs, width, n_train, ridge, MODEL.noise_var),
        # N -> inf at fixed data: ridgeless latent regression (the ridge's weight falls like M / N).
        "infinite_width_loss": kr.excess_risk(lam, coefs, n_train, 0.0, MODEL.noise_var),
        # P -> inf at fixed features: the part of the target outside their span.
        "infinite_data_loss": kr.rf_excess_risk(lam, coefs, width, 1e15, 0.0, 0.0),
    }
    for name in ("test_loss", limit):
        theory = checks[name]
        measured = out[name][0, :, 0]
        # A draw fluctuates by O(1/sqrt(min(N, P))) around the mean; the seed spread estimates it and 4 standard
        # errors bound the mean's noise. The deterministic equivalent itself is off by O(1/min(N, P)) (3/160 ~ 2%).
        tolerance = 4 * measured.std(ddof=1) / np.sqrt(measured.size) + 3 / min(width, n_train) * theory
        assert abs(measured.mean() - theory) < tolerance, (name, measured.mean(), theory, tolerance)


def test_deterministic_equivalent_limits_and_duality():
    lam, coefs = kr.power_law_spectrum(4000, 0.75, 0.5)
    # N -> inf: random features become the latent ridge regression with ridge / (N proj_var).
    n = 1e9
    np.testing.assert_allclose(kr.rf_excess_risk(lam, coefs, n, 300, 1e-3 * n / lam.size, 0.1),
                               kr.excess_risk(lam, coefs, 300, 1e-3, 0.1), rtol=1e-5)  # O(P / N) corrections
    # Ridgeless: the effective ridge depends on min(N, P) only (the N <-> P duality of Maloney et al. 2022).
    np.testing.assert_allclose(kr.rf_effective_ridge(lam, 200, 800, 0.0), kr.rf_effective_ridge(lam, 800, 200, 0.0),
                               rtol=1e-12)
    # Under-parametrised least squares (M features, P > M, no ridge): E = sigma^2 M / (P - M), exactly.
    few = lam[:50]
    np.testing.assert_allclose(kr.excess_risk(few, coefs[:50], 200, 0.0, 0.3), 0.3 * 50 / 150, rtol=1e-12)
    # kappa solves its equation.
    kappa = kr.effective_ridge(lam, np.array([10, 100, 1000]), 1e-3)
    df1 = np.sum(lam / (lam + kappa[:, None]), axis=1)
    np.testing.assert_allclose(kappa, 1e-3 + kappa * df1 / np.array([10, 100, 1000]), rtol=1e-12)


@pytest.mark.parametrize("alpha, beta", [(0.75, 0.5), (0.75, 0.25), (1.0, 2.0)])  # the last: the 4 alpha branch
def test_learning_curve_decays_with_the_resolution_limited_exponent(alpha, beta):
    lam, coefs = kr.power_law_spectrum(100_000, alpha, beta)
    p = np.geomspace(100, 1000, 6)
    slope = -np.polyfit(np.log(p), np.log(kr.learning_curve(lam, coefs, p, 0.0)), 1)[0]
    # Power-law sums converge to their integrals with O(1/P) relative corrections, and the cut-off at M = 1e5 adds
    # (P / M)^a: a 0.05 band around the asymptotic exponent covers both at P <= 1000.
    assert abs(slope - kr.resolution_limited_exponent(alpha, beta)) < 0.05, slope


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.25), (1.0, 2.0)])  # the last saturates, at 2 alpha in N
def test_infinite_data_random_features_decay_with_the_width_exponent(alpha, beta):
    lam, coefs = kr.power_law_spectrum(100_000, alpha, beta)
    n = np.geomspace(100, 1000, 6)
    slope = -np.polyfit(np.log(n), np.log(kr.rf_excess_risk(lam, coefs, n, 1e15, 0.0)), 1)[0]
    assert abs(slope - kr.resolution_limited_exponent(alpha, beta, "width")) < 0.05, slope  # as above


def test_variance_limited_coefficient_is_least_squares_variance():
    lam, coefs = kr.power_law_spectrum(2000, 0.75, 0.5)
    e_inf, coef = kr.variance_limited_coefficient(lam, coefs, 64, 0.0, 0.2, vary="n_train")
    # Richardson at P = 1e6 N: error O((N / P)^2) ~ 1e-12 (measured 5e-12); 1e-9 leaves room for round-off.
    np.testing.assert_allclose(e_inf, kr.rf_excess_risk(lam, coefs, 64, 1e15, 0.0, 0.0), rtol=1e-9)
    # OLS on N features, the unexplained target acting as noise: E - E_inf = (sigma^2 + E_inf) N / (P - N).
    np.testing.assert_allclose(coef, 64 * (0.2 + e_inf), rtol=1e-5)  # Richardson error O(N / P) = O(1e-6)
    assert kr.variance_limited_exponent() == 1.0


def _gd_on_least_squares(x, y, lr, steps):
    """Losses ``0.5 mean((x theta - y)^2)`` of full-batch GD from ``theta = 0`` (``steps + 1`` values)."""
    loss = lambda theta: 0.5 * jnp.mean((x @ theta - y) ** 2)

    def step(theta, _):
        return theta - lr * jax.grad(loss)(theta), loss(theta)

    theta, losses = jax.lax.scan(step, jnp.zeros(x.shape[1]), None, length=steps)
    return jnp.append(losses, loss(theta))


@pytest.mark.parametrize("n_train, dim", [(64, 16), (16, 64)])  # under- and over-parametrised (floor > 0 / = 0)
def test_gd_loss_curve_is_exact(x64, n_train, dim):
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n_train, dim)) * jnp.arange(1, dim + 1)[None, :] ** -0.5
    y = jax.random.normal(ky, (n_train,))
    lam, vecs = np.linalg.eigh(np.asarray(x.T @ x) / n_train)  # the empirical covariance: the loss's Hessian
    theta_star = np.linalg.lstsq(np.asarray(x), np.asarray(y), rcond=None)[0]  # minimum-norm: no null-space part
    floor = 0.5 * np.mean((np.asarray(x) @ theta_star - np.asarray(y)) ** 2)
    lr = 1.9 / lam.max()  # near the edge: the top mode flips sign every step, the slow modes barely move
    predicted = kr.gd_loss_curve(lam, vecs.T @ theta_star, lr, 300, floor)
    simulated = np.asarray(_gd_on_least_squares(x, y, lr, 300))
    # The loss is exactly quadratic, so only float64 round-off separates the two: a few hundred steps of O(d)
    # operations each, relative 1e-12.
    np.testing.assert_allclose(simulated, predicted, rtol=1e-12, atol=1e-14 * predicted[0])
    # Above 2 / lambda_max the top mode grows: the formula follows the divergence as well.
    diverging = kr.gd_loss_curve(lam, vecs.T @ theta_star, 2.1 / lam.max(), 300, floor)
    np.testing.assert_allclose(np.asarray(_gd_on_least_squares(x, y, 2.1 / lam.max(), 300)), diverging, rtol=1e-9)


def test_gradient_flow_is_the_small_step_limit_of_gd():
    lam = np.array([2.0, 1.0, 0.1, 0.01])
    coefs = np.ones(4)
    flow = kr.gradient_flow_loss_curve(lam, coefs, [5.0])[0]
    errors = [abs(kr.gd_loss_curve(lam, coefs, lr, round(5.0 / lr))[-1] - flow) for lr in (0.02, 0.01)]
    # GD's per-step factor (1 - lr lam) = exp(-lr lam - (lr lam)^2 / 2 - ...): the error is first order in lr.
    assert 1.9 < errors[0] / errors[1] < 2.1, errors


def test_gd_decay_keeps_its_digits_for_slow_modes():
    # (1 - (1 - lr e)^t) / e = lr t - lr^2 e t (t - 1) / 2 + ...: at lr e = 1e-13 the direct form loses all but
    # three digits to cancellation against 1; the expm1/log1p form is exact to round-off.
    e = np.array([1e-13, 0.0, 1.5])
    remaining, integrated = kr.gd_decay(e, 1.0, [3])
    np.testing.assert_allclose(integrated[0], [3 - 3e-13, 3.0, (1 - (-0.5) ** 3) / 1.5], rtol=1e-15)
    np.testing.assert_allclose(remaining[0], (1 - e) ** 3, rtol=1e-15)  # same expression (1 - lr e)^t: a few ulps


def test_kernel_gd_predictions_are_gd_on_the_linear_model(x64):
    # A linear model f = phi . theta has tangent kernel Theta = Phi Phi^T exactly: GD on it must reproduce the
    # kernel formula on train and test points, to round-off.
    kp, kq, ky, k0 = jax.random.split(jax.random.key(3), 4)
    phi, phi_test = jax.random.normal(kp, (12, 30)), jax.random.normal(kq, (5, 30))
    y, theta0 = jax.random.normal(ky, (12,)), 0.3 * jax.random.normal(k0, (30,))
    loss = lambda theta: 0.5 * jnp.mean((phi @ theta - y) ** 2)
    k_train = np.asarray(phi @ phi.T)
    lr = 1.5 * 12 / np.linalg.eigvalsh(k_train).max()  # stable (< 2 P / lambda_max) but oscillating
    thetas = [theta0]
    for _ in range(40):
        thetas.append(thetas[-1] - lr * jax.grad(loss)(thetas[-1]))
    steps = np.array([0, 1, 7, 40])
    f_train, f_test = kr.kernel_gd_predictions(k_train, np.asarray(phi_test @ phi.T), np.asarray(y), lr, steps,
                                               np.asarray(phi @ theta0), np.asarray(phi_test @ theta0))
    # Exact algebra on a 12-point problem: only float64 round-off over 40 steps separates the two.
    np.testing.assert_allclose(f_train, np.stack([phi @ thetas[s] for s in steps]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f_test, np.stack([phi_test @ thetas[s] for s in steps]), rtol=1e-10, atol=1e-12)
    # Gradient flow to t = inf is kernel interpolation: f_* = f0_* + K_*X K^-1 (y - f0_X).
    _, f_inf = kr.kernel_flow_predictions(k_train, np.asarray(phi_test @ phi.T), np.asarray(y), [1e9])
    np.testing.assert_allclose(f_inf[0], np.asarray(phi_test @ phi.T) @ np.linalg.solve(k_train, np.asarray(y)),
                               rtol=1e-8)  # the slowest mode has decayed by exp(-1e9 e_min): gone
