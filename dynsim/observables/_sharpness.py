"""Sharpness observables: the top Hessian eigenvalue of each member's training loss (plain, or preconditioned by the
optimizer's step sizes), warm-started between records.

The *sharpness* of a member is the largest eigenvalue of the Hessian of its full-training-set loss (the training
objective, ``0.5 * mean((f - y)^2)``; the test set for an online task) with respect to its trained parameters
``w_l``. The Hessian is the plain one, not preconditioned by the per-layer learning rates: the forward multipliers
``n^-a_l`` are part of the function, the lr multipliers ``n^-c_l`` are not. Under full-batch GD with one learning
rate (``c = 0``, as in every SGD table of :mod:`dynsim.param`) it is the quantity that equilibrates at ``2 / lr``
at the edge of stability (:func:`dynsim.theory.stability.gd_threshold`).

Method: Hessian-vector products (by default the gradient linearised once per record with ``jax.linearize``,
forward-over-reverse, each product then running only the tangent part, about twice a gradient's matmul FLOPs; with
the program's ``hvp = "fd"`` a forward difference of gradients, see :func:`hessian_matvec`) build a Krylov space
of a static dimension inside ``lax.fori_loop``, and Rayleigh-Ritz on it gives the estimate (:func:`top_eigenpair`).
The program is compiled once, so the dimension cannot depend on convergence; instead the eigenvector is carried
between records in the observable's ``extra`` state. The first record starts from a fixed random unit vector (zero
on padded units) refined by a :data:`WARMUP`-dimensional Krylov space when the state is created; every later record
searches the :data:`PRODUCTS`-dimensional Krylov space of the previous record's eigenvector. The Hessian changes
little between records, so the warm start is close and a few products track it; ``sharpness_err`` says how close.

The Krylov space ``span{x, Hx, ..., H^(m-1) x}`` is the best that ``m`` products can reach from ``x``, and its top
Ritz value maximises the Rayleigh quotient over it, so it converges to the *algebraically* largest eigenvalue.
Power iteration would find the eigenvalue of largest *magnitude*: at a muP init of a tanh network the Hessian's
spectrum can be nearly symmetric or even dominated by its negative end (the residual term ``(f - y) d^2 f``
outweighs the Gauss-Newton term), and power iteration then stalls between the two ends or lands on the negative
one (``tests/test_sharpness.py`` has such a case).

The estimate is a Rayleigh quotient, so it never exceeds ``lambda_max`` (up to round-off, or the products' own
error with forward differences); a near-degenerate top pair converges more slowly and is underestimated until it
does, and so is a top eigenvector that turns fast between records (at a catapult). A record holds ``2 * PRODUCTS``
parameter-sized vectors per member, plus one carried between records. ``sharpness`` and ``sharpness_err`` read one
iteration (:class:`dynsim.observables.Shared`): recording both costs what recording one does. Measured accuracy
and cost against the number of products, and against LOBPCG: ``docs/measurements.md``; a larger space per record:
``register(sharpness_observable("sharpness_16", products=16))``.

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
``D^1/2 H D^1/2``, which is what the Krylov space is built on (same products, same warm start; Adam's gradient
is the one the products already compute: the linearisation's primal output, or the difference quotients' base
point). The weight-decay term of the objective is not included (as for
``sharpness``). The optimizer state is read from ``ctx.opt_state`` (the first ``optax.ScaleByAdamState`` in it);
``adamw`` is treated as Adam (its decay is decoupled, so the gradient is the loss gradient alone).

Padding: the Hessian's rows and columns for padded weights are exactly zero (the mask cuts those units out of the
function), and the start vector is drawn with :meth:`dynsim.models.MLP.init`, whose true-width part does not depend
on the padded width, so a padded member iterates on the same numbers as an unpadded one (up to summation order,
which forward-difference products amplify to about ``eps / sqrt(eps)``: 1e-8 relative in float64, 1e-4 in
float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from .. import optim as _optim
from . import _registry as _obs

__all__ = ["PRODUCTS", "WARMUP", "HVP_METHODS", "training_loss_fn", "hessian_matvec", "top_eigenpair", "start_vector",
           "sharpness", "step_preconditioner", "preconditioned_sharpness", "sharpness_observable"]

HVP_METHODS = ("tangent", "fd")  # how a Hessian-vector product is computed (see hessian_matvec)
PRODUCTS = 5  # Hessian-vector products per record: a 5-dimensional Krylov space of the previous eigenvector.
WARMUP = 32  # products (Krylov dimension) from the random start vector, once, before the first record.
_START_SEED = 20210226  # fixed: every member starts from the same direction (masked to its width).


def training_loss_fn(ctx):
    """``params ->`` the model's loss (``model.loss``, e.g. ``0.5 * mean((f - y)^2)``) on the member's full training
    set (test set for an online task)."""
    data = ctx.data
    x, y = (data.x_test, data.y_test) if ctx.prog.task.online else (data.x_train, data.y_train)
    model = ctx.prog.model
    return lambda params: model.loss(model.apply(params, x, ctx.scales.mult, ctx.mask), y)


def top_eigenpair(matvec, x, products: int):
    """Largest eigenvalue of a symmetric linear map ``A`` by Rayleigh-Ritz on a Krylov space of the unit vector ``x``.

    The space is ``K_m = span{x, Ax, ..., A^(m-1) x}`` with ``m = products``, built by Lanczos with full
    reorthogonalisation (Paige 1971; Golub & Van Loan, *Matrix Computations*, section 10.1): ``q_0 = x`` and
    ``q_(j+1)`` is ``A q_j`` orthonormalised against ``q_0 .. q_j``. Every ``A q_j`` is kept, so the projected
    matrix ``T = Q A Q^T`` comes from the products themselves rather than from the three-term recurrence, and the
    returned Ritz pair ``(lam, y)`` (the top eigenpair of ``T``) has ``lam = y.Ay`` up to round-off, a Rayleigh
    quotient of ``A``, hence at most ``lambda_max``; its residual ``|Ay - lam y|`` is computed from
    ``Ay = c @ (A Q)``, and some eigenvalue of ``A`` lies within it of ``lam``.

    ``K_m`` is the best space ``m`` products can reach from ``x`` (every polynomial of degree ``< m`` in ``A``
    applied to ``x``), so its Ritz value is at least that of any method spending ``m`` products on ``x``:
    block-one LOBPCG (Knyazev 2001) spends two products per iteration and after ``k`` iterations its iterate lies
    in ``K_(k+1)``, i.e. ``2 k`` products for what Lanczos does with ``k + 1``. Like LOBPCG it maximises the
    Rayleigh quotient, so it converges to the *algebraically* largest eigenvalue, not the one of largest magnitude
    (power iteration's), at a rate set by the square root of the relative gap (Kaniel-Paige-Saad bound).

    The projected matrix is read off the orthonormalisation's own coefficients (:func:`_krylov`) and the Ritz value
    off its eigenvalues, so a record makes no pass over its vectors beyond the Gram-Schmidt ones and the Ritz
    vector (``Ay`` is formed only where the residual is used). On the ``edge-of-stability`` quick sweep this took a
    5-product record from 15 to 12 training steps (``python -m benchmarks.sharpness``). Unrolling the loop saved 4%
    more and cost 0.6 s of compilation, so it stays a loop.

    Where ``K_m`` is invariant (``x`` spans an eigenspace, or ``m`` exceeds the dimension) the further directions
    are zero and take no part. Where the arithmetic stops being finite ``x`` itself is returned, so the warm start
    stays a finite unit vector.

    Args:
      matvec: ``v -> A v`` on 1-D arrays.
      x: 1-D unit start vector.
      products: ``m >= 1``, the number of calls of ``matvec`` and the dimension of the Krylov space (static).
    Returns:
      ``(lam, residual, y)``: the top Ritz value, the residual ``|Ay - lam y|`` of the returned unit vector ``y``,
      and ``y``, the start of a warm-started call.
    """
    if products < 1:
        raise ValueError(f"top_eigenpair needs products >= 1, got {products}.")
    return _ritz_pair(x, *_krylov(matvec, x, products))


def _krylov(matvec, x, products: int):
    """Lanczos with full reorthogonalisation in ``lax.fori_loop``: ``(basis, image, gram, valid)``, rows are
    directions.

    The basis is a fixed ``[products, dim]`` array whose rows not yet reached are zero. ``gram[i, j] = q_i . A q_j``
    comes from the projection coefficients of the two classical Gram-Schmidt passes ("twice is enough", Kahan; one
    pass loses orthogonality when ``A q_j`` is nearly inside the span, as it is from a good warm start):
    ``A q_j = sum_(i <= j) (c1_i + c2_i) q_i + beta_j q_(j+1)`` gives the upper triangle and the lower one is its
    mirror, so no pass over the basis and its image is needed after the loop. A direction whose ``beta`` is not
    finite or below ``100 eps |A q_j|`` (round-off alone pushed it out of the span) is dropped: zero, not valid.
    """
    eps = jnp.finfo(x.dtype).eps
    basis = jnp.zeros((products, x.size), x.dtype).at[0].set(x)
    image = jnp.zeros_like(basis)
    gram = jnp.zeros((products, products), x.dtype)
    valid = jnp.zeros((products,), bool).at[0].set(True)

    def extend(j, carry):
        basis, image, gram, valid = carry
        a = matvec(basis[j])
        c1 = basis @ a
        r = a - c1 @ basis
        c2 = basis @ r
        r = r - c2 @ basis
        beta = jnp.sqrt(r @ r)
        keep = j + 1 < products  # the last product extends nothing
        nxt = jnp.minimum(j + 1, products - 1)
        ok = keep & valid[j] & jnp.isfinite(beta) & (beta > 100 * eps * jnp.sqrt(a @ a))
        q = r * jnp.where(ok, 1.0 / jnp.where(ok, beta, 1.0), 0.0)
        # Entries past j are zero (basis rows not reached yet); the subdiagonal q_(j+1).Aq_j = beta_j comes from
        # mirroring q_j.Aq_(j+1) of the next column, as the whole lower triangle does.
        column = jnp.where(keep, c1 + c2, c1)
        return (basis.at[nxt].set(jnp.where(keep, q, basis[nxt])), image.at[j].set(a), gram.at[:, j].set(column),
                valid.at[nxt].set(jnp.where(keep, ok, valid[nxt])))

    basis, image, gram, valid = jax.lax.fori_loop(0, products, extend, (basis, image, gram, valid))
    return basis, image, jnp.triu(gram) + jnp.triu(gram, 1).T, valid


def _ritz_pair(x, basis, image, gram, valid):
    """The top Ritz pair of the projected matrix ``gram`` (see :func:`top_eigenpair`) as ``(lam, residual, y)``."""
    lam0 = gram[0, 0]
    # A dropped direction (a zero row) gets a diagonal entry below x.Ax and no coupling, so the top Ritz vector,
    # whose value is at least x.Ax (x is in the span), has no component along it.
    floor = lam0 - 1.0 - jnp.abs(lam0)
    pair = valid[:, None] & valid[None, :]
    gram = jnp.where(pair, gram, 0.0) + jnp.diag(jnp.where(valid, 0.0, floor))
    theta, vecs = jnp.linalg.eigh(jnp.where(jnp.isfinite(gram), gram, 0.0))
    c = vecs[:, -1]
    # The Ritz value is the projected matrix's top eigenvalue, y.Ay for the Ritz vector y up to round-off; Ay is
    # formed only for the residual, so a program that does not record the residual never builds it.
    y, ay = c @ basis, c @ image
    inv = 1.0 / jnp.sqrt(y @ y)
    y, ay = inv * y, inv * ay
    lam = theta[-1]
    good = jnp.isfinite(lam) & jnp.isfinite(inv) & jnp.all(jnp.isfinite(gram))
    y = jnp.where(good, y, x)
    lam = jnp.where(good, lam, lam0)
    ay = jnp.where(good, ay, image[0])
    return lam, jnp.linalg.norm(ay - lam * y), y


def start_vector(ctx):
    """A fixed random unit vector over the member's (flattened) parameters, zero on padded units.

    Drawn with the model's own init (unit std per layer), so its true-width part does not depend on ``n_pad``.
    """
    depth = ctx.prog.model.depth
    v = ctx.prog.model.init(jax.random.key(_START_SEED), ctx.prog.n_pad, ctx.hyper.width,
                            jnp.ones((depth,), ctx.mask.dtype))
    v = ravel_pytree(v)[0]
    return v / jnp.linalg.norm(v)


def sharpness(ctx, params, x, products: int = PRODUCTS):
    """Top Hessian eigenvalue of the member's training loss at ``params``, starting from the unit vector ``x``.

    A plain function (jit/vmap it yourself). ``x`` is a unit vector over the parameters flattened by
    ``jax.flatten_util.ravel_pytree``; ``x = start_vector(ctx)`` for a cold start. Returns ``(lam, residual, x)``
    as :func:`top_eigenpair`.
    """
    return top_eigenpair(hessian_matvec(ctx, params), x, products)


def hessian_matvec(ctx, params, root=None, method: str | None = None):
    """``v -> H v`` on flat vectors (``v -> root * H (root * v)`` with a flat ``root``).

    ``method`` (default: the program's ``hvp`` setting, ``"tangent"`` where it has none) picks the product:

    - ``"tangent"``: the gradient is linearised once (``jax.linearize``, forward-over-reverse): its primal passes
      run once for all the products of a record, and each product runs only the tangent (linear) part, about
      twice a gradient's matmul FLOPs. Exact up to round-off.
    - ``"fd"``: a forward difference of gradients, ``(g(w + h u) - g(w)) / h`` with ``u = root * v`` and
      ``h |u| = sqrt(eps)`` of the dtype, the step that balances truncation against round-off (Dennis & Schnabel,
      *Numerical Methods for Unconstrained Optimization*, section 5.4; the Jacobian-free Newton-Krylov product of
      Knoll & Keyes 2004), taken as an absolute length: a step scaled by ``|w|`` as they suggest for badly scaled
      variables erred 10x more on the Rayleigh quotient below (``|w| = 11``). One gradient per product, with
      ``g(w)`` shared by the record: on the ``edge-of-stability`` quick sweep a product costs about 1.6 training
      steps against 2.3 (``python -m benchmarks.sharpness``). Its truncation error is ``h/2`` times a third
      derivative and its round-off ``eps / h`` times the gradient's terms; in float32 (``h |u| = 3.5e-4``) it
      measured 1.6e-4 relative on the Rayleigh quotient of the top eigenvector at the edge of stability (a tanh
      MLP of width 64). On that sweep's recorded sharpness the median error is 1.1e-4 and the 90th percentile
      2.7e-3 (1.5e-3 with tangent products), and a value can exceed ``lambda_max`` (by 0.4% at most there). A
      weight above about ``1 / sqrt(eps)`` (100 in float32) loses the step to its own round-off. The round-off also
      makes results depend on summation order at that level (a padded member agrees with its unpadded self to about
      1e-4 in float32, not 1e-7). Only for smooth
      models: a ReLU unit whose pre-activation crosses zero within ``h`` adds a jump of order ``1 / h``.
    """
    return _hessian(ctx, params, method)[1](root)


def _hessian(ctx, params, method: str | None = None):
    """``(grads, make)``: the training gradient at ``params`` (a tree) and ``make(root)``, the flat product of
    :func:`hessian_matvec` with the method of the program (``method`` overrides it)."""
    method = method or getattr(ctx.prog, "hvp", "tangent")
    grad = jax.grad(training_loss_fn(ctx))
    if method == "tangent":
        grads, linear = jax.linearize(grad, params)
        return grads, lambda root=None: _flat_matvec(linear, params, root)
    if method == "fd":
        grads = grad(params)
        return grads, lambda root=None: _fd_matvec(grad, params, grads, root)
    raise ValueError(f"hvp must be one of {', '.join(HVP_METHODS)}, got {method!r}.")


def _fd_matvec(grad, params, grads, root=None):
    """``v -> root * (g(w + h u) - g(w)) / h`` with ``u = root * v``, ``h |u| = sqrt(eps)`` (``hessian_matvec``)."""
    w, unravel = ravel_pytree(params)
    g0 = ravel_pytree(grads)[0]
    size = jnp.sqrt(jnp.finfo(w.dtype).eps)

    def matvec(v):
        u = v if root is None else root * v
        norm = jnp.sqrt(u @ u)
        zero = norm == 0  # a dropped (zero) Krylov direction maps to zero; a NaN one stays NaN
        h = size / jnp.where(zero, 1.0, norm)
        hv = jnp.where(zero, 0.0, (ravel_pytree(grad(unravel(w + h * u)))[0] - g0) / h)
        return hv if root is None else root * hv

    return matvec


def _flat_matvec(hessian, params, root=None):
    """The linear map ``hessian`` on parameter trees as ``v -> H v`` (or ``root * H (root * v)``) on flat vectors."""
    unravel = ravel_pytree(params)[1]
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


def step_preconditioner(ctx, params, grads=None):
    """The flat diagonal ``D`` of the member's next step, in units of the base learning rate (module docstring).

    ``n^-c_l`` per layer for SGD; divided by ``sqrt(nu_hat_{t+1}) + eps`` for Adam, with ``nu_hat_{t+1}`` from
    ``ctx.opt_state`` and the full-batch gradient at ``params`` (``grads`` where the caller has it already).
    """
    prog = ctx.prog
    mult = tuple(jnp.full(w.shape, ctx.scales.lr[layer], w.dtype) for layer, w in enumerate(params))
    if prog.optimizer == "sgd":
        return ravel_pytree(mult)[0]
    adam = _adam_state(ctx.opt_state)
    if grads is None:
        grads = jax.grad(training_loss_fn(ctx))(params)
    if prog.optimizer == "adam" and prog.weight_decay:  # coupled decay: Adam sees the decayed gradient
        decay = _optim.layer_decay(prog.model, ctx.hyper.weight_decay)  # the optimizer's own decay term
        grads = decay.update(grads, decay.init(params), params)[0]
    b2 = prog.betas[1]
    count = (adam.count + 1).astype(ravel_pytree(params)[0].dtype)
    nu_hat = jax.tree.map(lambda nu, g: (b2 * nu + (1 - b2) * g**2) / (1 - b2**count), adam.nu, grads)
    return ravel_pytree(jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + prog.eps), mult, nu_hat))[0]


def preconditioned_sharpness(ctx, params, x, products: int = PRODUCTS):
    """Top eigenvalue of ``D H`` (:func:`step_preconditioner`): :func:`top_eigenpair` on ``D^1/2 H D^1/2``.

    Reads the optimizer state from ``ctx.opt_state``. ``x`` lives in the symmetric form's coordinates
    (``D^-1/2`` times an eigenvector of ``D H``). Returns ``(lam, residual, x)`` as :func:`top_eigenpair`.
    """
    return top_eigenpair(_preconditioned_matvec(ctx, params), x, products)


def _preconditioned_matvec(ctx, params):
    """``v -> D^1/2 H D^1/2 v``; Adam's ``D`` takes the gradient the products already compute."""
    grads, make = _hessian(ctx, params)
    return make(jnp.sqrt(step_preconditioner(ctx, params, grads)))


def sharpness_observable(name: str = "sharpness", *, products: int = PRODUCTS, warmup: int = WARMUP,
                         residual: bool = False, preconditioned: bool = False) -> _obs.Observable:
    """An :class:`~dynsim.observables.Observable` recording the sharpness (or, with ``residual=True``, its residual).

    Args:
      name: variable name.
      products: Hessian-vector products per record (static), the dimension of the Krylov space of the previous
        record's eigenvector that :func:`top_eigenpair` searches.
      warmup: products spent once, when the state is created, on the random start vector.
      residual: record ``|Ax - lam x|`` of the final iterate instead of ``lam``.
      preconditioned: the top eigenvalue of ``D H`` (:func:`preconditioned_sharpness`) instead of ``H``.
    """
    if products < 1 or warmup < 1:
        raise ValueError(f"sharpness observable needs products >= 1 and warmup >= 1, got {products} and {warmup}.")

    def matvec(ctx, params):
        return _preconditioned_matvec(ctx, params) if preconditioned else hessian_matvec(ctx, params)

    def init_extra(ctx, params):
        return top_eigenpair(matvec(ctx, params), start_vector(ctx), warmup)[2]

    def compute(ctx, params, x):
        lam, res, x = top_eigenpair(matvec(ctx, params), x, products)
        return {"value": lam, "residual": res}, x

    kind = "preconditioned" if preconditioned else "plain"
    shared = _obs.Shared(f"krylov:{kind}:{products}:{warmup}", compute, init_extra)
    matrix = ("D H, the Hessian of the training loss scaled by the optimizer's per-parameter step sizes D "
              "(Adam: n^-c / (sqrt(nu_hat) + eps))" if preconditioned else
              "the Hessian of the training loss w.r.t. the parameters")
    if residual:
        doc = (f"residual |Ax - lam x| of the top-eigenvalue estimate of {matrix} from a {products}-dimensional "
               f"Krylov space of the previous eigenvector: some eigenvalue lies within it of the estimate")
    else:
        doc = (f"top eigenvalue of {matrix} (Rayleigh-Ritz on a {products}-dimensional Krylov space of the "
               f"previous record's eigenvector)")
    return _obs.Observable(name, None, doc, shared=shared, part="residual" if residual else "value")


OBSERVABLES = (
    sharpness_observable("sharpness"),
    sharpness_observable("sharpness_err", residual=True),
    sharpness_observable("preconditioned_sharpness", preconditioned=True),
    sharpness_observable("preconditioned_sharpness_err", residual=True, preconditioned=True),
)
