"""Sharpness observables: the top Hessian eigenvalue of each member's training loss (plain, or preconditioned by the
optimizer's step sizes), warm-started between records.

The *sharpness* of a member is the largest eigenvalue of the Hessian of its full-training-set loss (the training
objective, ``0.5 * mean((f - y)^2)``; the test set for an online task) with respect to its trained parameters
``w_l``. The Hessian is the plain one, not preconditioned by the per-layer learning rates: the forward multipliers
``n^-a_l`` are part of the function, the lr multipliers ``n^-c_l`` are not. Under full-batch GD with one learning
rate (``c = 0``, as in every SGD table of :mod:`dynsim.param`) it is the quantity that equilibrates at ``2 / lr``
at the edge of stability (:func:`dynsim.theory.stability.gd_threshold`).

Method: Hessian-vector products ``jax.jvp(jax.grad(L), (w,), (v,))`` (forward-over-reverse, about the cost of two
gradients) drive a static number of iterations inside ``lax.fori_loop``. The program is compiled once, so the count
cannot depend on convergence; instead the iterate is carried between records in the observable's ``extra`` state.
The first record starts from a fixed random unit vector (zero on padded units) refined by :data:`WARMUP`
iterations when the state is created; every later record continues from the previous record's eigenvector for
:data:`ITERS` iterations. The Hessian changes little between records, so the warm start is close and a few
iterations track it; ``sharpness_err`` says how close.

The iteration is LOBPCG with a block of one (Knyazev 2001): Rayleigh-Ritz on ``span{x, r, p}`` (iterate, residual,
previous step), two Hessian-vector products per iteration (``H r`` and ``H p``). It is used instead of
power iteration because power iteration finds the eigenvalue of largest *magnitude*: at a muP init of a tanh
network the Hessian's spectrum can be nearly symmetric or even dominated by its negative end (the residual term
``(f - y) d^2 f`` outweighs the Gauss-Newton term), and power iteration then stalls between the two ends or lands
on the negative one (``tests/test_sharpness.py`` has such a case). LOBPCG maximises the Rayleigh quotient, so it
converges to the *algebraically* largest eigenvalue, at a rate set by the square root of the relative gap rather
than by the gap itself: per Hessian-vector product it beat power iteration on every small network tried, by
orders of magnitude on near-degenerate top pairs.

Caveats:

- The estimate is a Rayleigh quotient, so it never exceeds ``lambda_max`` (up to round-off); a near-degenerate top
  pair converges more slowly and is underestimated until it does. More iterations per record:
  ``register(sharpness_observable("sharpness_16", iters=16))``.
- Memory: a record holds about nine parameter-sized vectors per member (the iterate, the Ritz basis and its image),
  plus one carried between records, against three for power iteration.
- Cost: a Hessian-vector product of the ``edge-of-stability`` MLP (depth 3, width 64, 128 samples) costs about
  three training steps on CPU, so recording every 10 steps with the default 4 iterations costs about 3x plain
  training (``benchmarks/sharpness.py``). Fewer iterations are cheaper but track a turning top eigenvector worse:
  with 2 per record the estimate locked onto the second eigenvalue (7% low) for a record in a tiny test network,
  and on ``edge-of-stability`` runs (GD and Adam, lr 0.15 and 0.3) the 90th percentile of the relative error
  against a converged estimate was 3% with 2 iterations and 0.8% with 4.
- ``sharpness`` and ``sharpness_err`` each carry their own iterate (observables do not share state), so recording
  both runs the iteration twice, on identical numbers. Record ``sharpness_err`` in validation runs.

Preconditioned sharpness (``preconditioned_sharpness``, ``preconditioned_sharpness_err``): the top eigenvalue of
``D H``, where ``D`` is the diagonal of per-parameter step sizes (in units of the base learning rate ``lr``) that the
member's *next* step applies: the step is ``w <- w - lr D u`` with ``u`` the gradient (SGD, or its heavy-ball
sum) or Adam's first-moment estimate:

.. math::

    D_\\text{sgd} = \\mathrm{diag}(n^{-c_l}),\\qquad
    D_\\text{adam} = \\mathrm{diag}\\Big(\\frac{n^{-c_l}}{\\sqrt{\\hat\\nu_{t+1}} + \\epsilon}\\Big),\\quad
    \\hat\\nu_{t+1} = \\frac{\\beta_2 \\nu_t + (1 - \\beta_2)\\, g_t^2}{1 - \\beta_2^{\\,t+1}},

with ``n^-c_l`` the layer's learning-rate multiplier, ``nu_t`` Adam's second-moment state after ``t`` steps and
``g_t`` the full-batch gradient at the recorded parameters (plus ``wd * w`` for coupled weight decay, as the
optimizer sees it): ``nu_hat_{t+1}`` is the bias-corrected second moment that divides step ``t + 1``, well defined at
step 0 too. For Adam with one learning rate per layer (``c_l = 0``) this is ``P^-1 H`` with
``P = diag(sqrt(nu_hat) + eps)``, the *preconditioned sharpness* of Cohen et al. (2022), "Adaptive gradient methods
at the edge of stability", which equilibrates at :func:`dynsim.theory.stability.adam_threshold`; for SGD with
``c_l = 0`` it is the plain sharpness, compared with ``momentum_threshold``. ``D H`` is similar to the symmetric
``D^1/2 H D^1/2``, which is what the iteration runs on (same LOBPCG, same warm start, one extra gradient per
record for Adam). The weight-decay term of the objective is not included (as for ``sharpness``). The optimizer
state is read from ``ctx.opt_state`` (the first ``optax.ScaleByAdamState`` in it); ``adamw`` is treated as Adam
(its decay is decoupled, so the gradient is the loss gradient alone).

Padding: the Hessian's rows and columns for padded weights are exactly zero (the mask cuts those units out of the
function), and the start vector is drawn with :meth:`dynsim.models.MLP.init`, whose true-width part does not depend
on the padded width, so a padded member iterates on the same numbers as an unpadded one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from . import obs as _obs

__all__ = ["ITERS", "WARMUP", "training_loss_fn", "hvp", "hessian_matvec", "top_eigenpair", "start_vector",
           "sharpness", "step_preconditioner", "preconditioned_sharpness", "sharpness_observable"]

ITERS = 4  # LOBPCG iterations per record, from the previous record's eigenvector: 2 * ITERS = 8 products.
WARMUP = 16  # LOBPCG iterations from the random start vector, once, before the first record: 32 products.
_START_SEED = 20210226  # fixed: every member starts from the same direction (masked to its width).


def training_loss_fn(ctx):
    """``params -> 0.5 * mean((f - y)^2)`` on the member's full training set (test set for an online task)."""
    data = ctx.data
    x, y = (data.x_test, data.y_test) if ctx.prog.task.online else (data.x_train, data.y_train)

    def loss(params):
        out = ctx.prog.model.apply(params, x, ctx.scales.mult, ctx.mask)
        return 0.5 * jnp.mean((out - y) ** 2)

    return loss


