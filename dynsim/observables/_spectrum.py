"""Hessian spectrum observables: top-k eigenvalues (Lanczos), trace (Hutchinson) and density (stochastic Lanczos
quadrature), each with an estimate of its own error.

All act on the Hessian ``H`` of the member's full-training-set loss (:func:`dynsim.observables.training_loss_fn`)
with respect to its trained parameters, through Hessian-vector products
(:func:`dynsim.observables.hessian_matvec`, always the exact tangent products: the residual bounds below hold
for exact products only, so the program's ``hvp = "fd"`` setting does not apply here); ``dim`` below is the
member's number of (unpadded) parameters. They are computed inside the compiled program at record points, vmapped
over members, and are stateless: every record starts from the same vectors, so a record costs what it costs at
step 0.

- ``hessian_topk`` / ``hessian_topk_err`` (dims ``("eig",)``, largest first): the top :data:`TOPK` Ritz values of
  :data:`LANCZOS_STEPS` Lanczos steps with full reorthogonalisation from the fixed start vector of
  :func:`~dynsim.observables.start_vector`, and their residual norms ``|H y_i - theta_i y_i| = beta_m |s_mi|``
  (``beta_m`` the last off-diagonal, ``s_mi`` the last component of the i-th eigenvector of the tridiagonal
  ``T``): some eigenvalue of ``H`` lies within the residual of each Ritz value (Parlett 1998, "The symmetric
  eigenvalue problem", Thm 13.1.1 for the Kaniel-Paige bound and 11.4 for the residual). Cost: ``LANCZOS_STEPS``
  products per record.
- ``hessian_trace`` / ``hessian_trace_err``: Hutchinson's estimator ``mean_p z_p^T H z_p`` over :data:`PROBES`
  Rademacher probes ``z_p`` (Hutchinson 1990; Avron & Toledo 2011), and its standard error
  ``std_p(z_p^T H z_p) / sqrt(PROBES)``. Cost: ``PROBES`` products.
- ``hessian_density_nodes`` / ``hessian_density_weights`` (dims ``("probe", "node")``): stochastic Lanczos
  quadrature (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019). For each probe ``v = z / |z|`` (the same
  Rademacher probes as the trace), ``LANCZOS_STEPS`` Lanczos steps give ``T = S diag(theta) S^T``; the nodes are
  ``theta_j`` and the weights ``S_1j^2``, so that ``sum_j w_j g(theta_j)`` approximates ``v^T g(H) v``. The
  spectral density of ``H`` (eigenvalue counts divided by ``dim``) is estimated by the average over probes of
  ``sum_j w_j delta(t - theta_j)``; :func:`density` smooths it with a Gaussian for plotting. Quadrature with ``m``
  nodes is exact for polynomials of degree ``2m - 1``, so the density's first moments are those of ``v^T H^k v``:
  its mean times ``dim`` is Hutchinson's trace estimate from the same probes (a test checks this) and its
  error is the trace's standard error over ``dim``. Each of the two observables runs its own Lanczos
  iterations (observables do not share work), so recording both costs ``2 * PROBES * LANCZOS_STEPS`` products.

Breakdown: where the Krylov space is exhausted (``beta_j`` below round-off, e.g. a model with fewer parameters
than steps), the remaining Lanczos vectors are zero; the tridiagonal then splits, and its extra block's Ritz values
carry zero quadrature weight. For top-k they are pushed below every genuine Ritz value, and reported as NaN if fewer
than ``k`` genuine ones exist.

Padding: the start vector and the probes are drawn with the model's own init (their true-width part does not
depend on ``n_pad``) and are zero on padded units; ``H`` maps them into the true-width subspace, so a padded member
runs the same arithmetic on the same numbers as an unpadded one, up to summation order over exact zeros. The
Rademacher signs are the signs of those Gaussian draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _registry as _obs
from ._sharpness import hessian_matvec, start_vector

__all__ = ["LANCZOS_STEPS", "TOPK", "PROBES", "lanczos", "ritz", "probes", "hessian_topk", "hessian_trace",
           "hessian_density", "density", "topk_observable", "trace_observable", "density_observable"]

LANCZOS_STEPS = 20  # Lanczos steps per record (static): the number of Hessian-vector products of one run.
TOPK = 4  # eigenvalues recorded by hessian_topk.
PROBES = 8  # Rademacher probes of the trace and the density.
_PROBE_SEED = 19900101  # fixed: every member draws the same probes (masked to its width).


def lanczos(matvec, v, steps: int):
    """``steps`` Lanczos steps with full reorthogonalisation from ``v`` (any non-zero norm).

    Each new vector is orthogonalised against all previous ones, twice ("twice is enough"), which keeps the basis
    orthonormal to round-off so that no spurious copies of converged eigenvalues appear.

    Returns:
      ``(alpha, beta, q)``: the diagonal ``alpha[steps]`` and off-diagonal ``beta[steps]`` of the tridiagonal
      ``T`` (``beta[j]`` couples steps ``j`` and ``j + 1``; ``beta[steps - 1]`` is the norm of the residual left
      after the last step, which gives the Ritz residuals), and the basis ``q[steps, dim]``. After a breakdown the
      remaining ``alpha``, ``beta`` and rows of ``q`` are zero.
    """
    dim = v.shape[0]
    dtype = v.dtype
    tiny = 100 * jnp.finfo(dtype).eps
    q = jnp.zeros((steps + 1, dim), dtype).at[0].set(v / jnp.linalg.norm(v))

    def body(j, carry):
        q, alpha, beta, scale = carry
        w = matvec(q[j])
        a = q[j] @ w
        for _ in range(2):  # q's unfilled rows are zero, so projecting on all of q projects on the basis so far
            w = w - (q @ w) @ q
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a) + b)
        ok = jnp.isfinite(b) & (b > tiny * scale)
        q = q.at[j + 1].set(jnp.where(ok, w / jnp.where(ok, b, 1.0), 0.0))
        return q, alpha.at[j].set(a), beta.at[j].set(jnp.where(ok, b, 0.0)), scale

    zeros = jnp.zeros(steps, dtype)
    q, alpha, beta, _ = jax.lax.fori_loop(0, steps, body, (q, zeros, zeros, jnp.zeros((), dtype)))
    return alpha, beta, q[:steps]


def ritz(alpha, beta):
    """Ritz values (ascending), first and last components of their unit eigenvectors in ``T``, and a validity mask.

    Rows after a breakdown (``beta[j - 1] == 0`` for ``j >= 1``) form decoupled blocks; they are marked invalid and
    their diagonal is set below every valid Ritz value, so they sort to the bottom.
    """
    valid = jnp.cumprod(jnp.concatenate([jnp.ones(1, bool), beta[:-1] != 0])).astype(bool)
    off = jnp.where(valid[1:], beta[:-1], 0.0)
    floor = jnp.min(jnp.where(valid, alpha, jnp.inf)) - 1.0 - jnp.sum(jnp.abs(alpha) + jnp.abs(beta))
    t = jnp.diag(jnp.where(valid, alpha, floor)) + jnp.diag(off, 1) + jnp.diag(off, -1)
    theta, s = jnp.linalg.eigh(t)
    genuine = jnp.sort(valid)  # eigh sorts ascending, and the invalid block sits below every valid value
    return theta, s[0], s[-1], genuine


def probes(ctx, count: int = PROBES):
    """``count`` Rademacher vectors over the member's flattened parameters, zero on padded units.

    The signs of :meth:`dynsim.models.MLP.init` draws (unit std), so their true-width part does not depend on
    ``n_pad``.
    """
    depth = ctx.prog.model.depth
    ones = jnp.ones((depth,), ctx.mask.dtype)
    draw = lambda i: jnp.sign(ravel_pytree(ctx.prog.model.init(jax.random.fold_in(jax.random.key(_PROBE_SEED), i),
                                                               ctx.prog.n_pad, ctx.hyper.width, ones))[0])
    return jax.vmap(draw)(jnp.arange(count))


def hessian_topk(ctx, params, k: int = TOPK, steps: int = LANCZOS_STEPS):
    """Top ``k`` Hessian eigenvalues (largest first) and their residual bounds, from ``steps`` Lanczos steps."""
    if not 1 <= k <= steps:
        raise ValueError(f"hessian_topk needs 1 <= k <= steps, got k={k}, steps={steps}.")
    alpha, beta, _ = lanczos(hessian_matvec(ctx, params, method="tangent"), start_vector(ctx), steps)
    theta, _, last, genuine = ritz(alpha, beta)
    err = jnp.abs(beta[-1] * last)
    top = slice(steps - 1, steps - 1 - k, -1)
    return jnp.where(genuine[top], theta[top], jnp.nan), jnp.where(genuine[top], err[top], jnp.nan)


def hessian_trace(ctx, params, count: int = PROBES):
    """Hutchinson's trace estimate ``mean_p z_p^T H z_p`` and its standard error over the ``count`` probes."""
    matvec = hessian_matvec(ctx, params, method="tangent")
    samples = jax.lax.map(lambda z: z @ matvec(z), probes(ctx, count))
    return jnp.mean(samples), jnp.std(samples, ddof=1) / np.sqrt(count)


