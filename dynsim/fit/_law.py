"""Joint scaling laws fitted the way careful replications do: :func:`law`.

A *form* (:class:`Form`) is a law ``y = f(x; theta)`` written as ``log f`` with its gradient in a parametrisation
that keeps the fit well posed (amplitudes as logs, sums as log-sum-exp). The estimator is the one of Hoffmann et
al. (2022, approach 3) as replicated by Besiroglu et al. (2024, "Chinchilla scaling: a replication attempt"):

.. math:: \\hat\\theta = \\arg\\min_\\theta \\sum_i
          \\mathrm{Huber}_\\delta\\big(\\log y_i - \\log f(x_i; \\theta)\\big),\\qquad \\delta = 10^{-3},

the Huber loss *summed* over points, minimised by L-BFGS from a grid of starts, keeping the best run that converged
(least squares, ``loss="lsq"``, is the option). The objective is evaluated on the whole grid; L-BFGS runs from its
``top`` best points (default 32, all with ``top=None``) together, as one batch of numpy arrays, and the best run is
polished by scipy's L-BFGS-B. Intervals come from a bootstrap over *runs*:
whole runs (every point one training run contributes, e.g. all its checkpoints) are resampled with replacement and
refitted from the point estimate, so that points of one curve, which share that run's noise, are never treated as
independent. Without a bootstrap the covariance is the Gauss-Newton one of the log residuals (``sigma^2 (J^T J)^-1``)
and the intervals are Wald (Student-t) intervals from it. AIC and BIC use the Gaussian likelihood of the log
residuals; :func:`extrapolation_error` fits on part of the data and measures the error on the rest.

Named forms (:data:`FORMS`); ``N`` is the model size, ``D`` the data, ``x`` one variable:

============  ===============================================================================  =====================
name          law                                                                              variables
============  ===============================================================================  =====================
chinchilla    ``E + A / N^alpha + B / D^beta``                                                 N, D
kaplan        ``((N_c / N)^(alpha_N / alpha_D) + D_c / D)^alpha_D``                            N, D
bottleneck    ``E + ((A / N^alpha)^q + (B / D^beta)^q)^(1/q)``: ``q = 1`` is chinchilla, ``q ->  N, D
              inf`` the bottleneck ``E + max(A / N^alpha, B / D^beta)``
power         ``E + A / x^alpha``                                                              x
broken_power  ``E + A x^-alpha1 (1 + (x / x_b)^(1/f))^(-(alpha2 - alpha1) f)``: slope alpha1      x
              below ``x_b``, alpha2 above, a bend of width ``f`` decades (Caballero et al. 2023)
annealing     ``L0 + A S1^-alpha - C S2`` (Tissue et al. 2024, "Scaling law with learning rate    S1, S2
              annealing"); ``S1`` the forward area, ``S2`` the annealing area
              (:func:`annealing_areas`)
============  ===============================================================================  =====================

A user-given form is a callable ``f(x, **params) -> y`` with ``x`` a dict of the variables' arrays, passed with
``starts={param: [values, ...]}``; its gradient is taken by central differences.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

__all__ = ["Form", "FORMS", "LawFit", "law", "get_form", "extrapolation_error", "annealing_areas"]

LOSSES = ("huber", "lsq")


# ----------------------------------------------------------------------------------------------------------------------
# Forms
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Form:
    """A law in the parametrisation it is fitted in.

    Attributes:
      name: the form's name.
      variables: the names of its inputs, e.g. ``("N", "D")``.
      names: the fitted parameters' names in the fit's parametrisation (``"log_A"`` for an amplitude fitted by its
        log), in the order of ``theta``.
      params: the natural parameters' names, in the order :attr:`natural` returns them.
      log_predict: ``(theta, X) -> log f`` with ``X`` of shape ``(V, n)`` (one row per variable).
      jac: ``(theta, X) -> d log f / d theta``, shape ``(n, P)``; ``None``: central differences.
      grid: the default starts, one tuple of values per fitted parameter (their Cartesian product).
      bounds: ``(lo, hi)`` per fitted parameter (``None`` for no bound), for L-BFGS-B.
      logged: the parameters fitted by their log (exponentiated to give the natural ones).
      positive: the variables that enter under a log and so must be positive.
    """

    name: str
    variables: tuple[str, ...]
    names: tuple[str, ...]
    params: tuple[str, ...]
    log_predict: Callable
    jac: Callable | None
    grid: tuple[tuple[float, ...], ...]
    bounds: tuple[tuple[float | None, float | None], ...] | None = None
    logged: tuple[bool, ...] = ()
    positive: tuple[str, ...] = ()

    def natural(self, theta) -> np.ndarray:
        """The natural parameters (``exp`` of those fitted by their log) of fit parameters ``theta [..., P]``."""
        theta = np.asarray(theta, dtype=np.float64)
        logged = np.array(self.logged or (False,) * len(self.names))
        with np.errstate(over="ignore"):
            return np.where(logged, np.exp(np.where(logged, theta, 0.0)), theta)

    def fitted(self, natural: Mapping[str, float]) -> np.ndarray:
        """The fit parameters of a dict of natural ones (the inverse of :meth:`natural`)."""
        values = np.array([float(natural[p]) for p in self.params])
        logged = np.array(self.logged or (False,) * len(self.names))
        return np.where(logged, np.log(np.where(logged, values, 1.0)), values)


def _cols(theta) -> list[np.ndarray]:
    """The columns of ``theta [..., P]``, each ``[..., 1]``: broadcast against a variable's ``[n]`` points they give
    ``[..., n]``, so that every form evaluates many parameter vectors at once."""
    theta = np.asarray(theta, dtype=np.float64)
    return [theta[..., j, None] for j in range(theta.shape[-1])]


def _softmax(*terms):
    terms = np.broadcast_arrays(*terms)
    top = np.maximum.reduce(terms)
    ex = [np.exp(t - top) for t in terms]
    total = sum(ex)
    return top + np.log(total), [e / total for e in ex]


def _chinchilla(theta, X):
    e, a, b, alpha, beta = _cols(theta)
    ln, ld = X
    return _softmax(e + 0.0 * ln, a - alpha * ln, b - beta * ld)


def _chinchilla_jac(theta, X):
    ln, ld = X
    _, (we, wa, wb) = _chinchilla(theta, X)
    return np.stack([we, wa, wb, -wa * ln, -wb * ld], axis=-1)


def _kaplan(theta, X):
    lnc, ldc, an, ad = _cols(theta)
    ln, ld = X
    u1 = (an / ad) * (lnc - ln)
    g, w = _softmax(u1, ldc - ld)
    return ad * g, g, u1, w


def _kaplan_jac(theta, X):
    lnc, ldc, an, ad = _cols(theta)
    ln, _ = X
    _, g, u1, (w1, w2) = _kaplan(theta, X)
    return np.stack([an * w1, ad * w2, w1 * (lnc - ln), g - w1 * u1], axis=-1)


def _bottleneck(theta, X):
    e, a, b, alpha, beta, r = _cols(theta)
    ln, ld = X
    q = np.exp(r)
    t1, t2 = a - alpha * ln, b - beta * ld
    lse, (v1, v2) = _softmax(q * t1, q * t2)
    h = lse / q
    f, (ue, uh) = _softmax(e + 0.0 * h, h)
    return f, (t1, t2, v1, v2, h, ue, uh)


def _bottleneck_jac(theta, X):
    ln, ld = X
    _, (t1, t2, v1, v2, h, ue, uh) = _bottleneck(theta, X)
    return np.stack([ue, uh * v1, uh * v2, -uh * v1 * ln, -uh * v2 * ld, uh * (v1 * t1 + v2 * t2 - h)], axis=-1)


def _power(theta, X):
    e, a, alpha = _cols(theta)
    (lx,) = X
    return _softmax(e + 0.0 * lx, a - alpha * lx)


def _power_jac(theta, X):
    (lx,) = X
    _, (we, wa) = _power(theta, X)
    return np.stack([we, wa, -wa * lx], axis=-1)


def _broken(theta, X):
    e, a, a1, a2, lxb, lf = _cols(theta)
    (lx,) = X
    width = np.exp(lf)
    z = (lx - lxb) / width
    sp = np.logaddexp(0.0, z)
    g = a - a1 * lx - (a2 - a1) * width * sp
    f, (ue, ug) = _softmax(e + 0.0 * g, g)
    return f, (z, sp, width, ue, ug)


def _broken_jac(theta, X):
    _, _, a1, a2, _, _ = _cols(theta)
    (lx,) = X
    _, (z, sp, width, ue, ug) = _broken(theta, X)
    sig = scipy.special.expit(z)
    dg = [np.ones_like(z), -lx + width * sp, -width * sp, (a2 - a1) * sig, -(a2 - a1) * width * (sp - z * sig)]
    return np.stack([ue] + [ug * d for d in dg], axis=-1)


# Below this the annealing law's prediction is continued linearly in log (C^1), so that a start that predicts a
# non-positive loss still has a finite objective and a gradient pointing back.
_FLOOR = 1e-12


def _annealing_parts(theta, X):
    l0, a, alpha, c = _cols(theta)
    s1, s2 = X
    power = np.exp(a - alpha * np.log(s1))
    return np.exp(l0) + power - c * s2, power, l0


def _annealing(theta, X):
    p, _, _ = _annealing_parts(theta, X)
    return np.where(p > _FLOOR, np.log(np.maximum(p, _FLOOR)), math.log(_FLOOR) + (p - _FLOOR) / _FLOOR)


def _annealing_jac(theta, X):
    s1, s2 = X
    p, power, l0 = _annealing_parts(theta, X)
    dp = [np.exp(l0) + 0.0 * p, power, -power * np.log(s1), -s2 + 0.0 * p]
    return np.stack(dp, axis=-1) / np.maximum(p, _FLOOR)[..., None]


_EPOCH_GRID = ((-1.0, -0.5, 0.0, 0.5, 1.0), (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
               (0.0, 0.5, 1.0, 1.5, 2.0), (0.0, 0.5, 1.0, 1.5, 2.0))

FORMS: dict[str, Form] = {
    "chinchilla": Form(
        "chinchilla", ("N", "D"), ("log_E", "log_A", "log_B", "alpha", "beta"), ("E", "A", "B", "alpha", "beta"),
        lambda t, X: _chinchilla(t, np.log(X))[0], lambda t, X: _chinchilla_jac(t, np.log(X)),
        # The grid of Besiroglu et al. (2024), in their parametrisation: 4500 starts.
        grid=_EPOCH_GRID, logged=(True, True, True, False, False), positive=("N", "D")),
    "kaplan": Form(
        "kaplan", ("N", "D"), ("log_N_c", "log_D_c", "alpha_N", "alpha_D"), ("N_c", "D_c", "alpha_N", "alpha_D"),
        lambda t, X: _kaplan(t, np.log(X))[0], lambda t, X: _kaplan_jac(t, np.log(X)),
        grid=((10.0, 20.0, 30.0), (10.0, 20.0, 30.0), (0.05, 0.3, 1.0), (0.05, 0.3, 1.0)),
        bounds=((None, None), (None, None), (1e-4, None), (1e-4, None)), logged=(True, True, False, False),
        positive=("N", "D")),
    "bottleneck": Form(
        "bottleneck", ("N", "D"), ("log_E", "log_A", "log_B", "alpha", "beta", "log_q"),
        ("E", "A", "B", "alpha", "beta", "q"),
        lambda t, X: _bottleneck(t, np.log(X))[0], lambda t, X: _bottleneck_jac(t, np.log(X)),
        grid=((-1.0, 0.0, 1.0), (0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (0.25, 0.75), (0.25, 0.75), (0.0, 1.5, 3.0)),
        # q from 1/20 to 150: beyond, the power mean is the max to within exp(-150 * gap), the float resolution.
        bounds=((None, None),) * 5 + ((-3.0, 5.0),), logged=(True, True, True, False, False, True),
        positive=("N", "D")),
    "power": Form(
        "power", ("x",), ("log_E", "log_A", "alpha"), ("E", "A", "alpha"),
        lambda t, X: _power(t, np.log(X))[0], lambda t, X: _power_jac(t, np.log(X)),
        grid=((-3.0, -1.0, 0.0, 1.0), (-2.0, 0.0, 2.0, 5.0, 10.0), (0.1, 0.5, 1.0, 2.0)),
        logged=(True, True, False), positive=("x",)),
    "broken_power": Form(
        "broken_power", ("x",), ("log_E", "log_A", "alpha1", "alpha2", "log_x_b", "log_f"),
        ("E", "A", "alpha1", "alpha2", "x_b", "f"),
        lambda t, X: _broken(t, np.log(X))[0], lambda t, X: _broken_jac(t, np.log(X)),
        grid=((-3.0, 0.0), (0.0, 3.0), (0.2, 1.0), (0.2, 1.0), (2.0, 5.0, 8.0), (-1.0, 0.5)),
        bounds=((None, None),) * 4 + ((None, None), (-5.0, 3.0)), logged=(True, True, False, False, True, True),
        positive=("x",)),
    "annealing": Form(
        "annealing", ("S1", "S2"), ("log_L0", "log_A", "alpha", "C"), ("L0", "A", "alpha", "C"),
        _annealing, _annealing_jac,
        grid=((-2.0, 0.0, 1.0), (-1.0, 0.5, 2.0), (0.2, 0.5, 1.0), (0.0, 0.1, 1.0)),
        logged=(True, True, False, False), positive=("S1",)),
}


def get_form(form) -> Form:
    """The :class:`Form` called ``form`` (a :class:`Form` is returned as it is); one sentence naming the choices if
    there is none."""
    if isinstance(form, Form):
        return form
    if isinstance(form, str):
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; the named forms are {', '.join(sorted(FORMS))}.")
        return FORMS[form]
    raise TypeError(f"form must be a name, a Form or a callable f(x, **params), got {type(form).__name__}.")


def _callable_form(f: Callable, variables: tuple[str, ...], starts: Mapping[str, Any]) -> Form:
    """A user's ``f(x, **params) -> y`` as a :class:`Form` (natural parametrisation, gradient by differences)."""
    sig = [p for p in inspect.signature(f).parameters][1:]
    names = tuple(starts) if starts else tuple(sig)
    missing = [p for p in names if p not in (starts or {})]
    if missing:
        raise ValueError(f"a callable form needs starts={{param: [values]}} for its parameters; missing "
                         f"{', '.join(missing)}.")

    def one(theta, X):
        with np.errstate(all="ignore"):
            y = np.asarray(f(dict(zip(variables, X)), **dict(zip(names, theta))), dtype=np.float64)
            return np.log(np.where(y > 0, y, np.nan))

    def log_predict(theta, X):
        theta = np.asarray(theta, dtype=np.float64)
        rows = [one(t, X) for t in theta.reshape(-1, theta.shape[-1])]
        return np.stack(rows).reshape(theta.shape[:-1] + (X.shape[-1],))

    return Form(getattr(f, "__name__", "custom"), variables, names, names, log_predict, None,
                tuple(tuple(float(v) for v in np.atleast_1d(starts[p])) for p in names))


