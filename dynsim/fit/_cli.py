"""``dynsim fit DATA.csv|RESULTS_DIR --form NAME --x VAR=COLUMN,... --y COLUMN``: :func:`dynsim.fit.law` from the
command line. Prints the parameters with their intervals and the objective, writes the JSON ``{form, params, ci,
objective, n_points, ...}`` and a figure of the data and the fitted law."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from ._law import law


def _error(message: str) -> int:
    print(f"dynsim: error: {message}", file=sys.stderr)
    return 2


def parse_x(text: str) -> dict[str, str]:
    """``"N=Model Size,D=Training FLOP/(6*Model Size)"`` -> ``{"N": "Model Size", "D": "Training FLOP/(...)"}``."""
    out = {}
    for part in text.split(","):
        name, eq, column = part.partition("=")
        if not eq or not name.strip() or not column.strip():
            raise ValueError(f"--x takes VAR=COLUMN pairs separated by commas, got {part.strip()!r}.")
        out[name.strip()] = column.strip()
    return out


def load_table(path: pathlib.Path):
    """A CSV file as a pandas DataFrame, or a results folder as its xarray Dataset."""
    if path.is_dir():
        from .. import io

        return io.load(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path} is not a readable CSV table ({str(e).splitlines()[0] if str(e) else e}).") from None


def main(args) -> int:
    path = pathlib.Path(args.data)
    try:
        x = parse_x(args.x)
        table = load_table(path)
        fit = law(args.form, table, x=x, y=args.y, runs=args.runs, loss=args.loss, delta=args.delta,
                  bootstrap=args.bootstrap, drop_top=args.drop_top, top=args.top)
    except (ValueError, FileNotFoundError) as e:
        return _error(str(e))
    except Exception as e:  # a damaged results folder and the like: one line, not a traceback
        from .. import io

        if isinstance(e, (io.DamagedError, OSError)):
            return _error(str(e))
        raise
    level = f"{fit.level:.0%} {'bootstrap over runs' if fit.ci_method == 'bootstrap' else 'Wald'} CI"
    print(f"{fit.form} fit to {fit.n_points} points ({fit.n_runs} runs), {fit.loss} loss"
          f"{f' (delta {fit.delta:g})' if fit.loss == 'huber' else ''}: objective {fit.objective:.6g}, "
          f"{'converged' if fit.converged else 'NOT converged'} ({fit.n_converged}/{fit.n_starts} starts)")
    width = max(len(k) for k in fit.params)
    for k, v in fit.params.items():
        lo, hi = fit.ci[k]
        print(f"  {k:{width}s} = {v:.6g}  [{lo:.6g}, {hi:.6g}]")
    print(f"  ({level}; AIC {fit.aic:.1f}, BIC {fit.bic:.1f}, rms log residual {fit.rmse_log:.3g})")
    figure = pathlib.Path(args.figure) if args.figure else (
        pathlib.Path(args.json).with_suffix(".png") if args.json else pathlib.Path("fit.png"))
    try:
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(fit.to_dict(), indent=1))
            print(f"json: {args.json}")
        _figure(fit, table, x, args.y, figure)
    except OSError as e:
        return _error(f"cannot write {e.filename!r}: {e.strerror or e}.")
    print(f"figure: {figure}")
    return 0


def _figure(fit, table, x, y, path) -> None:
    from ..plot import save, subplots
    from ._law import _columns_of, _evaluate

    names, get = _columns_of(table)
    column = lambda e: _evaluate(e, get, names)
    xs = {v: column(x[v]) for v in fit.variables}
    yv = column(y)
    ok = np.isfinite(yv) & (yv > 0) & np.all([np.isfinite(a) for a in xs.values()], axis=0)
    xs, yv = {k: a[ok] for k, a in xs.items()}, yv[ok]
    pred = fit.predict(xs)
    fig, (left, right) = subplots(1, 2, figsize=(10, 4))
    first = fit.variables[0]
    if len(fit.variables) == 1:
        right.scatter(xs[first], yv, s=12, label="data")
        grid = np.geomspace(xs[first].min(), xs[first].max(), 200)
        right.plot(grid, fit.predict({first: grid}), "k-", label="fit")
    else:
        second = fit.variables[1]
        sc = right.scatter(xs[first], yv, c=np.log10(np.maximum(xs[second], 1e-300)), s=12, cmap="viridis")
        fig.colorbar(sc, ax=right, label=f"log10 {second}")
        grid = np.geomspace(xs[first].min(), xs[first].max(), 200)
        for q in (0.1, 0.5, 0.9):
            level = float(np.quantile(xs[second], q))
            right.plot(grid, fit.predict({first: grid, second: np.full_like(grid, level)}), "-", lw=1,
                       label=f"fit at {second} = {level:.3g}")
    right.set(xscale="log", yscale="log", xlabel=f"{first} ({x[first]})", ylabel=y, title=f"{fit.form} fit")
    right.legend(fontsize=7)
    left.scatter(pred, yv, s=12)
    lim = [min(pred.min(), yv.min()), max(pred.max(), yv.max())]
    left.plot(lim, lim, "k--", lw=1)
    left.set(xscale="log", yscale="log", xlabel="fitted", ylabel="measured",
             title=f"rms log residual {fit.rmse_log:.3g}")
    save(fig, path)