def hessian_density(ctx, params, count: int = PROBES, steps: int = LANCZOS_STEPS):
    """Stochastic Lanczos quadrature: nodes and weights, each ``[count, steps]`` (see the module docstring).

    The products of one probe run in turn (``lax.map``): vmapping them over probes would add a batch dimension to
    every matmul of the member-vmapped program, which XLA:CPU runs slower than the calls in turn.
    """
    matvec = hessian_matvec(ctx, params, method="tangent")

    def one(z):
        theta, first, _, genuine = ritz(*lanczos(matvec, z, steps)[:2])
        return theta, jnp.where(genuine, first**2, 0.0)

    return jax.lax.map(one, probes(ctx, count))


def density(nodes, weights, grid, sigma: float):
    """Gaussian-smoothed spectral density on ``grid`` from SLQ nodes and weights (NumPy, outside the program).

    .. math::

        \\phi(t) = \\frac{1}{n_p} \\sum_{p} \\sum_j w_{pj}\\, \\frac{1}{\\sqrt{2\\pi}\\sigma}
        e^{-(t - \\theta_{pj})^2 / 2\\sigma^2},

    which integrates to 1 (each probe's weights sum to 1). Ghorbani, Krishnan & Xiao (2019), section 3.

    Args:
      nodes, weights: ``[..., probe, node]`` arrays (e.g. ``res["hessian_density_nodes"].sel(...)``); leading axes
        broadcast.
      grid: 1-D array of eigenvalue positions ``t``.
      sigma: Gaussian width, in eigenvalue units.
    Returns:
      ``[..., len(grid)]`` density values.
    """
    nodes, weights, grid = np.asarray(nodes), np.asarray(weights), np.asarray(grid)
    kernel = np.exp(-0.5 * ((grid - nodes[..., None]) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
    return np.mean(np.sum(weights[..., None] * kernel, axis=-2), axis=-2)


def topk_observable(name: str = "hessian_topk", *, k: int = TOPK, steps: int = LANCZOS_STEPS,
                    error: bool = False) -> _obs.Observable:
    """The top ``k`` Hessian eigenvalues (``error=True``: their residual bounds) as an observable, dims ``eig``."""
    if not 1 <= k <= steps:
        raise ValueError(f"hessian_topk needs 1 <= k <= steps, got k={k}, steps={steps}.")

    def compute(ctx, params, extra):
        return dict(zip(("value", "error"), hessian_topk(ctx, params, k, steps))), None

    what = (f"residual bounds |Hy - theta y| of the top {k} Ritz values" if error
            else f"top {k} Hessian eigenvalues of the training loss, largest first")
    return _obs.Observable(name, None, f"{what} ({steps} Lanczos steps, full reorthogonalisation)",
                           dims=("eig",), shape=lambda prog: (k,), shared=_obs.Shared(f"lanczos:{k}:{steps}", compute),
                           part="error" if error else "value")


def trace_observable(name: str = "hessian_trace", *, count: int = PROBES, error: bool = False) -> _obs.Observable:
    """Hutchinson's estimate of ``tr H`` (``error=True``: its standard error) over ``count`` Rademacher probes."""

    def compute(ctx, params, extra):
        return dict(zip(("value", "error"), hessian_trace(ctx, params, count))), None

    what = "standard error of the Hutchinson estimate of" if error else "Hutchinson estimate of"
    return _obs.Observable(name, None, f"{what} the trace of the Hessian of the training loss ({count} "
                           "Rademacher probes)", shared=_obs.Shared(f"hutchinson:{count}", compute),
                           part="error" if error else "value")


def density_observable(name: str, *, count: int = PROBES, steps: int = LANCZOS_STEPS,
                       weights: bool = False) -> _obs.Observable:
    """SLQ nodes (``weights=True``: weights) as an observable, dims ``(probe, node)``."""

    def compute(ctx, params, extra):
        return dict(zip(("nodes", "weights"), hessian_density(ctx, params, count, steps))), None

    what = "quadrature weights" if weights else "quadrature nodes (Ritz values)"
    return _obs.Observable(name, None, f"stochastic Lanczos quadrature {what} of the Hessian spectral density "
                           f"({count} probes x {steps} Lanczos steps); dynsim.observables.density smooths them",
                           dims=("probe", "node"), shape=lambda prog: (count, steps),
                           shared=_obs.Shared(f"slq:{count}:{steps}", compute), part="weights" if weights else "nodes")


OBSERVABLES = (
    topk_observable("hessian_topk"),
    topk_observable("hessian_topk_err", error=True),
    trace_observable("hessian_trace"),
    trace_observable("hessian_trace_err", error=True),
    density_observable("hessian_density_nodes"),
    density_observable("hessian_density_weights", weights=True),
)
