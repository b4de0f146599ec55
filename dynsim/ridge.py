"""Random-feature ridge regression on the power-law model, solved in closed form for many members at once.

The model (Maloney, Roberts & Sully 2022, "A solvable model of neural scaling laws"; Bahri et al. 2024, "Explaining
neural scaling laws"): latent inputs ``x ~ N(0, diag(lambda))`` with ``lambda_j = j^(-2 alpha)``, ``j = 1..M``;
target ``y = sum_j j^(-beta) x_j + eps`` with ``eps ~ N(0, noise_var)``; ``N`` random features
``phi(x) = act(x @ W)`` with ``W`` of shape ``[M, N]`` and i.i.d. ``N(0, 1/M)`` entries; a linear readout ``v``
fitted by ridge regression on ``P`` samples,

.. math::

    \\hat v = \\arg\\min_v \\frac1P \\lVert y - \\Phi v\\rVert^2 + \\text{ridge}\\,\\lVert v\\rVert^2
    \\quad(\\text{the minimum-norm solution at ridge} = 0).

Every member of a sweep (width ``N``, sample count ``P``, ridge, seed) is solved exactly with one
eigendecomposition of the smaller Gram matrix of ``Phi``, shared by all ridges. One program is compiled per
group of members, padded to its largest ``(N, P)``; members run through ``lax.map`` inside it (on CPU a batched
eigendecomposition gains nothing and multiplies memory) and ridges are vmapped. Computations run in float64: the
ridgeless solution near ``N = P`` needs the small singular values.

The excess test risk is computed exactly for linear features, :math:`\\sum_j \\lambda_j (W\\hat v - \\beta^*)_j^2`,
and on ``n_test`` fresh samples for ReLU and erf features. :mod:`dynsim.theory.kernel_regression` gives its
deterministic equivalent (:func:`~dynsim.theory.kernel_regression.rf_excess_risk`, linear features).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from . import progress as _progress
from .padding import width_mask
from .theory import kernel_regression as _kr

__all__ = ["PowerLawRF", "FEATURES", "NAMES", "DESCRIPTIONS", "draw", "ridge_readouts", "member_losses",
           "limit_losses", "solve", "to_dataset"]

NAMES = ("test_loss", "infinite_data_loss", "infinite_width_loss", "width_fluctuation")
DESCRIPTIONS = {"test_loss": "excess test risk sum_j lambda_j (beta_hat - beta*)_j^2 (exact for linear features, "
                             "on n_test fresh samples otherwise)",
                "infinite_data_loss": "excess risk of the same features with n_train -> infinity",
                "infinite_width_loss": "excess risk on the same data with width -> infinity (ridgeless)",
                "width_fluctuation": "first-order, zero-mean part of test_loss - infinite_width_loss in the "
                                     "fluctuation of W W^T (a control variate)"}
FEATURES = {"linear": lambda u: u, "relu": jax.nn.relu, "erf": jax.scipy.special.erf}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerLawRF:
    """The power-law random-feature model (module docstring). Frozen and hashable: a static argument of ``jit``.

    Attributes:
        n_latent: ``M``, the number of latent directions.
        alpha: spectrum decay, ``lambda_j = j^(-2 alpha)``.
        beta: target decay, ``beta*_j = j^(-beta)``.
        noise_var: label-noise variance.
        features: ``"linear"``, ``"relu"`` or ``"erf"``.
        n_test: test samples for the risk of nonlinear features (linear ones use the exact population risk).
    """

    n_latent: int = 1024
    alpha: float = 0.75
    beta: float = 0.5
    noise_var: float = 0.0
    features: str = "linear"
    n_test: int = 2048

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {self.features!r}.")
        if self.n_latent < 1 or self.n_test < 1:
            raise ValueError("n_latent and n_test must be positive.")
        if 2 * self.alpha + 2 * self.beta <= 1 or self.alpha <= 0:
            raise ValueError("need alpha > 0 and 2 alpha + 2 beta > 1 for a target of finite variance.")
        if self.noise_var < 0:
            raise ValueError("noise_var must be >= 0.")

    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """``(eigenvalues, target_coefs)`` of the latent problem, each ``[M]``."""
        return _kr.power_law_spectrum(self.n_latent, self.alpha, self.beta)


def draw(model: PowerLawRF, key, n_features: int, n_train: int):
    """One member's projection ``W [M, N]``, inputs ``X [P, M]`` and labels ``y [P]``.

    Column ``i`` of ``W`` comes from ``fold_in(fold_in(key, 0), i)`` and sample ``i`` from
    ``fold_in(fold_in(key, 1), i)``: a member's draws do not depend on how far its arrays are padded, nor its
    projection on ``P`` or its data on ``N``.
    """
    lam, coefs = (jnp.asarray(a) for a in model.spectrum())
    m = model.n_latent

    def normals(stream, count, dim):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, stream), i))(jnp.arange(count))
        return jax.vmap(lambda k: jax.random.normal(k, (dim,)))(keys)

    w = normals(0, n_features, m).T / jnp.sqrt(m)
    sample = normals(1, n_train, m + 1)  # latent coordinates and the label noise of each sample
    x = sample[:, :m] * jnp.sqrt(lam)[None, :]
    y = x @ coefs + jnp.sqrt(model.noise_var) * sample[:, m]
    return w, x, y


def ridge_readouts(phi, y, ridges, n_rows=None):
    """Ridge solutions ``[R, N]`` for every ridge in ``ridges [R]`` from one eigendecomposition.

    With ``Phi`` of shape ``[P, N]`` the Gram matrix of the smaller side is diagonalised once, ``Phi^T Phi / P =
    V diag(e) V^T`` when ``N <= P`` and ``Phi Phi^T / P = U diag(e) U^T`` otherwise:

    .. math::

        \\hat v = V\\,\\mathrm{diag}\\Big(\\frac{1}{e + \\text{ridge}}\\Big) V^T \\frac{\\Phi^T y}{P}
        \\quad\\text{or}\\quad
        \\hat v = \\frac{\\Phi^T}{P}\\, U\\,\\mathrm{diag}\\Big(\\frac{1}{e + \\text{ridge}}\\Big) U^T y.

    Eigenvalues below ``min(P, N) * eps * e_max`` are dropped, which makes ``ridge = 0`` the minimum-norm
    least-squares solution (the Gram's eigenvalues are squared singular values, so this keeps singular values down
    to ``sqrt(eps)`` relative: enough away from the interpolation peak ``N = P``, where the ridgeless risk diverges
    anyway). Rows or columns of zeros (padding) get zero eigenvalues and drop out; ``n_rows`` is then the true
    ``P`` that normalises the loss (default ``phi.shape[0]``). The cost is ``O(N P min(N, P))``.
    """
    p, n = phi.shape
    scale = p if n_rows is None else n_rows

    def inverse(e, ridge):
        keep = e > min(p, n) * jnp.finfo(e.dtype).eps * e[-1]
        return jnp.where(keep, 1.0 / jnp.where(keep, e + ridge, 1.0), 0.0)

    if n <= p:
        e, vecs = jnp.linalg.eigh(phi.T @ phi / scale)
        rhs = vecs.T @ (phi.T @ y / scale)
        return jax.vmap(lambda r: vecs @ (inverse(e, r) * rhs))(ridges)
    e, vecs = jnp.linalg.eigh(phi @ phi.T / scale)
    rhs = vecs.T @ y
    return jax.vmap(lambda r: phi.T @ (vecs @ (inverse(e, r) * rhs)) / scale)(ridges)


def _min_norm_fit(a, b):
    """Minimum-norm least squares ``argmin ||a c - b||`` (zero rows or columns of ``a`` allowed)."""
    return ridge_readouts(a, b, jnp.zeros((1,)))[0]


def _population_risk(lam, coefs, beta_hat):
    """Excess risk of the linear predictor ``beta_hat . x`` (exact): ``sum_j lambda_j (beta_hat - beta*)_j^2``."""
    return (beta_hat - jnp.broadcast_to(coefs, beta_hat.shape)) ** 2 @ lam


def _width_fluctuation(lam, coefs, x, y, w, n, p, ridge):
    """First-order part of the test loss in the fluctuation of ``W W^T`` around its mean (a control variate).

    For linear features the fitted latent predictor depends on ``W`` only through ``A = W W^T X^T``:
    :math:`\\hat\\beta(A) = A (X A + P\\,\\text{ridge}\\, I)^{-1} y` (push-through identity). With
    :math:`A_0 = \\mathbb E A = (N/M) X^T`, the directional derivative :math:`dR(A_0)[A - A_0]` of the risk has mean
    zero over ``W`` and carries the ``O(1/sqrt(N))`` fluctuation of the risk, while ``R(A) - R(A_0)`` has mean
    ``O(1/N)``. Subtracting it leaves the ``1/N`` term measurable with few seeds.
    """
    m, rows = x.shape[1], jnp.arange(x.shape[0]) < p

    def risk(a):
        gram = x @ a + jnp.diag(jnp.where(rows, p * ridge, 1.0))  # padded samples: an identity block, y = 0 there
        return _population_risk(lam, coefs, a @ jnp.linalg.solve(gram, y))

    a = w @ (w.T @ x.T)
    a0 = (n / m) * x.T
    return jax.jvp(risk, (a0,), (a - a0,))[1]


def _float64():
    """A context in which JAX computes in float64: ``jax.enable_x64`` (thread-local; JAX >= 0.8), else the global
    ``jax_enable_x64`` flag, restored afterwards."""
    if callable(getattr(jax, "enable_x64", None)):
        return jax.enable_x64(True)
    return _global_float64()


@contextlib.contextmanager
def _global_float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _member_losses(model: PowerLawRF, width_pad: int, n_train_pad: int, limits: tuple, members, ridges):
    """Losses ``[K, 3, R]`` of members ``(seed, width, n_train)`` (rows of ``members [K, 3]``), all padded alike."""
    lam, coefs = (jnp.asarray(a) for a in model.spectrum())
    act = FEATURES[model.features]
    m = model.n_latent

    def one(member):
        seed, n, p = member[0], member[1], member[2]
        key = jax.random.key(seed)
        w, x, y = draw(model, key, width_pad, n_train_pad)
        w = jnp.where(width_mask(n, width_pad, bool)[None, :], w, 0.0)  # padded features: zero columns
        rows = width_mask(p, n_train_pad, bool)[:, None]
        x, y = jnp.where(rows, x, 0.0), jnp.where(rows[:, 0], y, 0.0)  # padded samples: zero rows
        phi = jnp.where(rows, act(x @ w), 0.0)
        v = ridge_readouts(phi, y, ridges, n_rows=p)  # [R, N]
        if model.features == "linear":
            test = _population_risk(lam, coefs, v @ w.T)
        else:
            x_test = jax.random.normal(jax.random.fold_in(key, 2), (model.n_test, m)) * jnp.sqrt(lam)[None, :]
            test = jnp.mean((act(x_test @ w) @ v.T - (x_test @ coefs)[:, None]) ** 2, axis=0)
        # Infinite data (P -> inf), same W: least squares of the target on the features, exact for linear
        # features; span(W) is the whole latent space once N >= M, so the loss is then exactly 0.
        if model.features != "linear" or "infinite_data_loss" not in limits:
            inf_data = jnp.nan
        elif width_pad >= m:
            inf_data = jnp.where(n >= m, 0.0, jnp.nan)
        else:
            g = w * jnp.sqrt(lam)[:, None]
            inf_data = _population_risk(lam, coefs, w @ _min_norm_fit(g, jnp.sqrt(lam) * coefs))
        # Infinite width (N -> inf), same data: W W^T -> (N / M) I, so the readout becomes the minimum-norm
        # (ridge / N -> 0) latent regression; computed for linear features below the latent dimension, with the
        # first-order part of test_loss - inf_width in the fluctuation of W W^T (see _width_fluctuation).
        if model.features == "linear" and n_train_pad < m and "infinite_width_loss" in limits:
            inf_width = jnp.broadcast_to(_population_risk(lam, coefs, _min_norm_fit(x, y)), test.shape)
            fluctuation = jax.vmap(lambda r: _width_fluctuation(lam, coefs, x, y, w, n, p, r))(ridges)
        else:
            inf_width = fluctuation = jnp.full(test.shape, jnp.nan)
        return jnp.stack([test, jnp.broadcast_to(inf_data, test.shape), inf_width, fluctuation])

    return jax.lax.map(one, members)


def member_losses(model: PowerLawRF, widths, n_trains, seeds, ridges, limits=NAMES[1:]) -> dict[str, np.ndarray]:
    """Excess risks of the members ``(widths[k], n_trains[k], seed)``, all in one compiled program.

    Members are padded to the largest width and sample count among them (zero features and samples, which change
    nothing: see :func:`ridge_readouts`), so pass sizes of one order of magnitude together and split wider ranges.

    Args:
        model: the :class:`PowerLawRF`.
        widths: ``N`` per point, ``[K]``.
        n_trains: ``P`` per point, ``[K]``.
        seeds: ``[S]``.
        ridges: ``[R]``.
        limits: which of ``infinite_data_loss`` (an ``N x N`` eigendecomposition per member) and
            ``infinite_width_loss`` (``P x P`` solves, and ``width_fluctuation`` with it) to compute.

    Returns:
        ``{name: [K, S, R]}`` for ``test_loss`` (the member's excess risk), ``infinite_data_loss`` (the same
        features with ``P -> inf``), ``infinite_width_loss`` (the same data with ``N -> inf``) and
        ``width_fluctuation`` (the zero-mean first-order part of ``test_loss - infinite_width_loss``, for
        ``ridge = 0``: subtract it to see the ``1/N`` approach with few seeds); NaN where not computed.
    """
    widths, n_trains = np.asarray(widths, dtype=int), np.asarray(n_trains, dtype=int)
    if widths.ndim != 1 or widths.shape != n_trains.shape:
        raise ValueError(f"widths and n_trains are the (N, P) of each point, so they need one length; got shapes "
                         f"{widths.shape} and {n_trains.shape} (use solve() for a grid).")
    seeds = np.asarray(list(seeds), dtype=int)
    members = np.stack(np.broadcast_arrays(seeds[None, :], widths[:, None], n_trains[:, None]), -1).reshape(-1, 3)
    with _float64():
        out = _member_losses(model, int(widths.max()), int(n_trains.max()), tuple(limits), jnp.asarray(members),
                             jnp.asarray(ridges, dtype=jnp.float64))
        out = np.asarray(out).reshape(len(widths), len(seeds), len(NAMES), -1)
    return {name: out[:, :, i] for i, name in enumerate(NAMES)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _limit_losses(model: PowerLawRF, sizes: tuple, limit: str, seeds):
    """``[S, K]`` one-side-infinite losses of each seed at each of ``sizes``, from one draw per seed (see
    :func:`limit_losses`)."""
    lam, coefs = (jnp.asarray(a) for a in model.spectrum())
    largest = max(sizes)
    u = jnp.sqrt(lam) * coefs  # the target in the whitened latent space: the excess risk is |whitened error|^2

    def one(seed):
        key = jax.random.key(seed)
        if limit == "infinite_data_loss":  # the first n features with P -> inf: a projection in the lambda metric
            w, _, _ = draw(model, key, largest, 1)
            g = jnp.sqrt(lam)[:, None] * w
            chol = jnp.linalg.cholesky(g.T @ g)
            # G^T G = L L^T; the leading n x n block of L is the factor of the first n features' Gram, so r_i^2 for
            # r = L^-1 G^T u is what the i-th feature adds to the projection of u on the span
            r = jax.scipy.linalg.solve_triangular(chol, g.T @ u, lower=True)
            captured = jnp.cumsum(r**2)
            return jnp.stack([u @ u - captured[n - 1] for n in sizes])
        _, x, y = draw(model, key, 1, largest)  # the first p samples with N -> inf: min-norm interpolation
        chol = jnp.linalg.cholesky(x @ x.T)
        # X X^T = L L^T; with Q = X^T L^-T (orthonormal columns, the i-th from the first i samples) and s = L^-1 y,
        # the interpolant of the first p samples is X_p^T (X_p X_p^T)^-1 y_p = Q[:, :p] s[:p]
        q = jax.scipy.linalg.solve_triangular(chol, x, lower=True).T
        s = jax.scipy.linalg.solve_triangular(chol, y, lower=True)
        return jnp.stack([_population_risk(lam, coefs, q[:, :n] @ s[:n]) for n in sizes])

    return jax.lax.map(one, seeds)


def limit_losses(model: PowerLawRF, sizes, seeds, limit: str) -> np.ndarray:
    """One-side-infinite excess risks ``[K, S]``, the ``limit`` of :func:`member_losses` for the same draws, without
    solving the finite problem.

    ``limit="infinite_data_loss"``: ``sizes`` are widths ``N``; the risk of the least-squares fit of the target on
    the first ``N`` features of each seed's projection with ``P -> inf`` (the projection of :math:`\\lambda^{1/2}
    \\beta^*` on the span of :math:`\\lambda^{1/2} W`). ``limit="infinite_width_loss"``: ``sizes`` are sample counts
    ``P``; the risk of ridgeless regression on each seed's first ``P`` samples with ``N -> inf`` (the minimum-norm
    interpolant :math:`X^T (X X^T)^{-1} y` in the latent space). A seed's draws are those of :func:`member_losses`
    (:func:`draw`), so these equal its limits to round-off.

    Draws are nested (the first ``N`` columns of ``W``, the first ``P`` samples), so one Cholesky factorisation of
    the largest size's Gram matrix (``N x N`` of the whitened features, or ``P x P`` of the samples) gives every size:
    a leading block of the factor is the factor of the smaller size's Gram matrix (Gram-Schmidt in the draws'
    order). Cost ``O(M max(sizes)^2)`` per seed, against ``O(N P min(N, P))`` and an eigendecomposition for a member
    of :func:`member_losses`: cheap enough to draw many more seeds of a limit than of the finite problem (a control
    variate's mean). At the sizes of the ``width-scaling`` experiment (Gram condition numbers up to about ``1e7``)
    they agree with :func:`member_losses`' limits to 1e-11 relative. Linear features, ``max(sizes) <= M`` (``< M``
    for ``infinite_width_loss``: at ``P >= M`` the samples determine the target and the limit is the least-squares
    fit, not computed here).
    """
    if limit not in ("infinite_data_loss", "infinite_width_loss"):
        raise ValueError(f"limit must be 'infinite_data_loss' or 'infinite_width_loss', got {limit!r}.")
    if model.features != "linear":
        raise ValueError("limit_losses needs linear features (the limits are computed exactly for those only).")
    sizes = tuple(int(n) for n in sizes)
    bound = model.n_latent if limit == "infinite_data_loss" else model.n_latent - 1
    if not sizes or min(sizes) < 1 or max(sizes) > bound:
        raise ValueError(f"sizes must lie in [1, {bound}] for {limit} with n_latent = {model.n_latent}, got {sizes}.")
    with _float64():
        out = _limit_losses(model, sizes, limit, jnp.asarray(np.asarray(list(seeds), dtype=int)))
        return np.asarray(out).T


def solve(model: PowerLawRF, widths, n_trains, ridges=(0.0,), seeds=range(4), *,
          progress: bool | None = None) -> xr.Dataset:
    """Excess test risk over the grid ``width x n_train x ridge x seed`` as an ``xarray.Dataset``.

    Variables (dims ``width, n_train, ridge, seed``):

    - ``test_loss``: excess test risk of the ridge readout;
    - ``infinite_data_loss``: the same features with infinite data (linear features only);
    - ``infinite_width_loss``: the same data with infinitely many features, i.e. ridgeless latent regression
      (linear features with ``n_train < n_latent`` only);
    - ``width_fluctuation``: the zero-mean first-order part of ``test_loss - infinite_width_loss`` (same cases).

    One compiled program per width (sample counts padded to the largest); a progress report
    (:func:`dynsim.progress.tracker`; ``progress=False`` silences it) counts them.
    """
    widths, n_trains = [int(n) for n in widths], [int(p) for p in n_trains]
    ridges, seeds = np.asarray(ridges, dtype=float), np.asarray(list(seeds), dtype=int)
    rows = []
    with _progress.tracker(len(widths), progress, "random features", "width") as bar:
        for n in widths:
            rows.append(member_losses(model, [n] * len(n_trains), n_trains, seeds, ridges))
            bar.update(1)
    return to_dataset(model, widths, n_trains, ridges, seeds,
                      {k: np.stack([r[k] for r in rows]) for k in NAMES})


def to_dataset(model: PowerLawRF, widths, n_trains, ridges, seeds, data: dict) -> xr.Dataset:
    """Wrap ``{name: [width, n_train, seed, ridge]}`` arrays as a Dataset with dims ``width, n_train, ridge, seed``."""
    dims = ("width", "n_train", "ridge", "seed")
    return xr.Dataset({k: (dims, np.moveaxis(v, 3, 2), {"description": DESCRIPTIONS[k]}) for k, v in data.items()},
                      coords={"width": list(widths), "n_train": list(n_trains), "ridge": np.asarray(ridges, float),
                              "seed": np.asarray(seeds)},
                      attrs={"model": "power-law random features",
                             **{f"model_{k}": v for k, v in dataclasses.asdict(model).items()}})
