"""``hyper-descent``: the optimal learning rate of each width found by gradient steps on ``log lr``, from per-member
hypergradients (:func:`dynsim.hypergrad`), under SP and muP with SGD.

Every member (parametrization x width x seed) starts at the spec's ``sweep.lr`` and takes ``analysis.outer_steps``
steps on its own ``log lr``, all members at once (one forward-mode hypergradient of the final training loss per
width and outer step):

    log lr <- log lr - eta * sign(d log L / d log lr)

(Rprop, Riedmiller & Braun 1993: ``eta`` halves when the sign changes and grows by 1.2 up to ``analysis.step``
while it does not), with ``L`` the member's final training loss after ``train.steps`` steps. The derivative's
size spans decades (tiny at small rates, exploding near the edge), so its sign is what the step uses. A step that
makes the member diverge is rejected and the member's step size halved, so a member whose optimum is the stability
edge (SGD on this realizable task trains faster with every larger rate, until it diverges) closes in on the edge
from below. The lr*
of a member is the rate with its lowest loss among those visited. The exponent of ``lr*`` in width is fitted
per parametrization (bootstrap CI over seeds) and compared with :func:`dynsim.theory.parametrization.lr_exponent`
(-1 SP, 0 muP), with the model error of ``lr-transfer`` (:func:`dynsim.experiments.lr_transfer.model_error`: the
slope over the swept widths of ``2 / lambda_max`` of the rate-scaled Hessian at init, plus a next-order term).

Beside it, the grid search it replaces: the same members trained by :func:`dynsim.run` at each rate of
``lr-transfer``'s grid (``analysis.grid_lrs`` rates evenly spaced in log lr over ``10^-4 .. 10``) for the same
steps; a member's grid lr* is the grid rate with its lowest final loss (the descent's lr* being the visited rate
with its lowest loss: one definition on both sides, a width's lr* the geometric mean over seeds). The two lr* are set
side by side per width and parametrization with their two fitted exponents, and a check per
parametrization asks that their mean offset in log lr be within one grid spacing (the grid's own resolution: its
best rate lies within one spacing of the optimum of a loss unimodal in log lr), against the competing outcome of a
descent that never left its starting rate.

Where it fails: near the edge the hypergradient of the unrolled run explodes (the training map's Jacobian has an
eigenvalue ``1 - lr lambda`` of modulus near or above 1, :func:`dynsim.theory.linear_gd.lr_derivative_growth`); the
report gives, per parametrization, the largest ``|d log L / d log lr|`` met and the number of rejected steps.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import executor as _executor
from .. import fit as _fit
from .. import io as _io
from ..executor import AXES, Program, Sweep, group_hypergrad, member_hyper, member_table
from ..plot import log_ticks, save, subplots, width_colors
from ..theory.parametrization import lr_exponent
from ._contract import Check, Experiment, Requirements
from ._runner import build, spec_error
from .lr_transfer import DEFAULTS as _LR_TRANSFER
from .lr_transfer import calibrate, model_error

N_BOOT = 300
OUTER_STEPS = 24
# Largest step on log lr per outer step: 0.5 moves lr by a factor 1.65, so 24 steps can cross five decades, the
# span of lr-transfer's grid.
STEP = 0.5
# lr-transfer's grid: its range in log10 lr; analysis.grid_lrs rates over it.
GRID_RANGE = tuple(_LR_TRANSFER["sweep"]["lr"]["logspace"][:2])

DEFAULTS = {
    "experiment": "hyper-descent",
    "model": {"kind": "mlp", "depth": 2, "act": "relu"},
    "task": {"d_in": 32, "n_train": 256, "n_test": 256, "teacher": "mlp", "teacher_width": 32, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 150, "record_every": 150},
    "sweep": {"width": [64, 128, 256, 512, 1024, 2048], "lr": [1e-3], "seed": [0, 1, 2], "param": ["sp", "mup"],
              "optimizer": ["sgd"]},
    "analysis": {"outer_steps": OUTER_STEPS, "step": STEP, "grid_lrs": 16},
}
QUICK = {
    "task": {"n_train": 128, "n_test": 128},
    "train": {"steps": 60, "record_every": 60},
    "sweep": {"width": [32, 64, 128, 256], "lr": [1e-3]},
    "analysis": {"outer_steps": 20, "step": 0.7},
}


def descend(model, task, sweep: Sweep, *, steps: int, outer_steps: int, step: float, log=None) -> xr.Dataset:
    """Gradient steps on every member's ``log lr`` (module docstring).

    Returns ``lr``, ``loss`` and ``dlog`` (``d log L / d log lr``) over ``param, width, seed, outer`` and
    ``rejected`` (the steps that diverged) over ``param, width, seed``.
    """
    table = member_table(sweep)
    data = task.make()
    shape = (len(sweep.param), len(sweep.width), len(sweep.seed))
    pick = tuple(slice(None) if a in ("param", "width", "seed") else 0 for a in AXES)
    index = np.arange(sweep.size).reshape(sweep.shape)[pick]  # [param, width, seed] (their order in AXES)
    lr = np.full(shape, float(sweep.lr[0]))
    eta = np.full(shape, float(step))
    lrs, losses, dlogs = (np.full(shape + (outer_steps + 1,), np.nan) for _ in range(3))
    rejected = np.zeros(shape, int)
    accepted, previous = lr.copy(), np.zeros(shape)
    progs = {w: Program(model=model, task=task.program_task(), optimizer="sgd", n_pad=w, record_every=steps,
                        records_per_segment=1, weight_decay=False, momentum=False) for w in sweep.width}
    for k in range(outer_steps + 1):
        value, dlog = np.empty(shape), np.empty(shape)
        for j, w in enumerate(sweep.width):
            members = index[:, j].ravel()
            hyper = member_hyper(sweep, members, table=table)
            hyper = hyper._replace(lr=jnp.asarray(lr[:, j].ravel(), hyper.lr.dtype))
            v, g, _ = group_hypergrad(progs[w], data, hyper, wrt=("log_lr",), mode="forward", steps=steps)
            value[:, j], dlog[:, j] = v.reshape(shape[0], shape[2]), g["log_lr"].reshape(shape[0], shape[2])
        lrs[..., k], losses[..., k] = lr, value
        with np.errstate(invalid="ignore", divide="ignore"):
            dlogs[..., k] = dlog / value
        bad = ~np.isfinite(value)
        rejected += bad & (k > 0)
        sign = np.sign(np.nan_to_num(dlogs[..., k]))
        # Rprop on log lr: a step that diverged is rejected and halved, a change of sign halves the step, a
        # repeated sign lengthens it by 1.2 up to the initial step.
        eta = np.where(bad | (sign * previous < 0), eta / 2, np.minimum(eta * 1.2, step))
        accepted = np.where(bad, accepted, lr)
        previous = np.where(bad, previous, sign)
        lr = np.where(bad, accepted * np.exp(-eta), lr * np.exp(-eta * sign))
        if log is not None:
            log(f"hyper-descent: outer step {k}/{outer_steps}, median loss {np.nanmedian(value):.3g}")
    coords = {"param": list(sweep.param), "width": list(sweep.width), "seed": list(sweep.seed),
              "outer": np.arange(outer_steps + 1)}
    dims = ("param", "width", "seed", "outer")
    return xr.Dataset({"lr": (dims, lrs), "loss": (dims, losses), "dlog": (dims, dlogs),
                       "rejected": (dims[:3], rejected)}, coords=coords)


def lr_star(ds) -> np.ndarray:
    """Each member's best visited rate ``[param, width, seed]`` (NaN where every visit diverged)."""
    loss = np.where(np.isfinite(ds["loss"].values), ds["loss"].values, np.inf)
    best = np.argmin(loss, axis=-1)
    out = np.take_along_axis(ds["lr"].values, best[..., None], axis=-1)[..., 0]
    return np.where(np.isfinite(loss).any(axis=-1), out, np.nan)


