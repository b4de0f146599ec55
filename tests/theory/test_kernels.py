"""Infinite-width NNGP/NTK against wide finite networks, exact special cases, and round-off against a 40-digit
evaluation of the textbook recursion in float32 and float64 (the statistical and closed-form tests run in ``x64``)."""

import decimal
from decimal import Decimal
from functools import cache

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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same d"):
        kernels.relu_nngp_ntk(np.ones((2, 3)), np.ones((2, 4)), 1)
    with pytest.raises(ValueError, match="depth"):
        kernels.relu_nngp_ntk(np.ones((2, 3)), np.ones((2, 3)), -1)


# --- Round-off: float32 and float64 against exact values ---------------------------------------------------------

DIGITS = 40  # decimal digits of the reference: ~1e-40 relative, far below either float's resolution


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    """Run a test once in float32 (jax's default) and once with ``jax_enable_x64``."""
    if request.param is np.float64:
        jax.config.update("jax_enable_x64", True)
    try:
        yield request.param
    finally:
        jax.config.update("jax_enable_x64", False)


def _atan(x: Decimal) -> Decimal:
    """arctan to DIGITS digits: halve the angle until |x| <= 0.05, then the Taylor series."""
    if x < 0:
        return -_atan(-x)
    halvings = 0
    while x > Decimal("0.05"):
        x = x / (1 + (1 + x * x).sqrt())  # tan(a / 2) from tan(a)
        halvings += 1
    total, term, k = x, x, 1
    while abs(term) > Decimal(10) ** -(DIGITS + 5):
        term = -term * x * x
        total += term / (2 * k + 1)
        k += 1
    return total * 2**halvings


def _atan2(y: Decimal, x: Decimal) -> Decimal:
    """The angle of ``(x, y)`` for ``y >= 0``, in ``[0, pi]``."""
    if x > 0:
        return _atan(y / x)
    pi = 4 * _atan(Decimal(1))
    if x < 0:
        return pi - _atan(y / -x)
    return pi / 2 if y > 0 else Decimal(0)


@cache
def _exact_kernels(x_bytes: bytes, d: int, act: str, w_std: float, b_std: float, depth: int) -> np.ndarray:
    """``[nngp/ntk, depth + 1, n, n]`` of ``x`` against itself at every depth up to ``depth``: the textbook recursion
    (module docstring of :mod:`dynsim.theory.kernels`, the angle as ``atan2(sqrt(q1 q2 - c^2), c)``) on the exact
    values of the float inputs and scales, in DIGITS-digit decimal arithmetic, rounded once to float64. The
    cancellation in ``q1 q2 - c^2`` costs at most half the digits, leaving ~1e-20, still far below float64's."""
    x = np.frombuffer(x_bytes, np.float64).reshape(-1, d)
    n = x.shape[0]
    out = np.zeros((2, depth + 1, n, n))
    with decimal.localcontext() as ctx:
        ctx.prec = DIGITS
        pi = 4 * _atan(Decimal(1))
        w2, b2 = Decimal(w_std) ** 2, Decimal(b_std) ** 2
        rows = [[Decimal(float(v)) for v in row] for row in x]
        for i in range(n):
            for j in range(i, n):
                q1, q2, c = (sum(u * v for u, v in zip(a, b)) / d for a, b in
                             ((rows[i], rows[i]), (rows[j], rows[j]), (rows[i], rows[j])))
                q1, q2, c = w2 * q1 + b2, w2 * q2 + b2, w2 * c + b2
                ntk = c
                out[:, 0, i, j] = out[:, 0, j, i] = float(c), float(ntk)
                for layer in range(1, depth + 1):
                    if act == "relu":  # Cho & Saul (2009)
                        gap = max(q1 * q2 - c * c, Decimal(0)).sqrt()
                        theta = _atan2(gap, c)
                        derivative = (pi - theta) / (2 * pi)
                        c = (gap + (pi - theta) * c) / (2 * pi)
                        q1, q2 = q1 / 2, q2 / 2
                    elif act == "erf":  # Williams (1997), arcsin(z) = atan2(z, sqrt(1 - z^2))
                        def arcsin_ratio(a, n1, n2):  # arcsin(2a / sqrt(n1 n2)) for any sign of a
                            angle = _atan2(2 * abs(a), (n1 * n2 - 4 * a * a).sqrt())
                            return angle if a >= 0 else -angle
                        n1, n2 = 1 + 2 * q1, 1 + 2 * q2
                        derivative = 4 / (pi * (n1 * n2 - 4 * c * c).sqrt())
                        c, q1, q2 = (2 / pi * arcsin_ratio(a, m1, m2)
                                     for a, m1, m2 in ((c, n1, n2), (q1, n1, n1), (q2, n2, n2)))
                    else:
                        derivative = Decimal(1)
                    q1, q2, c = w2 * q1 + b2, w2 * q2 + b2, w2 * c + b2
                    ntk = w2 * ntk * derivative + c
                    out[:, layer, i, j] = out[:, layer, j, i] = float(c), float(ntk)
    return out


def _delicate_inputs():
    """Rows at the angles where arc-cosine kernels lose digits, exactly representable in float32 (d = 4)."""
    rng = np.random.default_rng(3)
    x, y, z = rng.normal(size=(3, 4))
    e = rng.normal(size=(4, 4))
    orthogonal = y - (y @ x) / (x @ x) * x  # orthogonal to x up to float32 rounding
    rows = [x, x, x + 1e-3 * e[0], x + 1e-6 * e[1], 0.999 * x, 2.5 * x,  # identical, nearly and exactly parallel
            -x, -x + 1e-3 * e[2], -x + 1e-6 * e[3], -0.999 * x,  # antiparallel
            orthogonal, [1, 2, 0, 0], [-2, 1, 0, 0],  # orthogonal (the last two exactly)
            z, np.zeros(4)]  # generic, and a zero input
    return np.asarray(rows, np.float32)