# ----------------------------------------------------------------------------------------------------------------------
# Column expressions
# ----------------------------------------------------------------------------------------------------------------------

_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide, ast.Pow: np.power}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}
_FUNCTIONS = {"log": np.log, "log10": np.log10, "exp": np.exp, "sqrt": np.sqrt}


def _evaluate(expr: str, columns: Callable[[str], np.ndarray], names: list[str]) -> np.ndarray:
    """Evaluate a column expression: column names (spaces allowed), numbers, ``+ - * / **``, parentheses and
    ``log``, ``log10``, ``exp``, ``sqrt``. Parsed to a syntax tree and walked; nothing else is evaluated."""
    text = expr.strip()
    if text in names:
        return columns(text)
    placeholders: dict[str, str] = {}

    def sub(match):
        key = f"_c{len(placeholders)}"
        placeholders[key] = match.group(0)
        return key

    # Longest names first, so that a column whose name contains another's is taken whole.
    ordered = sorted((n for n in names if n and n not in _FUNCTIONS), key=len, reverse=True)
    if ordered:
        text = re.sub("|".join(re.escape(n) for n in ordered), sub, text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read the column expression {expr!r}: no column of that name, and not an "
                         "arithmetic expression of columns.") from None

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(
                node.value, bool):
            return np.float64(node.value)
        if isinstance(node, ast.Name):
            if node.id in placeholders:
                return columns(placeholders[node.id])
            raise ValueError(f"no column {node.id!r} in the data (in the expression {expr!r}); it has "
                             f"{', '.join(repr(n) for n in names)}.")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and len(node.args) == 1 and not node.keywords):
            return _FUNCTIONS[node.func.id](walk(node.args[0]))
        raise ValueError(f"the column expression {expr!r} may use only column names, numbers, + - * / **, "
                         f"parentheses and {', '.join(_FUNCTIONS)}.")

    with np.errstate(all="ignore"):
        return np.asarray(walk(tree), dtype=np.float64)