def hvp(loss, params, v):
    """Hessian-vector product ``H(params) v`` of a scalar ``loss``, forward-over-reverse."""
    return jax.jvp(jax.grad(loss), (params,), (v,))[1]


def _orthonormalise(v, basis):
    """Project the orthonormal rows of ``basis`` out of ``v`` (twice) and normalise.

    Returns ``(q, ok)``; ``ok`` is False, and ``q`` zero, where nothing (or nothing finite) is left.
    """
    for _ in range(2):  # "twice is enough" (Kahan): one pass loses orthogonality when v is nearly in the span.
        v = v - (basis @ v) @ basis
    norm = jnp.linalg.norm(v)
    ok = jnp.isfinite(norm) & (norm > 0)
    return v * jnp.where(ok, 1.0 / jnp.where(ok, norm, 1.0), 0.0), ok


def _ritz_step(matvec, x, hx, p):
    """One LOBPCG iteration: Rayleigh-Ritz on ``span{x, r, p}`` (``span{x, r}`` where ``p`` is None, statically).

    Returns the new ``(x, Ax, p)``; where the arithmetic stops being finite, the old ``x`` and ``Ax`` and a zero
    ``p``.
    """
    lam = x @ hx
    q1, ok1 = _orthonormalise(hx - lam * x, x[None])
    if p is None:
        qs, valid = jnp.stack([x, q1]), jnp.stack([jnp.asarray(True), ok1])
        hqs = jnp.stack([hx, matvec(q1)])
    else:
        q2, ok2 = _orthonormalise(p, jnp.stack([x, q1]))
        qs, valid = jnp.stack([x, q1, q2]), jnp.stack([jnp.asarray(True), ok1, ok2])
        # Two calls, not one vmapped call: batching the products adds a batch dimension to every matmul of the
        # (already member-vmapped) Hessian-vector product, which XLA:CPU ran 2x slower than the calls in turn.
        hqs = jnp.stack([hx, matvec(q1), matvec(q2)])
    gram = qs @ hqs.T
    gram = 0.5 * (gram + gram.T)
    # A dropped direction (a zero vector) gets a diagonal entry below lam and no coupling, so the top Ritz
    # vector, whose value is at least lam (x is in the span), has no component along it.
    floor = lam - 1.0 - jnp.abs(lam)
    gram = jnp.where(valid[:, None] & valid[None, :], gram, 0.0) + jnp.diag(jnp.where(valid, 0.0, floor))
    c = jnp.linalg.eigh(gram)[1][:, -1]
    x_new, hx_new, p_new = c @ qs, c @ hqs, c[1:] @ qs[1:]
    inv = 1.0 / jnp.linalg.norm(x_new)
    pn = jnp.linalg.norm(p_new)
    new = (inv * x_new, inv * hx_new, p_new / jnp.where(pn > 0, pn, 1.0))
    good = jnp.isfinite(x_new @ hx_new) & jnp.isfinite(inv)
    return tuple(jnp.where(good, a, b) for a, b in zip(new, (x, hx, jnp.zeros_like(x))))


