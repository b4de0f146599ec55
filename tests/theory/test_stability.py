"""Stability thresholds: closed forms, linear simulations on a quadratic, and the uv model's three phases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds
from dynsim.theory import stability


def test_threshold_values_and_broadcasting():
    assert stability.gd_threshold(0.1) == pytest.approx(20.0)  # 2 / 0.1: float64 round-off (default rel 1e-6)
    assert stability.momentum_threshold(0.1, 0.0) == pytest.approx(stability.gd_threshold(0.1))  # beta = 0: round-off
    assert stability.momentum_threshold(0.1, 0.9) == pytest.approx(38.0)  # (2 + 1.8) / 0.1: round-off only
    assert stability.adam_threshold(0.01, 0.9) == pytest.approx(3800.0)  # Cohen et al. (2022): 38 / lr
    lr, beta = np.array([0.1, 0.2, 0.4]), np.array([0.0, 0.5])
    assert stability.momentum_threshold(lr[:, None], beta[None, :]).shape == (3, 2)
    np.testing.assert_allclose(stability.gd_threshold(lr), [20.0, 10.0, 5.0])


def _simulate(method, lam, lr, beta, steps):
    """log10 |w| after ``steps`` steps from w = 1 on L = lam w^2 / 2 (numpy, vectorised over ``lam``)."""
    w, buf, log10 = np.ones_like(lam), np.zeros_like(lam), np.zeros_like(lam)
    for _ in range(steps):
        big = np.abs(w) > 1e100  # the dynamics are linear: rescale the state instead of overflowing
        w, buf, log10 = np.where(big, w * 1e-100, w), np.where(big, buf * 1e-100, buf), log10 + 100 * big
        g = lam * w
        if method == "gd":
            w = w - lr * g
        elif method == "momentum":  # optax.trace: buf = g + beta buf
            buf = g + beta * buf
            w = w - lr * buf
        else:  # Adam with its preconditioner frozen at P = 1: an EMA of gradients, lam is P^-1 H
            buf = beta * buf + (1 - beta) * g
            w = w - lr * buf
    return log10 + np.log10(np.abs(w))


@pytest.mark.parametrize("method", ["gd", "momentum", "adam"])
def test_thresholds_separate_convergence_from_divergence_on_a_quadratic(method):
    lr, beta = 0.1, 0.9
    edge = {"gd": stability.gd_threshold(lr), "momentum": stability.momentum_threshold(lr, beta),
            "adam": stability.adam_threshold(lr, beta)}[method]
    lam = edge * np.array([0.9, 0.99, 1.01, 1.1])
    log_w = _simulate(method, lam, lr, beta, steps=4000)
    # Spectral radii at +-1% of the edge are 1 -+ O(1e-3) per step here: after 4000 steps a factor of at least
    # 1e3 either way.
    assert np.all(log_w[:2] < -3) and np.all(log_w[2:] > 3), log_w


def test_uv_phases_classify_and_broadcast():
    lam0 = 2.0
    lr = np.array([0.5, 0.999, 1.0, 1.5, 1.999, 2.0, 3.0]) / lam0 * 2  # lr * lam0 = 1 ... 6
    expected = ["lazy", "lazy", "catapult", "catapult", "catapult", "divergent", "divergent"]
    assert stability.uv_phases(lr, lam0).tolist() == expected
    assert stability.uv_phases(lr[:, None], np.array([lam0, 0.5 * lam0])).shape == (7, 2)
    assert stability.uv_phases(0.1, 1.0) == "lazy"


def test_uv_ntk_eigenvalue_is_the_squared_gradient_norm():
    n, x = 50, 0.7
    ku, kv = jax.random.split(jax.random.key(0))
    u, v = jax.random.normal(ku, (n,)), jax.random.normal(kv, (n,))
    grads = jax.grad(lambda u, v: jnp.dot(v, u) * x / jnp.sqrt(n), argnums=(0, 1))(u, v)
    ntk = sum(float(jnp.sum(g**2)) for g in grads)  # Theta(x, x) = |df/dtheta|^2
    assert stability.uv_ntk_eigenvalue(u, v, x) == pytest.approx(ntk, rel=1e-5)  # float32 sums of 100 terms


WIDTH = 2048  # wide enough that the kernel moves by O(1/n) in the lazy phase and the catapult peak stays < 1e4


@pytest.mark.parametrize("seed", [0, 1])
def test_uv_model_lazy_catapult_and_divergent_phases(seed):
    # Lewkowycz et al. (2020): GD on f = v.u x / sqrt(n) at lr = c * 2 / lambda0.
    model = ds.models.uv(1)
    task = ds.tasks.TeacherStudent(d_in=1, n_train=1, n_test=1, teacher="linear", seed=0)
    data = task.make()
    # The engine's init of this member, rebuilt: NTK parametrization, unit init scale, the seed's key.
    scales = model.scales(WIDTH, ds.param.ntk().table("sgd"), 1.0)
    u, v = model.init(jax.random.key(seed), WIDTH, WIDTH, scales.std)
    lam0 = float(stability.uv_ntk_eigenvalue(u[:, 0], v[0], data.x_train[0, 0]))
    cs = (0.5, 1.5, 2.5)
    lrs = [c * float(stability.gd_threshold(lam0)) for c in cs]  # c * 2 / lambda0
    assert stability.uv_phases(lrs, lam0).tolist() == ["lazy", "catapult", "divergent"]
    res = ds.run(model, task, ds.Sweep(width=[WIDTH], lr=lrs, seed=[seed], param=["ntk"]), steps=200,
                 record_every=1, observables=("loss", "sharpness"), progress=False).squeeze()
    loss, sharp, div = res["loss"].values, res["sharpness"].values, res["diverged_at"].values  # [lr, step]
    # The sharpness at init is lambda0 up to the residual term, whose eigenvalues are +-(f - y) x / sqrt(n), a few
    # percent of lambda0 at most here (measured shifts of the top eigenvalue: < 1e-3).
    np.testing.assert_allclose(sharp[:, 0], lam0, rtol=0.01)

    lazy, cat = 0, 1
    # Lazy: converges without a spike and the kernel barely moves (O(1/n) as n -> inf; 1% as above).
    assert div[lazy] == -1 and loss[lazy, -1] < 1e-6 * loss[lazy, 0]
    assert loss[lazy, 1:].max() < loss[lazy, 0]
    np.testing.assert_allclose(sharp[lazy], lam0, rtol=0.01)
    # Catapult: the residual first grows by |1 - lr lambda| = 2 per step (the loss by 4) to O(n) (measured loss
    # peaks ~500 at n = 2048),
    # the sharpness falls below 2/lr, then training converges in the flatter region.
    assert div[cat] == -1
    assert loss[cat].max() > 100 * max(loss[cat, 0], 1.0)
    assert loss[cat, -1] < 1e-6 * loss[cat, 0]
    assert sharp[cat, -1] < stability.gd_threshold(lrs[cat])
    # Divergent: the sharpness grows with the loss and training blows up within a few steps.
    assert div[2] >= 0
