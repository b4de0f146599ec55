"""The plain functions of :mod:`dynsim.observables` (sharpness, Hessian products, Lanczos spectra, the empirical NTK)
called eagerly and under ``jax.jit``: both give the exact reference (an explicit matrix, Hessian or Jacobian, itself
computed under jit), so they agree with each other to round-off."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import dynsim as ds
from dynsim import executor
from dynsim import observables as obs
from dynsim.executor import member_hyper
from dynsim.models import MLP
from dynsim.padding import width_mask
from dynsim.tasks import TeacherStudent

# float32 throughout: eager and jitted programs may fuse and order sums differently, so each agrees with the
# reference to round-off of the sizes involved (a few ulps times the dimension), well inside 1e-5 relative.
RTOL = 1e-5
EIGS = np.array([5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.1], np.float32)


# Eager calls run op by op (each primitive compiled on its own): seconds each, so they run with the slow tests.
JIT = [True, pytest.param(False, marks=pytest.mark.slow)]


def _maybe_jit(f, jit: bool):
    return jax.jit(f) if jit else f


def _matrix():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(len(EIGS), len(EIGS))))
    return jnp.asarray((q * EIGS) @ q.T, jnp.float32)


@pytest.mark.parametrize("jit", JIT)
def test_top_eigenpair(jit):
    a = _matrix()
    x = jnp.ones(len(EIGS), jnp.float32) / np.sqrt(len(EIGS))
    f = _maybe_jit(lambda x: obs.top_eigenpair(lambda v: a @ v, x, len(EIGS)), jit)
    lam, residual, y = f(x)
    # A Krylov space of the full dimension holds the top eigenvector: the Ritz value is lambda_max to round-off.
    np.testing.assert_allclose(float(lam), EIGS[0], rtol=RTOL)
    assert float(residual) < 1e-4 * EIGS[0]
    top = np.linalg.eigh(np.asarray(a, np.float64))[1][:, -1]
    chex.assert_trees_all_close(jnp.abs(y), jnp.abs(jnp.asarray(top, jnp.float32)), atol=1e-4)  # up to sign


@pytest.mark.parametrize("jit", JIT)
def test_lanczos_tridiagonal_holds_the_spectrum(jit):
    a = _matrix()
    v = jnp.arange(1.0, len(EIGS) + 1, dtype=jnp.float32)
    alpha, beta, q = _maybe_jit(lambda v: obs.lanczos(lambda u: a @ u, v, len(EIGS)), jit)(v)
    t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    # Full reorthogonalisation over the whole dimension: T is A in the Lanczos basis, with A's eigenvalues.
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.asarray(t, np.float64)))[::-1], EIGS, rtol=RTOL,
                               atol=1e-5)
    # and the basis is orthonormal
    chex.assert_trees_all_close(q @ q.T, jnp.eye(len(EIGS)), atol=1e-5)


def _member(width=6, n_pad=8):
    """Context and initial parameters of one member (seed 0) of a tanh network, built as the engine builds them."""
    model = MLP(d_in=3, depth=2, act="tanh")
    task = TeacherStudent(d_in=3, n_train=10, n_test=10, seed=0)
    sweep = ds.Sweep(width=[width], lr=[0.05], seed=[0], param=["mup"])
    hyper = jax.tree.map(lambda a: a[0], member_hyper(sweep, np.arange(1)))
    prog = executor.Program(model=model, task=task, optimizer="sgd", n_pad=n_pad, record_every=1,
                            records_per_segment=1, weight_decay=False)
    scales = model.scales(hyper.width, hyper.abc, hyper.init_scale)
    data, mask = task.make(), width_mask(hyper.width, n_pad)
    outputs = lambda params, split: model.apply(params, {"train": data.x_train, "test": data.x_test}[split],
                                                scales.mult, mask)
    ctx = obs.Context(prog=prog, data=data, hyper=hyper, scales=scales, mask=mask, outputs=outputs)
    return ctx, model.init(jax.random.wrap_key_data(hyper.key), n_pad, hyper.width, scales.std)


@pytest.mark.parametrize("jit", JIT)
def test_hessian_matvec_is_the_hessian(jit):
    ctx, params = _member()
    flat, unravel = ravel_pytree(params)
    loss = lambda w: ctx.prog.model.loss(ctx.outputs(unravel(w), "train"), ctx.data.y_train)
    hessian = np.asarray(jax.jit(jax.hessian(loss))(flat))
    v = jax.random.normal(jax.random.key(1), flat.shape, flat.dtype)
    hv = _maybe_jit(lambda p, v: obs.hessian_matvec(ctx, p)(v), jit)(params, v)
    # Tangent products are exact up to round-off: atol is float32 round-off on |H| |v| sums.
    chex.assert_trees_all_close(hv, jnp.asarray(hessian @ np.asarray(v)), rtol=1e-4,
                                atol=1e-5 * float(np.abs(hessian).sum(1).max() * np.abs(v).max()))


@pytest.mark.parametrize("jit", JIT)
def test_empirical_ntk_is_the_jacobian_gram_matrix(jit):
    ctx, params = _member()
    x = ctx.data.x_test[:, :5]
    kernel = _maybe_jit(lambda p, x: obs.empirical_ntk(ctx, p, x), jit)(params, x)
    jac = jax.jit(jax.jacobian(lambda p: ctx.prog.model.apply(p, x, ctx.scales.mult, ctx.mask)[0]))(params)
    jac = np.concatenate([np.asarray(j).reshape(5, -1) for j in jac], axis=1)
    chex.assert_shape(kernel, (5, 5))
    # VJP-then-JVP columns against the explicit Jacobian: float32 round-off of sums over the parameters.
    chex.assert_trees_all_close(kernel, jnp.asarray(jac @ jac.T), rtol=1e-4, atol=1e-6 * np.abs(jac @ jac.T).max())