def top_eigenpair(matvec, x, iters: int):
    """Largest eigenvalue of a symmetric linear map ``A`` by ``iters`` LOBPCG iterations from the unit vector ``x``.

    Each iteration does Rayleigh-Ritz on ``span{x, r, p}`` with ``r = Ax - (x.Ax) x`` and ``p`` the previous
    step (the first iteration has none: ``span{x, r}``), and keeps the top Ritz pair. ``A r`` and ``A p`` are
    computed afresh every iteration rather than carried by linearity (the textbook saving), because a carried
    ``A p`` accumulates round-off that compounds once the iterate has converged (``r`` and ``p`` are then noise),
    which can push the Ritz value far above ``lambda_max``. So the cost is ``2 * iters`` calls of ``matvec`` (one
    for ``iters = 0``) and every Ritz value is a Rayleigh quotient of ``A`` up to round-off, hence at most
    ``lambda_max``.

    The step ``p`` is not carried from one call to the next: once converged it is round-off, and normalising it
    would turn differences in summation order (a padded member against an unpadded one) into different search
    directions.

    Args:
      matvec: ``v -> A v`` on 1-D arrays.
      x: 1-D unit start vector.
      iters: number of iterations (static).
    Returns:
      ``(lam, residual, x)``: the top Ritz value, the residual ``|Ax - lam x|`` of the returned unit vector ``x``
      (some eigenvalue of ``A`` lies within it of ``lam``), and ``x``, the start of a warm-started call. Where the
      arithmetic stops being finite the previous iterate is kept, so ``x`` stays a finite unit vector.
    """
    if iters < 0:
        raise ValueError(f"top_eigenpair needs iters >= 0, got {iters}.")
    hx = matvec(x)
    if iters > 0:
        x, hx, p = _ritz_step(matvec, x, hx, None)
        x, hx, _ = jax.lax.fori_loop(1, iters, lambda _, c: _ritz_step(matvec, *c), (x, hx, p))
    lam = x @ hx
    return lam, jnp.linalg.norm(hx - lam * x), x


def start_vector(ctx):
    """A fixed random unit vector over the member's (flattened) parameters, zero on padded units.

    Drawn with the model's own init (unit std per layer), so its true-width part does not depend on ``n_pad``.
    """
    depth = ctx.prog.model.depth
    v = ctx.prog.model.init(jax.random.key(_START_SEED), ctx.prog.n_pad, ctx.hyper.width,
                            jnp.ones((depth,), ctx.mask.dtype))
    v = ravel_pytree(v)[0]
    return v / jnp.linalg.norm(v)


def sharpness(ctx, params, x, iters: int = ITERS):
    """Top Hessian eigenvalue of the member's training loss at ``params``, starting from the unit vector ``x``.

    A plain function (jit/vmap it yourself). ``x`` is a unit vector over the parameters flattened by
    ``jax.flatten_util.ravel_pytree``; ``x = start_vector(ctx)`` for a cold start. Returns ``(lam, residual, x)``
    as :func:`top_eigenpair`.
    """
    return top_eigenpair(hessian_matvec(ctx, params), x, iters)


def hessian_matvec(ctx, params, root=None):
    """``v -> H v`` on flat vectors (``v -> root * H (root * v)`` with a flat ``root``).

    The gradient is linearised once (``jax.linearize``): its primal passes are traced once for all the products
    of a record, and their output is the gradient.
    """
    unravel = ravel_pytree(params)[1]
    hessian = jax.linearize(jax.grad(training_loss_fn(ctx)), params)[1]
    if root is None:
        return lambda v: ravel_pytree(hessian(unravel(v)))[0]
    return lambda v: root * ravel_pytree(hessian(unravel(root * v)))[0]