def _columns_of(data) -> tuple[list[str], Callable[[str], np.ndarray]]:
    """The column names of a table (a mapping, a pandas DataFrame or an xarray Dataset) and a getter returning a
    column as a flat float array; a Dataset's variables are broadcast against each other and flattened."""
    if hasattr(data, "data_vars") and hasattr(data, "coords"):  # xarray.Dataset
        names = [str(n) for n in list(data.data_vars) + list(data.coords)]
        sizes = dict(data.sizes)

        def get(name):
            column = data[name]
            extra = {d: (data[d].values if d in data.coords else sizes[d]) for d in sizes if d not in column.dims}
            if extra:
                column = column.expand_dims(extra)
            return np.asarray(column.transpose(*sizes).values, dtype=np.float64).ravel()

        return names, get
    if hasattr(data, "columns"):  # pandas-like
        names = [str(c) for c in data.columns]
        return names, lambda n: np.asarray(data[n], dtype=np.float64).ravel()
    if isinstance(data, Mapping):
        names = [str(k) for k in data]
        return names, lambda n: np.asarray(data[n], dtype=np.float64).ravel()
    raise TypeError(f"data must be a table of columns (a dict, a pandas DataFrame or an xarray Dataset), got "
                    f"{type(data).__name__}.")


# ----------------------------------------------------------------------------------------------------------------------
# The fit
# ----------------------------------------------------------------------------------------------------------------------


