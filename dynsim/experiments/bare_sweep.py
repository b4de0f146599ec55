"""``sweep``: a bare sweep from a spec file, with no theory attached; figures of the loss curves, or, for a spec
with a ``[hypergrad]`` table, of the members' objective and its derivatives (:func:`dynsim.hypergrad`)."""

from __future__ import annotations

import numpy as np

from ..plot import save, subplots, width_colors
from ._contract import Experiment, Requirements
from ._report import table

DEFAULTS = {
    "experiment": "sweep",
    "model": {"kind": "mlp", "depth": 2, "act": "relu"},
    "task": {"d_in": 16, "n_train": 128, "n_test": 256},
    "train": {"steps": 100, "record_every": 10},
    "sweep": {"width": [32, 128], "lr": [0.1], "seed": [0], "param": ["mup"], "optimizer": ["sgd"]},
}
QUICK = {"train": {"steps": 50, "record_every": 10}}


def _panels(ds):
    """(optimizer, param) pairs, one figure panel each."""
    return [(str(o), str(p)) for o in ds["optimizer"].values for p in ds["param"].values]


def analyse_hypergrad(ds, spec, out):
    """A ``[hypergrad]`` run: per (optimizer, param), the seed median of the objective and of each derivative
    against the learning rate (against width where one rate is swept), one line per width (and per layer for
    ``log_lr_layer``); a table of their ranges. A setting in which any seed diverged is left out (its median is
    NaN)."""
    objective = ds.attrs["objective"]
    names = [objective] + [v for v in ds.data_vars if v.startswith(f"d_{objective}_d_")]
    panels = _panels(ds)
    along = "lr" if ds.sizes["lr"] > 1 else "width"
    lines = [d for d in ("width", "layer") if d != along and d in ds.dims]
    figures = []
    for name in names:
        fig, axes = subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
        for ax, (opt, par) in zip(axes[0], panels):
            sel = ds[name].sel(optimizer=opt, param=par).median("seed", skipna=False)
            rest = [d for d in sel.dims if d not in (along, *lines)]
            sel = sel.isel({d: 0 for d in rest}) if rest else sel  # other axes: their first value
            widths = sel["width"].values if "width" in lines else [None]
            colors = width_colors(len(widths))
            for k, w in enumerate(widths):
                curve = sel.sel(width=w) if w is not None else sel
                for layer in (curve["layer"].values if "layer" in curve.dims else [None]):
                    y = curve.sel(layer=layer) if layer is not None else curve
                    label = ", ".join(([f"width {w}"] if w is not None else [])
                                      + ([f"layer {layer}"] if layer is not None else []))
                    fmt = "o-" if layer is None else ("o-", "s--", "^:")[int(layer) % 3]
                    ax.plot(ds[along].values, y.values, fmt, ms=3, color=colors[k], label=label or None)
            held = [d for d in rest if ds.sizes[d] > 1]
            ax.set(xscale="log", xlabel=along, ylabel=f"{name} (seed median)",
                   title=f"{par} / {opt}" + (f" ({', '.join(held)}: first value)" if held else ""))
            top = np.nanmax(np.abs(sel.values)) if np.isfinite(sel.values).any() else 1.0
            if name == objective:
                ax.set_yscale("log")
            else:  # derivatives change sign: logarithmic over three decades below the largest, linear through 0
                ax.set_yscale("symlog", linthresh=max(1e-3 * top, np.finfo(float).tiny))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        figures.append(save(fig, out / f"{name}.png"))
    rows = []
    for name in names:
        v = ds[name].values
        finite = v[np.isfinite(v)]
        stats = [f"{np.min(finite):.3g}", f"{np.median(finite):.3g}", f"{np.max(finite):.3g}"] if finite.size \
            else ["n/a"] * 3
        rows.append([name, f"{finite.size}/{v.size}", *stats])
    diverged = int((ds["diverged_at"] >= 0).sum())
    report = (f"Hypergradients of {objective} ({ds[objective].attrs.get('description', '')}) after {ds.attrs['steps']} "
              f"steps, {ds.attrs['mode']} mode"
              + (f" (rematerialised every {ds.attrs['remat_every']} steps)" if int(ds.attrs["remat_every"]) else "")
              + f"; members: {int(ds['diverged_at'].size)}, diverged: {diverged} (NaN objective and derivatives).\n\n"
              + table(["variable", "finite", "min", "median", "max"], rows))
    return {"checks": [], "regimes": {}, "figures": figures, "report": report}


def analyse(ds, spec, out):
    """Per (optimizer, param) and width: the loss curve of the best setting (the lowest seed-median final loss over
    lr and the other swept axes), and, when lr is swept, the final loss against lr. A setting in which any seed
    diverged is left out of both (its median is NaN); the report counts diverged members. A ``[hypergrad]`` run
    goes to :func:`analyse_hypergrad`."""
    if "hypergrad" in spec:
        return analyse_hypergrad(ds, spec, out)
    loss = ds["loss"]
    panels = _panels(ds)
    widths = ds["width"].values
    colors = width_colors(len(widths))
    settings = [d for d in loss.dims if d not in ("optimizer", "param", "width", "seed", "step")]
    fig, axes = subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (opt, par) in zip(axes[0], panels):
        sel = loss.sel(optimizer=opt, param=par).median("seed", skipna=False)  # settings where every seed trained
        for k, w in enumerate(widths):
            curves = sel.sel(width=w).stack(setting=settings) if settings else sel.sel(width=w)
            final = curves.isel(step=-1).values.reshape(-1)
            if not np.isfinite(final).any():
                continue
            best = int(np.nanargmin(final))
            curve = curves.isel(setting=best) if settings else curves
            label = f"width {w}" + (f" (lr {float(curve['lr']):.3g})" if "lr" in curve.coords else "")
            ax.plot(ds["step"].values, curve.values, color=colors[k], label=label)
        ax.set(yscale="log", xlabel="step", ylabel="training loss (seed median)", title=f"{par} / {opt}: best setting")
        ax.legend(fontsize=7)
    figures = [save(fig, out / "loss_curves.png")]
    if ds.sizes["lr"] > 1:
        fig, axes = subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
        rest = [d for d in settings if d != "lr"]
        for ax, (opt, par) in zip(axes[0], panels):
            final = loss.sel(optimizer=opt, param=par).isel(step=-1).median("seed", skipna=False)
            final = final.min(rest, skipna=True) if rest else final
            for k, w in enumerate(widths):
                ax.plot(ds["lr"].values, final.sel(width=w).values, "o-", ms=3, color=colors[k], label=f"width {w}")
            ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final training loss (seed median)",
                   title=f"{par} / {opt}")
            ax.legend(fontsize=7)
        figures.append(save(fig, out / "final_loss_vs_lr.png"))
    diverged = (ds["diverged_at"] >= 0)
    per_width = diverged.sum([d for d in diverged.dims if d != "width"]).values
    size = int(np.prod(diverged.shape)) // len(widths)
    report = (f"Members: {int(diverged.size)}; diverged: {int(diverged.sum())} (frozen and recorded as NaN from "
              "their divergence on; the figures leave out settings in which any seed diverged).\n\n"
              + table(["width", "diverged"], [[w, f"{int(n)}/{size}"] for w, n in zip(widths, per_width)]))
    return {"checks": [], "regimes": {}, "figures": figures, "report": report}


EXPERIMENT = Experiment("sweep", "a bare sweep from a TOML spec: results and loss curves, no theory",
                                 DEFAULTS, QUICK, analyse, requires=Requirements(observables=("loss",), analysis={}))