def _adam_state(opt_state) -> optax.ScaleByAdamState:
    """The first ``optax.ScaleByAdamState`` inside an optax state."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    if not found:
        raise ValueError("the optimizer state holds no Adam moments (optax.ScaleByAdamState).")
    return found[0]


def step_preconditioner(ctx, params):
    """The flat diagonal ``D`` of the member's next step, in units of the base learning rate (module docstring).

    ``n^-c_l`` per layer for SGD; divided by ``sqrt(nu_hat_{t+1}) + eps`` for Adam, with ``nu_hat_{t+1}`` from
    ``ctx.opt_state`` and the full-batch gradient at ``params``.
    """
    prog = ctx.prog
    mult = tuple(jnp.full(w.shape, ctx.scales.lr[layer], w.dtype) for layer, w in enumerate(params))
    if prog.optimizer == "sgd":
        return ravel_pytree(mult)[0]
    adam = _adam_state(ctx.opt_state)
    grads = jax.grad(training_loss_fn(ctx))(params)
    if prog.optimizer == "adam" and prog.weight_decay:  # coupled decay: Adam sees the decayed gradient
        grads = jax.tree.map(lambda g, w: g + ctx.hyper.weight_decay * w, grads, params)
    b2 = prog.betas[1]
    count = (adam.count + 1).astype(ravel_pytree(params)[0].dtype)
    nu_hat = jax.tree.map(lambda nu, g: (b2 * nu + (1 - b2) * g**2) / (1 - b2**count), adam.nu, grads)
    return ravel_pytree(jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + prog.eps), mult, nu_hat))[0]


def preconditioned_sharpness(ctx, params, x, iters: int = ITERS):
    """Top eigenvalue of ``D H`` (:func:`step_preconditioner`) by LOBPCG on ``D^1/2 H D^1/2`` from the unit ``x``.

    Reads the optimizer state from ``ctx.opt_state``. ``x`` lives in the symmetric form's coordinates
    (``D^-1/2`` times an eigenvector of ``D H``). Returns ``(lam, residual, x)`` as :func:`top_eigenpair`.
    """
    return top_eigenpair(hessian_matvec(ctx, params, jnp.sqrt(step_preconditioner(ctx, params))), x, iters)


def sharpness_observable(name: str = "sharpness", *, iters: int = ITERS, warmup: int = WARMUP,
                         residual: bool = False, preconditioned: bool = False) -> _obs.Observable:
    """An :class:`~dynsim.obs.Observable` recording the sharpness (or, with ``residual=True``, its residual).

    Args:
      name: variable name.
      iters: LOBPCG iterations per record (static), from the previous record's eigenvector; a record costs
        ``2 * iters`` Hessian-vector products.
      warmup: iterations spent once, when the state is created, on the random start vector.
      residual: record ``|Ax - lam x|`` of the final iterate instead of ``lam``.
      preconditioned: the top eigenvalue of ``D H`` (:func:`preconditioned_sharpness`) instead of ``H``.
    """
    if iters < 0 or warmup < 0:
        raise ValueError(f"sharpness observable needs iters >= 0 and warmup >= 0, got {iters} and {warmup}.")

    def matvec(ctx, params):
        return hessian_matvec(ctx, params, jnp.sqrt(step_preconditioner(ctx, params)) if preconditioned else None)

    def init_extra(ctx, params):
        return top_eigenpair(matvec(ctx, params), start_vector(ctx), warmup)[2]

    def compute(ctx, params, x):
        lam, res, x = top_eigenpair(matvec(ctx, params), x, iters)
        return (res if residual else lam), x

    matrix = ("D H, the Hessian of the training loss scaled by the optimizer's per-parameter step sizes D "
              "(Adam: n^-c / (sqrt(nu_hat) + eps))" if preconditioned else
              "the Hessian of the training loss w.r.t. the parameters")
    if residual:
        doc = (f"residual |Ax - lam x| of the top-eigenvalue estimate of {matrix} after {iters} warm-started "
               f"LOBPCG iterations: some eigenvalue lies within it of the estimate")
    else:
        doc = f"top eigenvalue of {matrix} ({iters} warm-started LOBPCG iterations per record)"
    return _obs.Observable(name, compute, doc, init_extra=init_extra)


_obs.register(sharpness_observable("sharpness"))
_obs.register(sharpness_observable("sharpness_err", residual=True))
_obs.register(sharpness_observable("preconditioned_sharpness", preconditioned=True))
_obs.register(sharpness_observable("preconditioned_sharpness_err", residual=True, preconditioned=True))