def _tolerance(dtype, depth):
    # Round-off budget in units of sqrt(K(x, x) K(x', x')) (the relative error on the diagonal, where the bug was):
    # the input moments are sums of d = 4 products (at most ~2 eps), and each layer adds about one eps to every
    # entry: a handful of correctly rounded operations whose relative errors the recursion passes on without
    # amplifying them, since the quantities that vanish at identical or opposite inputs (the gap, E(u -/+ v)^2)
    # are carried to relative precision. Measured: at most 4 eps at depth 5. In float32, (3 + depth) eps is 9.5e-7
    # at depth 5; the textbook formula in float32 errs by ~5e-4 there (sqrt(eps) in the angle).
    return (3 + depth) * np.finfo(dtype).eps


SCALES = [(1.0, 0.0), (W_STD, B_STD), (2.0, 0.1)]  # the defaults; biased; erf's chaotic phase (sigma_w^2 E phi'^2 > 1)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("w_std, b_std", SCALES)
def test_kernels_are_accurate_to_round_off(dtype, name, w_std, b_std):
    x = _delicate_inputs().astype(dtype)
    w_std, b_std = float(dtype(w_std)), float(dtype(b_std))  # the scales the float computation sees, exactly
    exact = _exact_kernels(x.astype(np.float64).tobytes(), x.shape[1], name, w_std, b_std, 5)
    for depth in range(6):
        got = ACTIVATIONS[name][1](x, x, depth, w_std, b_std)
        for which, value, reference in zip(("nngp", "ntk"), got, exact[:, depth]):
            assert value.dtype == dtype
            scale = np.sqrt(np.abs(np.outer(np.diag(reference), np.diag(reference))))
            error = np.abs(np.asarray(value, np.float64) - reference)
            worst = np.unravel_index(np.argmax(error - _tolerance(dtype, depth) * scale), error.shape)
            assert np.all(error <= _tolerance(dtype, depth) * scale), (which, depth, worst, error[worst] / scale[worst])


def test_identical_inputs_propagate_exactly(dtype):
    # With w_std = 1, b_std = 0, identical inputs have theta = 0 at every layer: Sigma halves exactly (a power of 2)
    # and the derivative kernel is exactly 1/2, so the NNGP diagonal is q / 2^L bit for bit, and so is the entry of
    # two identical rows.
    x = _delicate_inputs().astype(dtype)
    q = np.diag(np.asarray(kernels.relu_nngp_ntk(x, x, 0).nngp))
    for depth in range(1, 6):
        nngp, ntk = kernels.relu_nngp_ntk(x, x, depth)
        np.testing.assert_array_equal(np.diag(nngp), q / 2**depth)
        np.testing.assert_array_equal(nngp[0, 1], q[0] / 2**depth)
        # Theta_L = Theta_{L-1} / 2 + q / 2^L = (L + 1) q / 2^L: one rounding per layer in the sum.
        np.testing.assert_allclose(np.diag(ntk), (depth + 1) * q / 2**depth, rtol=depth * np.finfo(dtype).eps)


@pytest.mark.slow
def test_row_blocks_match_the_single_block(dtype, monkeypatch):
    # Large inputs form their pairwise differences in row blocks (lax.map): the same arithmetic up to XLA's fusion
    # choices, so the two agree to the round-off budget.
    x = _delicate_inputs().astype(dtype)
    whole = kernels.relu_nngp_ntk(x, x, 3, W_STD, B_STD)
    monkeypatch.setattr(kernels, "_PAIR_BLOCK", 4 * x.shape[0] * x.shape[1])  # blocks of 4 rows, the last of 3
    blocked = kernels.relu_nngp_ntk(x, x, 3, W_STD, B_STD)
    for a, b in zip(whole, blocked):
        scale = np.sqrt(np.outer(np.diag(a), np.diag(a)))
        assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= 2 * _tolerance(dtype, 3) * scale)


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_gradients_are_finite_at_identical_opposite_and_zero_inputs(dtype, name):
    # theta = 0 or pi exactly, where the gap's square roots have infinite derivatives unless guarded, and a zero
    # input (b_std = 0 keeps its variance 0 at every layer), where atan2(0, 0) and the projection onto it are.
    x = _delicate_inputs().astype(dtype)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(ACTIVATIONS[name][1](x, x, 2).ntk)))(x)
    assert np.all(np.isfinite(grad))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["relu", "erf"])
def test_gradients_match_finite_differences(x64, name):
    # Directional derivative in (x, w_std, b_std) at generic inputs with acute and obtuse pairs, against a central
    # difference with step h = 1e-5: truncation ~h^2 ~ 1e-10 relative (measured 8e-11), round-off ~eps / h ~ 1e-11;
    # 1e-8 leaves a factor 100 for the size of the third derivative, and a wrong branch errs at O(1).
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3))
    direction = rng.normal(size=x.shape), 0.3, -0.2

    def f(x, w_std, b_std):
        return jnp.stack(ACTIVATIONS[name][1](x, x, 3, w_std, b_std))

    _, tangent = jax.jvp(f, (x, W_STD, B_STD), direction)
    h = 1e-5
    plus, minus = ([p + s * h * t for p, t in zip((x, W_STD, B_STD), direction)] for s in (1, -1))
    difference = (f(*plus) - f(*minus)) / (2 * h)
    np.testing.assert_allclose(tangent, difference, rtol=0, atol=1e-8 * np.abs(tangent).max())
