"""Infinite-width NNGP/NTK against wide finite networks, plus exact special cases. Runs in float64 (``x64``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynsim.theory import kernels

ACTIVATIONS = {
    "relu": (jax.nn.relu, kernels.relu_nngp_ntk),
    "erf": (jax.scipy.special.erf, kernels.erf_nngp_ntk),
    "linear": (lambda u: u, kernels.linear_nngp_ntk),
}
W_STD, B_STD = 1.4, 0.3  # away from (1, 0) so that a misplaced sigma_w or sigma_b changes the answer
N_SEEDS = 16


def _inputs():
    x = jax.random.normal(jax.random.key(0), (5, 3))
    return x.at[4].set(0.999 * x[0])  # a near-parallel pair: the angle ~ 0 branch of the arc-cosine kernels


def _init(key, d, width, depth):
    """NTK-parametrized MLP weights, all N(0, 1): ``depth`` hidden layers of ``width`` units and a scalar readout."""
    dims = [d] + [width] * depth + [1]
    keys = jax.random.split(key, 2 * (depth + 1)).reshape(depth + 1, 2)
    return [(jax.random.normal(kw, (n_in, n_out)), jax.random.normal(kb, (1, n_out)))
            for (kw, kb), n_in, n_out in zip(keys, dims[:-1], dims[1:])]


def _forward(params, x, act):
    """Last hidden features and scalar output of ``z' = w_std W phi(z) / sqrt(n_in) + b_std b`` (neural-tangents)."""
    h = x
    for layer, (w, b) in enumerate(params):
        z = W_STD * h @ w / jnp.sqrt(h.shape[-1]) + B_STD * b
        if layer == len(params) - 1:
            return h, z[:, 0]
        h = act(z)


def _empirical(params, x, act):
    """Finite-width NNGP ``w^2 phi(z^L) . phi(z^L)' / n + b^2`` and NTK ``J J^T`` (J by ``jax.jacrev``)."""
    jac = jax.jacrev(lambda p: _forward(p, x, act)[1])(params)
    jac = jnp.concatenate([j.reshape(x.shape[0], -1) for j in jax.tree_util.tree_leaves(jac)], axis=1)
    h, _ = _forward(params, x, act)
    return W_STD**2 * h @ h.T / h.shape[1] + B_STD**2, jac @ jac.T


@pytest.mark.parametrize("name, depth, width", [("relu", 1, 32768), ("relu", 2, 1024), ("erf", 1, 32768)])
def test_wide_network_kernels_converge_to_the_analytic_ones(x64, name, depth, width):
    act, kernel_fn = ACTIVATIONS[name]
    x = _inputs()
    # lax.map, not vmap: one seed's Jacobian (5 x ~1e6 float64) at a time bounds memory.
    one = lambda key: _empirical(_init(key, x.shape[1], width, depth), x, act)
    empirical = jax.jit(lambda keys: jax.lax.map(one, keys))
    samples = empirical(jax.random.split(jax.random.key(1), N_SEEDS))
    analytic = kernel_fn(x, x, depth, W_STD, B_STD)
    for sample, theory in zip(samples, analytic):
        scale = jnp.sqrt(jnp.outer(jnp.diag(theory), jnp.diag(theory)))  # entries in units of sqrt(K_ii K_jj)
        deviation = (np.asarray(sample) - np.asarray(theory)) / np.asarray(scale)
        # Each seed's kernel fluctuates by O(1/sqrt(width)) around its mean; the spread over seeds estimates that
        # sigma (the largest over entries, so no entry is judged by a smaller one). The mean of N_SEEDS draws then
        # sits within 4 sigma / sqrt(N_SEEDS) of the limit, plus the O(depth / width) finite-width bias of the mean
        # (Hanin & Nica 2019).
        sigma = np.sqrt(np.max(np.var(deviation, axis=0, ddof=1)))
        tolerance = 4 * sigma / np.sqrt(N_SEEDS) + depth / width
        assert np.max(np.abs(deviation.mean(axis=0))) < tolerance, (np.abs(deviation.mean(axis=0)).max(), tolerance)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_depth_zero_is_the_input_kernel(x64, name):
    x = _inputs()
    nngp, ntk = ACTIVATIONS[name][1](x, x, 0, W_STD, B_STD)
    expected = W_STD**2 * x @ x.T / x.shape[1] + B_STD**2
    np.testing.assert_allclose(nngp, expected, rtol=1e-14)  # one dense layer: exact up to round-off
    np.testing.assert_allclose(ntk, expected, rtol=1e-14)


