"""Hessian spectrum observables against the explicit Hessian: top-k (Lanczos), trace (Hutchinson), SLQ density."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_sharpness import LR, TASK, _member, _true_width

import dynsim as ds
from dynsim import observables
from dynsim.models import MLP
from dynsim.observables import _spectrum

WIDTH, N_PAD = 6, 10
MODEL = MLP(d_in=3, depth=3, act="tanh")  # 18 + 36 + 6 = 60 parameters at width 6


def _explicit(ctx, params):
    """The explicit Hessian over the true-width weights (float64 under the x64 fixture)."""
    data = ctx.data
    ones = jnp.ones(WIDTH, ctx.mask.dtype)
    _, unravel = ravel_pytree(tuple(jnp.zeros(shape, ones.dtype) for shape in MODEL.shapes(WIDTH)))

    def loss(flat):
        out = MODEL.apply(unravel(flat), data.x_train, ctx.scales.mult, ones)
        return 0.5 * jnp.mean((out - data.y_train) ** 2)

    return np.asarray(jax.jit(jax.hessian(loss))(ravel_pytree(_true_width(params, WIDTH))[0]))


def _true(params, flat):
    """A flat vector over the (padded) parameters restricted to the true-width weights."""
    return np.asarray(ravel_pytree(_true_width(ravel_pytree(params)[1](flat), WIDTH))[0])


@pytest.fixture
def member(x64):
    ctx, params = _member(MODEL, WIDTH, N_PAD, "mup")
    return ctx, params, _explicit(ctx, params)


def test_lanczos_topk_matches_eigvalsh(member):
    ctx, params, hess = member
    eig = np.linalg.eigvalsh(hess)[::-1]
    # With as many steps as parameters the Krylov space is the whole true-width space (the padded coordinates are
    # never reached), so Lanczos is exact: float64 round-off of a 60-dim eigenproblem, ~1e-13 relative.
    top, err = jax.jit(lambda p: _spectrum.hessian_topk(ctx, p, 4, 60))(params)
    np.testing.assert_allclose(np.asarray(top), eig[:4], rtol=1e-9)
    # The default 20 steps: each Ritz value lies within its residual of an eigenvalue (the bound must hold), and the
    # top ones have converged far below the gaps.
    top, err = (np.asarray(a) for a in jax.jit(lambda p: _spectrum.hessian_topk(ctx, p))(params))
    assert np.all(np.diff(top) <= 0) and np.all(err >= 0)
    for theta, r in zip(top, err):
        assert np.min(np.abs(eig - theta)) <= r * (1 + 1e-9) + 1e-12
    np.testing.assert_allclose(top[:2], eig[:2], rtol=1e-8)  # converged: error <= r^2 / gap, r <= 1e-12, gaps ~1


@pytest.mark.slow
def test_hutchinson_trace_within_its_standard_error(member):
    ctx, params, hess = member
    # Called eagerly: jitted, its 32 probe draws unroll into one program that takes about 10 s to compile on 2 CPU
    # cores, for the same values (the engine's jitted path is the sweep test's below).
    est, err = (float(a) for a in _spectrum.hessian_trace(ctx, params, 32))
    exact = np.trace(hess)
    # Fixed probes make this deterministic; 3 standard errors is a 0.3% tail of the estimator's distribution.
    assert err > 0 and abs(est - exact) <= 3 * err, (est, exact, err)
    # The estimator itself, per probe: z^T H z with the explicit matrix.
    z = np.stack([_true(params, v) for v in np.asarray(_spectrum.probes(ctx, 32))])
    assert set(np.unique(z)) == {-1.0, 1.0}
    np.testing.assert_allclose(est, np.mean(np.einsum("pi,ij,pj->p", z, hess, z)), rtol=1e-10)


def test_slq_density_moments(member):
    ctx, params, hess = member
    count = 8
    nodes, weights = (np.asarray(a) for a in jax.jit(lambda p: _spectrum.hessian_density(ctx, p, count))(params))
    assert nodes.shape == weights.shape == (count, _spectrum.LANCZOS_STEPS)
    # Gauss quadrature with m nodes is exact for polynomials of degree <= 2m - 1, so with v = z / |z|, |z|^2 = dim:
    # sum_j w_j = 1, dim * sum_j w_j theta_j = z^T H z and dim * sum_j w_j theta_j^2 = |H z|^2 (float64 round-off).
    z = np.stack([_true(params, v) for v in np.asarray(_spectrum.probes(ctx, count))])
    dim = z.shape[1]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(dim * (weights * nodes).sum(axis=1), np.einsum("pi,ij,pj->p", z, hess, z),
                               rtol=1e-9, atol=1e-12)
    # Degree 2 <= 2m - 1: exact as well, float64 round-off.
    np.testing.assert_allclose(dim * (weights * nodes**2).sum(axis=1), np.sum((z @ hess) ** 2, axis=1), rtol=1e-9)
    # So the density's mean is Hutchinson's trace over dim from the same probes, and within its error of the exact
    # trace / dim: 3 standard errors, as for the trace.
    est, err = (float(a) for a in _spectrum.hessian_trace(ctx, params, count))
    mean = float(np.mean((weights * nodes).sum(axis=1)))
    np.testing.assert_allclose(mean * dim, est, rtol=1e-9)
    assert abs(mean - np.trace(hess) / dim) <= 3 * err / dim
    # The smoothed density integrates to 1 and puts its mass where the spectrum is.
    eig = np.linalg.eigvalsh(hess)
    grid = np.linspace(eig[0] - 1, eig[-1] + 1, 4001)
    phi = observables.density(nodes, weights, grid, sigma=0.05)
    assert np.sum(phi) * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-6)  # Riemann sum of smooth Gaussians


def test_spectrum_observables_in_a_sweep_are_padding_invariant(x64):
    # One observable per estimator (each *_err twin runs the same arithmetic): every one compiles its own Lanczos.
    names = ("loss", "hessian_topk", "hessian_trace_err", "hessian_density_weights")
    run = lambda sweep, **kw: ds.run(MODEL, TASK, sweep, steps=10, record_every=5, progress=False,
                                     observables=names, **kw)
    alone = run(ds.Sweep(width=[WIDTH], lr=[LR]), group=1).squeeze()
    crowd = run(ds.Sweep(width=[WIDTH, N_PAD], lr=[LR]), buckets=[[WIDTH, N_PAD]], group=2)
    padded = crowd.sel(width=WIDTH).squeeze()
    assert alone["hessian_topk"].dims == ("step", "eig") and alone["hessian_topk"].shape == (3, 4)
    assert alone["hessian_density_weights"].dims == ("step", "probe", "node")
    # float64: the same arithmetic on the same numbers, up to summation order over exact zeros.
    for name in names:
        np.testing.assert_allclose(padded[name].values, alone[name].values, rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(alone["hessian_topk"].values))