def _rho_psi(r: np.ndarray, loss: str, delta: float) -> tuple[np.ndarray, np.ndarray]:
    if loss == "lsq":
        return 0.5 * r * r, r
    small = np.abs(r) <= delta
    return (np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)),
            np.where(small, r, delta * np.sign(r)))


def _jacobian(form: Form, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``d log f / d theta``, ``[..., n, P]``: the form's own, or central differences."""
    if form.jac is not None:
        return form.jac(theta, X)
    cols = []
    for j in range(theta.shape[-1]):
        h = 1e-6 * np.maximum(1.0, np.abs(theta[..., j]))
        up, down = theta.copy(), theta.copy()
        up[..., j] += h
        down[..., j] -= h
        cols.append((form.log_predict(up, X) - form.log_predict(down, X)) / (2 * h[..., None]))
    return np.stack(cols, axis=-1)


def _objective(form: Form, X: np.ndarray, ly: np.ndarray, loss: str, delta: float, weights=None):
    """``(theta [S, P], rows) -> (objective [S], gradient [S, P])``; ``weights`` ``[S, n]`` (a bootstrap's counts,
    ``rows`` the rows of them ``theta`` has) or ``None``. A non-finite objective or gradient gives ``(inf, 0)``."""

    def fun(theta, rows=None):
        with np.errstate(all="ignore"):
            r = ly - form.log_predict(theta, X)
            rho, psi = _rho_psi(r, loss, delta)
            if weights is not None:
                w = weights if rows is None else weights[rows]
                rho, psi = w * rho, w * psi
            value = rho.sum(axis=-1)
            grad = -(_jacobian(form, theta, X) * psi[..., None]).sum(axis=-2)
        bad = ~np.isfinite(value) | ~np.all(np.isfinite(grad), axis=-1)
        return np.where(bad, np.inf, value), np.where(bad[..., None], 0.0, grad)

    return fun


# Stopping rule of both minimisers: the objective moves by less than FTOL relative, or the gradient is below GTOL.
# L-BFGS-B's default (factr 1e7, about 2e-9 relative) stops a Huber fit with delta = 1e-3 (nearly an L1 fit, whose
# gradient never vanishes) far from its minimum; 1e-12 stops it where the objective no longer moves.
_FTOL, _GTOL, _MAXITER, _MEMORY = 1e-12, 1e-9, 300, 10
# The starts L-BFGS runs from by default: the grid's points of lowest objective.
TOP = 32
# Rows of a batch are processed in chunks so that ``rows * n * P`` stays around this many elements.
_CHUNK_ELEMENTS = 1 << 21


def _lbfgs(fun, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L-BFGS on many rows at once: ``fun(x [S, P]) -> (f [S], g [S, P])``, each row its own problem.

    The two-loop recursion (memory 10) gives each row's direction; a backtracking Armijo search (steps halved) along
    it, the point projected into the box ``[lo, hi]``. A row whose quasi-Newton direction finds no decrease retries
    along the steepest descent with its memory cleared; when that fails as well it has stopped (the objective does not
    decrease at float resolution). Returns ``(x, f, converged)``: converged rows stopped by the tolerances or at such
    a point, not by the iteration limit.
    """
    x = np.clip(np.array(x0, dtype=np.float64), lo, hi)
    f, g = fun(x)
    rows, p = x.shape
    s_hist, y_hist, rho = np.zeros((_MEMORY, rows, p)), np.zeros((_MEMORY, rows, p)), np.zeros((_MEMORY, rows))
    count = np.zeros(rows, dtype=int)
    done = ~np.isfinite(f)
    converged = np.zeros(rows, dtype=bool)
    for _ in range(_MAXITER):
        if done.all():
            break
        q = g.copy()
        alphas = []
        order = [(k % _MEMORY) for k in range(int(count.max()) - 1, max(int(count.max()) - _MEMORY, 0) - 1, -1)]
        for k in order:
            a = rho[k] * np.sum(s_hist[k] * q, axis=-1)
            q -= a[:, None] * y_hist[k]
            alphas.append(a)
        last = (count - 1) % _MEMORY
        sy = np.sum(s_hist[last, np.arange(rows)] * y_hist[last, np.arange(rows)], axis=-1)
        yy = np.sum(y_hist[last, np.arange(rows)] ** 2, axis=-1)
        gamma = np.where((count > 0) & (yy > 0), sy / np.where(yy > 0, yy, 1.0), 1.0 / np.maximum(
            np.abs(g).max(axis=-1), 1.0))
        r = gamma[:, None] * q
        for k, a in zip(reversed(order), reversed(alphas)):
            b = rho[k] * np.sum(y_hist[k] * r, axis=-1)
            r += s_hist[k] * (a - b)[:, None]
        d = -r
        uphill = np.sum(d * g, axis=-1) >= 0
        d[uphill] = -g[uphill] / np.maximum(np.abs(g[uphill]).max(axis=-1, keepdims=True), 1.0)
        x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
        accepted = done.copy()
        for steepest in (False, True):
            step = np.ones(rows)
            for _ in range(40):
                trial = ~accepted
                if not trial.any():
                    break
                xt = np.clip(x[trial] + step[trial, None] * d[trial], lo, hi)
                ft, gt = fun(xt, trial)
                ok = ft <= f[trial] + 1e-4 * np.sum(g[trial] * (xt - x[trial]), axis=-1)
                idx = np.flatnonzero(trial)[ok]
                x_new[idx], f_new[idx], g_new[idx] = xt[ok], ft[ok], gt[ok]
                accepted[idx] = True
                step[trial] *= 0.5
            failed = ~accepted
            if steepest or not failed.any():
                break
            # retry the failed rows along the steepest descent, memory cleared
            d[failed] = -g[failed] / np.maximum(np.abs(g[failed]).max(axis=-1, keepdims=True), 1.0)
            count[failed] = 0
            rho[:, failed] = 0.0
        stuck = ~accepted
        converged |= stuck
        done |= stuck
        moved = accepted & ~done
        sv, yv = x_new - x, g_new - g
        curvature = np.sum(sv * yv, axis=-1)
        store = moved & (curvature > 1e-16)
        slot = count % _MEMORY
        s_hist[slot[store], np.flatnonzero(store)] = sv[store]
        y_hist[slot[store], np.flatnonzero(store)] = yv[store]
        rho[slot[store], np.flatnonzero(store)] = 1.0 / curvature[store]
        count[store] += 1
        small = moved & ((np.abs(f - f_new) <= _FTOL * np.maximum(np.maximum(np.abs(f), np.abs(f_new)), 1e-300))
                         | (np.abs(g_new).max(axis=-1) <= _GTOL))
        x[moved], f[moved], g[moved] = x_new[moved], f_new[moved], g_new[moved]
        converged |= small
        done |= small
    return x, f, converged


def _box(form: Form) -> tuple[np.ndarray, np.ndarray]:
    p = len(form.names)
    bounds = form.bounds or ((None, None),) * p
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds])
    return lo, hi


def _chunks(rows: int, n: int, p: int):
    size = max(1, _CHUNK_ELEMENTS // max(n * p, 1))
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def _minimise(form: Form, X, ly, loss, delta, starts: np.ndarray) -> tuple[np.ndarray, float, bool, int]:
    """L-BFGS from every start (batched), then L-BFGS-B (scipy) from the best converged run to polish it; the best
    converged run is kept (the best of all when none converged). Returns ``(theta, objective, converged,
    n_converged)``."""
    fun = _objective(form, X, ly, loss, delta)
    lo, hi = _box(form)
    xs, fs, oks = [], [], []
    for part in _chunks(len(starts), ly.size, starts.shape[1]):
        x, f, ok = _lbfgs(fun, starts[part], lo, hi)
        xs.append(x), fs.append(f), oks.append(ok)
    x, f, ok = np.concatenate(xs), np.concatenate(fs), np.concatenate(oks)
    finite = np.isfinite(f)
    if not finite.any():
        return None, np.inf, False, 0
    pool = ok & finite if (ok & finite).any() else finite
    best = int(np.flatnonzero(pool)[np.argmin(f[pool])])
    theta, value = x[best], float(f[best])

    def single(t):
        value, grad = fun(t[None, :])
        return float(value[0]), grad[0]

    bounds = [(float(a) if np.isfinite(a) else None, float(b) if np.isfinite(b) else None) for a, b in zip(lo, hi)]
    res = scipy.optimize.minimize(single, theta, jac=True, method="L-BFGS-B", bounds=bounds,
                                  options={"maxiter": _MAXITER, "ftol": _FTOL, "gtol": _GTOL})
    if np.isfinite(res.fun) and res.fun <= value:
        theta, value = res.x, float(res.fun)
    return theta, value, bool(ok[best]) or bool(res.success), int((ok & finite).sum())


@dataclasses.dataclass(frozen=True)
class LawFit:
    """Result of :func:`law`.

    Attributes:
      form: the form's name.
      variables: its variables, in order.
      params: the natural parameters (``{"E": ..., "A": ..., ...}``).
      ci: ``{param: (lo, hi)}`` at ``level``: percentile intervals of the bootstrap over runs, or Wald
        (Student-t) intervals from ``cov`` without a bootstrap (``ci_method`` says which).
      cov: covariance of the natural parameters (bootstrap, or Gauss-Newton propagated by the delta method),
        in the order of ``params``.
      objective: the minimised objective (summed Huber, or half the sum of squared log residuals).
      n_points: the points fitted.
      n_runs: the runs they come from (the bootstrap's units).
      converged: whether the best run converged (false: no start converged, the best unconverged run is kept).
      n_starts: starts tried; n_converged: those that converged.
      n_boot: bootstrap refits that entered the intervals.
      loss, delta, level, ci_method: how it was fitted.
      aic, bic: Gaussian-likelihood criteria of the log residuals (lower is better).
      rmse_log: root mean square log residual.
      theta: the fitted parameters in the form's own parametrisation (:attr:`Form.names`).
      samples: the bootstrap's natural parameters, ``[n_boot, P]`` (empty without a bootstrap).
    """

    form: str
    variables: tuple[str, ...]
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    cov: np.ndarray
    objective: float
    n_points: int
    n_runs: int
    converged: bool
    n_starts: int
    n_converged: int
    n_boot: int
    loss: str
    delta: float
    level: float
    ci_method: str
    aic: float
    bic: float
    rmse_log: float
    theta: np.ndarray = dataclasses.field(repr=False)
    samples: np.ndarray = dataclasses.field(repr=False)
    _form: Form = dataclasses.field(repr=False, compare=False)

    def predict(self, x: Mapping[str, Any] | None = None, **variables) -> np.ndarray:
        """The fitted law at ``x`` (a dict, or keywords, of the variables' arrays, broadcast together)."""
        values = {**(x or {}), **variables}
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise ValueError(f"predict needs the variables {', '.join(self.variables)}; missing {', '.join(missing)}.")
        arrays = np.broadcast_arrays(*[np.asarray(values[v], dtype=np.float64) for v in self.variables])
        X = np.stack([a.ravel() for a in arrays])
        with np.errstate(all="ignore"):
            return np.exp(self._form.log_predict(self.theta, X)).reshape(arrays[0].shape)

    def optimal(self, compute, cost: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The compute-optimal allocation ``(N_opt, D_opt)`` at each budget in ``compute``.

        Minimises the fitted ``L(N, D)`` on the budget ``cost(N, D) = C``, by default ``C = 6 N D``. A user cost
        takes arrays and must increase in ``D``; ``D`` is solved for at each ``N`` (bisection in log space), and
        ``N`` is searched over twelve decades either side of the point where ``N = D`` would spend ``C = 6ND``. For
        the chinchilla form with ``C = 6ND`` this is ``N_opt = G (C/6)^(beta/(alpha+beta))``,
        ``G = (alpha A / (beta B))^(1/(alpha+beta))`` (Hoffmann et al. 2022, eq. 4).
        """
        if self.variables != ("N", "D"):
            raise ValueError(f"the compute-optimal allocation needs a law in (N, D); {self.form} has variables "
                             f"{', '.join(self.variables)}.")
        budgets = np.atleast_1d(np.asarray(compute, dtype=np.float64))
        if not np.all(budgets > 0):
            raise ValueError("compute budgets must be positive.")
        n_out, d_out = np.empty_like(budgets), np.empty_like(budgets)

        def data_for(ln, c):
            """``log D`` on the budget at each ``log N``: closed form for 6ND, else bisection in ``log D``."""
            if cost is None:
                return math.log(c / 6.0) - ln
            lo, hi = np.full_like(ln, -300.0), np.full_like(ln, 300.0)
            for _ in range(80):  # 600 / 2**80: far below float resolution
                mid = 0.5 * (lo + hi)
                with np.errstate(all="ignore"):
                    over = np.asarray(cost(np.exp(ln), np.exp(mid)), dtype=np.float64) > c
                lo, hi = np.where(over, lo, mid), np.where(over, mid, hi)
            return 0.5 * (lo + hi)

        def log_loss(ln, c):
            ln = np.atleast_1d(np.asarray(ln, dtype=np.float64))
            return np.log(self.predict(N=np.exp(ln), D=np.exp(data_for(ln, c))))

        for i, c in enumerate(budgets):
            centre = 0.5 * math.log(c / 6.0)
            grid = np.linspace(centre - 12 * math.log(10), centre + 12 * math.log(10), 241)
            k = int(np.nanargmin(log_loss(grid, c)))
            lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
            res = scipy.optimize.minimize_scalar(lambda v, c=c: float(log_loss(v, c)[0]), bounds=(lo, hi),
                                                 method="bounded", options={"xatol": 1e-10})
            n_out[i] = math.exp(res.x)
            d_out[i] = math.exp(float(data_for(np.atleast_1d(res.x), c)[0]))
        shape = np.shape(compute)
        return n_out.reshape(shape), d_out.reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-serialisable) view: ``{form, params, ci, objective, n_points, ...}``."""
        clean = lambda v: None if not np.isfinite(v) else float(v)
        return {"form": self.form, "variables": list(self.variables),
                "params": {k: clean(v) for k, v in self.params.items()},
                "ci": {k: [clean(lo), clean(hi)] for k, (lo, hi) in self.ci.items()},
                "objective": clean(self.objective), "n_points": int(self.n_points), "n_runs": int(self.n_runs),
                "converged": bool(self.converged), "n_starts": int(self.n_starts),
                "n_converged": int(self.n_converged), "n_boot": int(self.n_boot), "loss": self.loss,
                "delta": float(self.delta), "level": float(self.level), "ci_method": self.ci_method,
                "aic": clean(self.aic), "bic": clean(self.bic), "rmse_log": clean(self.rmse_log),
                "cov": [[clean(v) for v in row] for row in np.asarray(self.cov)]}


def _prepare(form, data, x, y, runs, select, drop_top, starts):
    """The form, the design ``X [V, n]``, ``log y``, run labels and starts, after every input check."""
    names, get = _columns_of(data)
    if callable(form) and not isinstance(form, Form):
        if not x:
            raise ValueError("a callable form needs x={variable: column} to name its variables.")
        form = _callable_form(form, tuple(x), starts if isinstance(starts, Mapping) else {})
        starts = None
    form = get_form(form)
    x = dict(x) if x else {v: v for v in form.variables}
    unknown = [v for v in x if v not in form.variables]
    if unknown:
        raise ValueError(f"the {form.name} form has variables {', '.join(form.variables)}, not "
                         f"{', '.join(unknown)}.")
    missing = [v for v in form.variables if v not in x]
    if missing:
        raise ValueError(f"the {form.name} form needs a column for {', '.join(missing)} (x={{variable: column}}).")

    def column(expr):
        if not isinstance(expr, str):
            values = np.asarray(expr, dtype=np.float64).ravel()
            return values
        return _evaluate(expr, get, names)

    X = np.stack([column(x[v]) for v in form.variables])
    yv = column(y)
    if X.shape[1] != yv.size:
        raise ValueError(f"the variables have {X.shape[1]} values but y has {yv.size}.")
    if runs is None:
        labels = np.arange(yv.size)
    else:
        raw = np.asarray(runs).ravel() if not isinstance(runs, str) else column(runs)
        if raw.size != yv.size:
            raise ValueError(f"runs has {raw.size} labels but there are {yv.size} points.")
        labels = np.unique(raw, return_inverse=True)[1]
    keep = np.ones(yv.size, dtype=bool) if select is None else np.asarray(select, dtype=bool).ravel()
    if keep.size != yv.size:
        raise ValueError(f"select has {keep.size} entries but there are {yv.size} points.")
    keep &= np.isfinite(yv) & np.all(np.isfinite(X), axis=0)
    if drop_top:
        if int(drop_top) != drop_top or drop_top < 0:
            raise ValueError(f"drop_top must be a non-negative integer, got {drop_top!r}.")
        order = np.argsort(np.where(keep, yv, -np.inf))[::-1]
        keep[order[: int(drop_top)]] = False
    X, yv, labels = X[:, keep], yv[keep], labels[keep]
    if np.any(yv <= 0):
        raise ValueError(f"y ({y if isinstance(y, str) else 'the values'}) has {int(np.sum(yv <= 0))} non-positive "
                         "values; the fit is on log y, which needs positive values.")
    for v, row in zip(form.variables, X):
        if v in form.positive and np.any(row <= 0):
            raise ValueError(f"variable {v} ({x[v] if isinstance(x[v], str) else 'the values'}) has "
                             f"{int(np.sum(row <= 0))} non-positive values; the {form.name} form takes its log.")
    n_par = len(form.names)
    if yv.size <= n_par:
        raise ValueError(f"the {form.name} form has {n_par} parameters and needs more points than that; got "
                         f"{yv.size}.")
    labels = np.unique(labels, return_inverse=True)[1]
    if starts is None:
        grid = np.array(list(itertools.product(*form.grid)), dtype=np.float64)
    elif isinstance(starts, Mapping):
        bad = [k for k in starts if k not in form.names and k not in form.params]
        if bad:
            raise ValueError(f"starts names unknown parameters {', '.join(bad)}; the {form.name} form fits "
                             f"{', '.join(form.names)}.")
        axes = []
        for i, (fitted, natural) in enumerate(zip(form.names, form.params)):
            if fitted in starts:
                axes.append(tuple(np.atleast_1d(starts[fitted]).astype(float)))
            elif natural in starts:
                vals = np.atleast_1d(starts[natural]).astype(float)
                axes.append(tuple(np.log(vals) if form.logged and form.logged[i] else vals))
            else:
                axes.append(form.grid[i])
        grid = np.array(list(itertools.product(*axes)), dtype=np.float64)
    else:
        grid = np.atleast_2d(np.asarray(starts, dtype=np.float64))
        if grid.shape[1] != n_par:
            raise ValueError(f"starts must have {n_par} columns ({', '.join(form.names)}), got {grid.shape[1]}.")
    return form, X, np.log(yv), labels, grid


def law(form, data, *, x: Mapping[str, Any] | None = None, y: Any = "loss", runs: Any = None,
        loss: str = "huber", delta: float = 1e-3, starts=None, top: int | None = TOP, bootstrap: int = 0,
        level: float = 0.95, seed: int = 0, select=None, drop_top: int = 0) -> LawFit:
    """Fit a scaling law to a table: Huber on log residuals, L-BFGS-B from a grid of starts, bootstrap over runs.

    .. math:: \\hat\\theta = \\arg\\min_\\theta \\sum_i \\mathrm{Huber}_\\delta(\\log y_i - \\log f(x_i;\\theta))

    Args:
      form: a name from :data:`FORMS` (``"chinchilla"``, ``"kaplan"``, ``"bottleneck"``, ``"power"``,
        ``"broken_power"``, ``"annealing"``), a :class:`Form`, or a callable ``f(x, **params) -> y`` (``x`` a dict
        of the variables' arrays; needs ``x=`` and ``starts={param: values}``).
      data: a table: a dict of columns, a pandas DataFrame, or an xarray Dataset (variables broadcast and flattened,
        e.g. ``dynsim.io.load(DIR)``).
      x: ``{variable: column}`` for the form's variables (default: columns named like the variables). A column is
        a name, an expression of columns (``"Training FLOP / (6 * Model Size)"``; ``+ - * / **``, ``log``,
        ``exp``, ``sqrt``; evaluated on a syntax tree, never by ``eval``) or an array.
      y: the fitted column (name, expression or array); positive.
      runs: which run each point comes from (column or array of labels); the bootstrap resamples runs whole.
        Default: every point is its own run.
      loss: ``"huber"`` (default) or ``"lsq"``.
      delta: the Huber threshold on log residuals (Hoffmann et al.: ``1e-3``).
      starts: L-BFGS-B starts: ``{param: values}`` (fitted or natural names; others keep the form's grid) for their
        Cartesian product, or an array ``[S, P]`` in the form's parametrisation. Default: the form's grid.
      top: the objective is evaluated at every start and L-BFGS-B runs from the ``top`` of lowest objective
        (default 32; ``None``: from every start, e.g. all 4500 of the chinchilla grid).
      bootstrap: number of refits on runs resampled with replacement (0: Wald intervals from the Gauss-Newton
        covariance).
      level: confidence level of the intervals.
      seed: seed of the bootstrap.
      select: boolean mask of the points to fit (default all).
      drop_top: leave out the ``drop_top`` points of highest ``y`` (Besiroglu et al. drop 5 of 245).

    Returns:
      A :class:`LawFit`.

    Raises:
      ValueError: one sentence each for an unknown form, a missing column, non-positive values under a log, too few
        points for the form's parameters, a bad loss or level.

    Example:
      >>> import numpy as np
      >>> N, D = np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6))
      >>> L = 1.7 + 400 * N**-0.34 + 410 * D**-0.28
      >>> fit = law("chinchilla", {"N": N.ravel(), "D": D.ravel(), "loss": L.ravel()})
      >>> [round(fit.params[k], 2) for k in ("E", "alpha", "beta")]
      [1.7, 0.34, 0.28]
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; the losses are {', '.join(LOSSES)}.")
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}.")
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative integer, got {bootstrap!r}.")
    form, X, ly, labels, grid = _prepare(form, data, x, y, runs, select, drop_top, starts)
    if top is not None and top < len(grid):
        fun = _objective(form, X, ly, loss, delta)
        values = np.concatenate([fun(grid[part])[0] for part in _chunks(len(grid), ly.size, grid.shape[1])])
        grid = grid[np.argsort(values, kind="stable")[: int(top)]]
    theta, value, converged, n_ok = _minimise(form, X, ly, loss, delta, grid)
    if theta is None:
        raise ValueError(f"no start of the {form.name} form gives a finite objective on these data.")

    n, p = ly.size, theta.size
    with np.errstate(all="ignore"):
        resid = ly - form.log_predict(theta, X)
    rss = float(np.sum(resid**2))
    nll = n * math.log(max(rss, 1e-300) / n)
    natural = form.natural(theta)
    logged = np.array(form.logged or (False,) * p)

    n_runs = int(labels.max()) + 1
    samples = np.empty((0, p))
    if bootstrap:
        # Each replicate draws n_runs runs with replacement; a run drawn k times enters with weight k.
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_runs, (int(bootstrap), n_runs))
        counts = np.stack([np.bincount(row, minlength=n_runs) for row in draws])
        weights = counts[:, labels].astype(np.float64)
        lo_box, hi_box = _box(form)
        parts = []
        for part in _chunks(int(bootstrap), n, p):
            fun_b = _objective(form, X, ly, loss, delta, weights[part])
            t_b, f_b, _ = _lbfgs(fun_b, np.tile(theta, (part.stop - part.start, 1)), lo_box, hi_box)
            enough = (weights[part] > 0).sum(axis=1) > p
            parts.append(form.natural(t_b[np.isfinite(f_b) & enough]))
        samples = np.concatenate(parts).reshape(-1, p)
        samples = samples[np.all(np.isfinite(samples), axis=1)]
    if samples.shape[0] >= 2:
        cov = np.cov(samples, rowvar=False).reshape(p, p)
        lo, hi = np.percentile(samples, [50.0 * (1 - level), 50.0 * (1 + level)], axis=0)
        method = "bootstrap"
    else:
        jac = _jacobian(form, theta, X)
        sigma2 = rss / max(n - p, 1)
        with np.errstate(all="ignore"):
            try:
                cov_fit = sigma2 * np.linalg.inv(jac.T @ jac)
            except np.linalg.LinAlgError:
                cov_fit = np.full((p, p), np.nan)
        scale = np.where(logged, natural, 1.0)
        cov = cov_fit * scale[:, None] * scale[None, :]
        half = scipy.stats.t.ppf(0.5 + level / 2, max(n - p, 1)) * np.sqrt(np.diag(cov_fit))
        lo_fit, hi_fit = theta - half, theta + half
        lo, hi = form.natural(lo_fit), form.natural(hi_fit)
        method = "wald"
    return LawFit(
        form=form.name, variables=form.variables,
        params={k: float(v) for k, v in zip(form.params, natural)},
        ci={k: (float(a), float(b)) for k, a, b in zip(form.params, lo, hi)},
        cov=cov, objective=value, n_points=n, n_runs=n_runs, converged=converged, n_starts=len(grid),
        n_converged=n_ok, n_boot=int(samples.shape[0]), loss=loss, delta=float(delta), level=float(level),
        ci_method=method, aic=nll + 2 * p, bic=nll + p * math.log(n), rmse_log=math.sqrt(rss / n),
        theta=theta, samples=samples, _form=form)


def extrapolation_error(form, data, *, train, test=None, y: Any = "loss", x=None, **kwargs) -> tuple[float, LawFit]:
    """Fit on the points ``train`` (a boolean mask) and return the mean absolute relative error of the prediction
    on ``test`` (default: the other points), with the fit: ``mean |f(x) / y - 1|``. Keywords go to :func:`law`."""
    train = np.asarray(train, dtype=bool).ravel()
    test = ~train if test is None else np.asarray(test, dtype=bool).ravel()
    if not test.any():
        raise ValueError("extrapolation_error needs at least one held-out point.")
    fit = law(form, data, x=x, y=y, select=train, **kwargs)
    names, get = _columns_of(data)
    column = lambda e: _evaluate(e, get, names) if isinstance(e, str) else np.asarray(e, dtype=np.float64).ravel()
    xs = dict(x) if x else {v: v for v in fit.variables}
    values = {v: column(xs[v])[test] for v in fit.variables}
    truth = column(y)[test]
    return float(np.mean(np.abs(fit.predict(values) / truth - 1.0))), fit


def annealing_areas(lr, decay: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """The forward and annealing areas of a learning-rate schedule (Tissue et al. 2024), after each step.

    .. math:: S_1(s) = \\sum_{i=1}^{s} \\eta_i,\\qquad S_2(s) = \\sum_{i=1}^{s} m_i,\\qquad
              m_i = \\lambda\\, m_{i-1} + (\\eta_{i-1} - \\eta_i),

    with ``m_0 = 0`` and ``eta_0 = eta_1`` (the annealing momentum starts at rest), ``lambda = decay``.

    Args:
      lr: the learning rate of each step, ``[..., T]``.
      decay: ``lambda``, the annealing momentum's decay (the paper's 0.999; 0 gives ``S_2 = eta_1 - eta_s``).

    Returns:
      ``(S1, S2)``, each ``[..., T]``.
    """
    lr = np.asarray(lr, dtype=np.float64)
    s1 = np.cumsum(lr, axis=-1)
    drops = np.diff(lr, axis=-1, prepend=lr[..., :1]) * -1.0
    return s1, np.cumsum(_momentum(drops, decay), axis=-1)


def _momentum(drops: np.ndarray, decay: float) -> np.ndarray:
    """``m_i = decay m_{i-1} + drops_i`` along the last axis."""
    import scipy.signal

    return scipy.signal.lfilter([1.0], [1.0, -decay], drops, axis=-1)