def test_relu_depth_one_closed_form(x64):
    x = _inputs()
    q = jnp.sum(x**2, axis=1) / x.shape[1]
    sigma1 = W_STD**2 * x @ x.T / x.shape[1] + B_STD**2
    norms = jnp.sqrt(jnp.outer(W_STD**2 * q + B_STD**2, W_STD**2 * q + B_STD**2))
    theta = jnp.arccos(jnp.clip(sigma1 / norms, -1, 1))
    relu_cov = norms / (2 * jnp.pi) * (jnp.sin(theta) + (jnp.pi - theta) * jnp.cos(theta))
    nngp = W_STD**2 * relu_cov + B_STD**2
    ntk = W_STD**2 * sigma1 * (jnp.pi - theta) / (2 * jnp.pi) + nngp
    got = kernels.relu_nngp_ntk(x, x, 1, W_STD, B_STD)
    # arccos loses ~sqrt(eps) ~ 1e-8 in theta at the near-parallel pair; the kernel changes at second order there.
    # The NNGP depends on theta only through sin and cos, smooth in the angle: round-off, 1e-12 with margin.
    np.testing.assert_allclose(got.nngp, nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk, ntk, rtol=1e-7)  # (pi - theta) is first order in the ~1e-8 angle error
    # Diagonal: theta = 0, so Sigma' = q / 2 and the derivative kernel is 1 / 2; a few float64 operations.
    np.testing.assert_allclose(jnp.diag(got.nngp), W_STD**2 * (W_STD**2 * q + B_STD**2) / 2 + B_STD**2, rtol=1e-14)


def test_relu_depth_one_is_half_of_aroras_two_layer_ntk(x64):
    # Arora et al. (2019) scale the ReLU by sqrt(2); with w_std = 1 on every layer the kernel here is half of theirs.
    x = _inputs()
    x = x / jnp.sqrt(jnp.sum(x**2, axis=1, keepdims=True) / x.shape[1])  # unit norm per dimension: q = 1
    u = jnp.clip(x @ x.T / x.shape[1], -1, 1)
    theta = jnp.arccos(u)
    kappa1 = (jnp.sin(theta) + (jnp.pi - theta) * u) / jnp.pi
    kappa0 = (jnp.pi - theta) / jnp.pi
    # arccos loses ~sqrt(eps) ~ 1e-8 in theta at the near-parallel pair, as in the closed-form test above.
    np.testing.assert_allclose(kernels.relu_nngp_ntk(x, x, 1).ntk, (kappa1 + u * kappa0) / 2, rtol=1e-7)


def test_linear_network_ntk_counts_one_term_per_layer(x64):
    x = _inputs()
    for depth in range(4):
        nngp, ntk = kernels.linear_nngp_ntk(x, x, depth, W_STD, 0.0)
        # exact algebra evaluated in float64: round-off of O(depth) operations, ~10 eps each
        np.testing.assert_allclose(nngp, W_STD ** (2 * depth + 2) * x @ x.T / x.shape[1], rtol=1e-13)
        np.testing.assert_allclose(ntk, (depth + 1) * nngp, rtol=1e-13)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_symmetric_psd_and_consistent_across_input_sets(x64, name):
    kernel_fn = ACTIVATIONS[name][1]
    x = jax.random.normal(jax.random.key(2), (12, 4))
    both = kernel_fn(x, x, 3, W_STD, B_STD)
    cross = kernel_fn(x[:5], x[5:], 3, W_STD, B_STD)
    for full, block in zip(both, cross):
        assert full.shape == (12, 12) and block.shape == (5, 7)
        atol = 1e-13 * np.abs(full).max()  # round-off of O(depth) float64 operations on the largest entry
        np.testing.assert_allclose(full, full.T, rtol=0, atol=atol)
        np.testing.assert_allclose(block, full[:5, 5:], rtol=0, atol=atol)  # diagonals of x1 and x2 kept apart
        assert np.linalg.eigvalsh(np.asarray(full)).min() > -1e-12 * np.abs(full).max()  # a covariance: PSD


def test_gradients_are_finite_on_the_diagonal(x64):
    # theta = 0 exactly on the diagonal, where sqrt(q1 q2 - c^2) has an infinite derivative unless guarded.
    x = _inputs()
    grad = jax.grad(lambda x: jnp.sum(kernels.relu_nngp_ntk(x, x, 2).ntk))(x)
    assert np.all(np.isfinite(grad))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same d"):
        kernels.relu_nngp_ntk(np.ones((2, 3)), np.ones((2, 4)), 1)
    with pytest.raises(ValueError, match="depth"):
        kernels.relu_nngp_ntk(np.ones((2, 3)), np.ones((2, 3)), -1)