def grid_rates(spec) -> np.ndarray:
    """The grid search's learning rates: ``analysis.grid_lrs`` over lr-transfer's range."""
    return np.logspace(*GRID_RANGE, int(spec.get("analysis", {}).get("grid_lrs", 16)))


def grid_loss(model, task, sweep: Sweep, rates, *, steps: int) -> xr.DataArray:
    """The final training loss of every member of ``sweep`` at each of ``rates`` (``ds.run``, the same steps as the
    descent), over ``param, width, seed, grid_lr``; NaN where the member diverged."""
    res = _executor.run(model, task, dataclasses.replace(sweep, lr=[float(r) for r in rates]), steps=steps,
                        record_every=steps, progress=False, layout="vmap")
    final = res["loss"].isel(step=-1)
    final = final.isel({d: 0 for d in final.dims if d not in ("param", "width", "seed", "lr")})
    final = final.transpose("param", "width", "seed", "lr").rename(lr="grid_lr")
    return final.drop_vars([c for c in final.coords if c not in final.dims])


def grid_star(loss: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Each member's grid lr* ``[param, width, seed]`` from ``loss [param, width, seed, rate]``: the rate with its
    lowest final loss (NaN where it diverged at every rate)."""
    finite = np.where(np.isfinite(loss), loss, np.inf)
    best = np.asarray(rates)[np.argmin(finite, axis=-1)]
    return np.where(np.isfinite(loss).any(axis=-1), best, np.nan)


def execute(spec, out, progress) -> xr.Dataset:
    model, task, sweep, opts = build(spec)
    analysis = spec.get("analysis", {})
    steps = opts["steps"]
    t0 = time.perf_counter()
    try:
        ds = descend(model, task, sweep, steps=steps, outer_steps=analysis.get("outer_steps", OUTER_STEPS),
                     step=analysis.get("step", STEP))
        t_descent = time.perf_counter() - t0
        t1 = time.perf_counter()
        rates = grid_rates(spec)
        ds["grid_loss"] = grid_loss(model, task, sweep, rates, steps=steps)
        t_grid = time.perf_counter() - t1
        scale = calibrate(model, task, sweep, {**opts, "batch_size": opts["batch_size"]}, out / "calibration",
                          progress)
    except (_io.MetaMismatch, _executor.InputError) as e:
        raise spec_error(e) from None
    scale = scale.sel(optimizer="sgd")
    ds["lr_scale"] = scale.drop_vars([c for c in scale.coords if c not in scale.dims])
    ds.attrs["timing"] = json.dumps({"descent_s": t_descent, "grid_s": t_grid})
    ds.attrs["steps"] = steps
    _io.write_results(ds, out / "results.nc")
    return ds


def analyse(ds, spec, out):
    steps = int(spec["train"]["steps"])
    star = lr_star(ds)  # [P, W, S]
    widths = ds["width"].values.astype(float)
    params = [str(p) for p in ds["param"].values]
    n_seeds = star.shape[-1]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, n_seeds, (N_BOOT, n_seeds))
    calib = ds["lr_scale"].expand_dims(optimizer=["sgd"]).to_dataset(name="lr_scale")
    rates = ds["grid_lr"].values
    losses = ds["grid_loss"].transpose("param", "width", "seed", "grid_lr").values
    spacing = float(np.log(rates[1] / rates[0]))  # the grid's step in log lr
    log_grid = np.log(grid_star(losses, rates))  # [P, W, S]
    grid = np.nanmean(log_grid, axis=-1)  # [P, W]: log of the geometric mean over seeds
    grid_boot = np.nanmean(log_grid[:, :, idx], axis=-1).transpose(2, 0, 1)  # [B, P, W], the descent's resamples
    start = float(np.log(ds["lr"].values[..., 0].flat[0]))  # every member's starting rate
    checks, regimes, rows, fits, grid_fits, table_rows = [], {}, [], {}, {}, []
    for i, par in enumerate(params):
        log_star = np.log(star[i])  # [W, S]
        boot = np.nanmean(log_star[:, idx], axis=-1).T  # [B, W]
        ok = np.isfinite(np.nanmean(log_star, axis=1))
        predicted = lr_exponent(par, "sgd")
        competing = -1.0 if predicted == 0 else 0.0
        if ok.sum() >= 2:
            line = _fit.slope(np.log(widths[ok]), boot[:, ok])
            measured, ci = line.slope, line.slope_ci
            fits[par] = line
        else:
            measured, ci = float("nan"), (float("nan"), float("nan"))
        grid_ok = np.isfinite(grid[i])
        if grid_ok.sum() >= 2:
            grid_fits[par] = _fit.slope(np.log(widths[grid_ok]), grid_boot[:, i, grid_ok])
        error, slope, next_order = model_error(calib, "sgd", par)
        explode = float(np.nanmax(np.abs(ds["dlog"].values[i])))
        rejected = int(ds["rejected"].values[i].sum())
        reason = (f"model error |{slope:.2f} - ({predicted:g})| + {next_order:.3f} (lr-transfer's: the slope over "
                  "these widths of 2 / lambda_max of the rate-scaled Hessian at init, against the asymptotic exponent, "
                  f"plus the n^-1/2 next-order term); CI: {N_BOOT}-replicate bootstrap over seeds of the mean log "
                  "lr* per width")
        checks.append(Check(name=f"lr* exponent from hypergradients, {par} / sgd", measured=measured, ci=ci,
                            predicted=predicted, competitor="transfer (0)" if competing == 0 else "SP's 1/width (-1)",
                            competing=competing, tolerance=error, reason=reason))
        # The two lr* side by side: the mean over widths of log(lr*_hyper / lr*_grid), bootstrapped over seeds
        # (the same resamples on both sides).
        both = ok & grid_ok
        offset = float(np.mean(np.nanmean(log_star, axis=1)[both] - grid[i, both])) if both.any() else float("nan")
        off_boot = np.mean(boot[:, both] - grid_boot[:, i, both], axis=1) if both.any() else np.full(N_BOOT, np.nan)
        off_ci = _fit.percentile_ci(off_boot)
        checks.append(Check(
            name=f"lr* from hypergradients against the grid's, {par} / sgd (mean log ratio over widths)",
            measured=offset, ci=off_ci, predicted=0.0, competitor="a descent that never left its starting rate",
            competing=float(np.mean(start - grid[i, both])) if both.any() else float("nan"), tolerance=spacing,
            reason=(f"tolerance: one step of the grid, log({rates[1] / rates[0]:.3g}) = {spacing:.2f} (its best rate "
                    f"lies within one step of the optimum); CI: {N_BOOT}-replicate bootstrap over seeds of both lr*; "
                    f"widths where both are finite: {int(both.sum())}/{len(widths)}")))
        g = grid_fits.get(par)
        regimes[f"{par}/sgd"] = (f"lr* ~ width^{measured:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] from gradients alone, "
                                 + (f"width^{g.slope:.2f} [{g.slope_ci[0]:.2f}, {g.slope_ci[1]:.2f}] from the grid; "
                                    if g is not None else "no grid exponent (fewer than 2 finite optima); ")
                                 + f"{rejected} outer steps diverged and were rejected; largest |d log L / d log lr| "
                                 f"met {explode:.3g}")
        rows.append([par, f"{measured:.2f}", f"{g.slope:.2f}" if g is not None else "n/a", f"{rejected}",
                     f"{explode:.3g}"])
        for j, w in enumerate(widths):
            table_rows.append([par, f"{int(w)}", f"{np.exp(np.nanmean(log_star[j])):.3g}",
                               f"{np.exp(grid[i, j]):.3g}" if np.isfinite(grid[i, j]) else "n/a",
                               f"{np.nanmean(log_star[j]) - grid[i, j]:+.2f}" if np.isfinite(grid[i, j]) else "n/a"])
    outer = ds.sizes["outer"]
    members = int(np.prod(star.shape))
    unrolled = members * outer * steps
    grid_steps = members * len(rates) * steps
    timing = json.loads(ds.attrs.get("timing", "{}"))
    figures = [_plot_paths(ds, out), _plot_optimum(widths, star, fits, params, out, grid, grid_fits)]
    report = ("Each member descends its own log lr with forward-mode hypergradients of its final training loss "
              "(Rprop steps on the derivative's sign; a step that diverges is rejected and the member's step "
              "halved); lr* is the best rate visited.\n\n"
              f"Training steps spent: {outer} hypergradients x {members} members x {steps} steps = {unrolled} unrolled "
              f"steps (each carries one tangent, about 3.7 plain steps in CPU time: benchmarks/hypergrad.py), "
              f"against {grid_steps} for the grid of {len(rates)} learning rates per member as in lr-transfer "
              f"(before its edge refinement). Wall time of the descent: {timing.get('descent_s', float('nan')):.3g} s; "
              f"of the grid: {timing.get('grid_s', float('nan')):.3g} s (compilation included in both).\n\n"
              f"lr* per width, the descent's (geometric mean over seeds) beside the grid's ({len(rates)} rates "
              f"10^{GRID_RANGE[0]:g} .. 10^{GRID_RANGE[1]:g}, one step = {spacing:.2f} in log lr), each the geometric "
              "mean over seeds of the members' best rates:\n\n"
              + "| param | width | lr* (hypergradients) | lr* (grid) | log ratio |\n|---|---|---|---|---|\n"
              + "\n".join("| " + " | ".join(r) + " |" for r in table_rows) + "\n\n"
              "Where it fails: near the stability edge the loss jumps by orders of magnitude between neighbouring "
              "rates and its derivative explodes (the unrolled run's Jacobian has an eigenvalue 1 - lr lambda of "
              "modulus near 1 or above); sign steps and the rejection of diverged steps keep the descent "
              "below the edge, and the largest derivative met measures the explosion.\n\n"
              + "| param | exponent (hypergradients) | exponent (grid) | rejected steps | largest abs(d log L / "
              "d log lr) |\n|---|---|---|---|---|\n"
              + "\n".join("| " + " | ".join(r) + " |" for r in rows))
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def _plot_paths(ds, out):
    params = [str(p) for p in ds["param"].values]
    widths = ds["width"].values
    colors = width_colors(len(widths))
    fig, axes = subplots(1, len(params), figsize=(4.6 * len(params), 3.6), squeeze=False)
    for ax, (i, par) in zip(axes[0], enumerate(params)):
        for j, w in enumerate(widths):
            for s in range(ds.sizes["seed"]):
                ax.plot(ds["outer"].values, ds["lr"].values[i, j, s], color=colors[j], lw=0.8,
                        label=f"width {w}" if s == 0 else None)
        ax.set(yscale="log", xlabel="outer step", ylabel="learning rate", title=f"{par} / sgd")
        ax.legend(fontsize=7)
    return save(fig, out / "lr_paths.png")


def _plot_optimum(widths, star, fits, params, out, grid=None, grid_fits=None):
    """lr* against width per parametrization: the descent's (filled, solid fit) and the grid's (open, dashed)."""
    fig, axes = subplots(1, 1, figsize=(5.5, 4.5), squeeze=False)
    ax = axes[0, 0]
    for i, par in enumerate(params):
        y = np.exp(np.nanmean(np.log(star[i]), axis=1))
        line = ax.plot(widths, y, "os"[i % 2], label=f"{par}, hypergradients")
        color = line[0].get_color()
        if par in fits:
            ax.plot(widths, np.exp(fits[par].predict(np.log(widths))), "-", color=color, lw=1,
                    label=f"{par} fit: {fits[par].slope:.2f}")
        if grid is not None:
            ax.plot(widths, np.exp(grid[i]), "os"[i % 2], mfc="none", ms=10, color=color, label=f"{par}, grid")
            if par in grid_fits:
                ax.plot(widths, np.exp(grid_fits[par].predict(np.log(widths))), "--", color=color, lw=1,
                        label=f"{par} grid fit: {grid_fits[par].slope:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="lr*")
    log_ticks(ax, widths)
    ax.legend(fontsize=7)
    return save(fig, out / "lr_star_vs_width.png")


_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
REQUIRES = Requirements(
    single=("lr", "optimizer", "init_scale", "weight_decay", "momentum"),
    at_least=(("width", 2, "the exponent is a slope against log width"),
              ("seed", 2, "the CIs are a bootstrap over seeds")),
    full_batch=True,
    analysis={"outer_steps": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
              "step": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                       "a positive number"),
              "grid_lrs": (lambda v: _is_int(v) and v >= 3, "an integer >= 3")})


def validate(spec):
    from .. import spec as _spec

    if spec["sweep"].get("optimizer", ["sgd"]) != ["sgd"]:
        raise _spec.SpecError("spec key 'sweep.optimizer' must be ['sgd'] for hyper-descent (the lr* exponents it "
                              "checks are SGD's).")


EXPERIMENT = Experiment("hyper-descent", "optimal learning rate per width by gradient steps on log lr (per-member "
                        "hypergradients), SP and muP, against the predicted exponents", DEFAULTS, QUICK, analyse,
                        validate, execute=execute, requires=REQUIRES,
                        required=("task.d_in", "train.steps", "sweep.width", "sweep.lr"))
