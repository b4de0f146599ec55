"""``catapult``: lazy / catapult / divergent phases of large learning rates, in the uv model and wide ReLU MLPs.

Lewkowycz et al. (2020), "The large learning rate phase of deep learning: the catapult mechanism": for the uv model
``f = v . u x / sqrt(n)`` (NTK parametrization) trained by full-batch GD with squared loss on one sample, with
``lambda0`` the NTK eigenvalue at initialisation, training is *lazy* for ``lr lambda0 < 2`` (the loss falls
monotonically and the kernel barely moves), *catapults* for ``2 < lr lambda0 < 4`` (the loss first grows by a
factor of order ``n``, which drives the kernel below ``2 / lr``, then training converges in a flatter region) and
*diverges* for ``lr lambda0 > 4`` (:func:`dynsim.theory.stability.uv_phases`).

Learning rates: the sweep's ``lr`` axis is absolute (one compiled program serves every member), and each member's
``lambda0 = (|u|^2 + |v|^2) x^2 / n`` (:func:`~dynsim.theory.stability.uv_ntk_eigenvalue`) is computed afterwards
from its own initial weights, re-drawn outside the program with the engine's keys. The phase diagram is drawn
against the exact ``lr * lambda0`` of every member. With one sample and the task's seed 0, ``x = 1.2956``, so
``lambda0`` is close to its infinite-width value ``2 x^2 = 3.357`` and the default grid ``lr = 0.15 ... 1.8``
covers ``lr lambda0`` from about 0.5 to 6; other seeds of the task shift the range, not the analysis.

Phases are read off each member's loss trajectory: *divergent* if the member diverged (its loss became non-finite
or exceeded ``train.diverge_factor`` times its start) or its final loss is not below its initial loss; else
*catapult* if its loss ever rose above ``PEAK_FACTOR`` times its initial loss; else *lazy*. A measured boundary is
the midpoint between the largest ``lr lambda0`` of the lower phase and the smallest of the upper phase, per width
(pooling seeds); its CI is that gap. Tolerances: the boundaries are sharp only as ``n -> inf``; at finite ``n``
the kernel moves by ``O(1/n)`` per unit of squared residual, which blurs each boundary by ``O(n^-1/2)``; 0.15 in
``lr lambda0`` covers that at the widths swept (a member at ``lr lambda0 = 2.1`` still catapults at width 128).

Measured: quick size (widths 128-2048, 23 lrs, 2 seeds, 14 s) boundaries 1.92-2.11 and 3.91-4.01; full size
(widths 256, 1024, 4096; 45 lrs, 4 seeds; about 3 CPU-minutes) lazy / catapult 2.16, 2.06, 2.03 and catapult /
divergent 3.96, 4.01, 4.00, approaching 2 and 4 as the width grows; 97-99% of members in the predicted phase.

Wide ReLU MLPs (``analysis.mlp_*``; a second engine sweep, stored under the prefix ``mlp_`` in ``results.nc``):
depth-``L`` ReLU networks without biases in NTK parametrization, full-batch GD on a small training set of a linear
teacher. ``lambda0`` of a member is the top eigenvalue of ``K / P`` at init, ``K = J J^T`` the empirical NTK on the
``P`` training inputs (:func:`ntk_lambda0`): the top eigenvalue of the Gauss-Newton part ``J^T J / P`` of the
Hessian of ``0.5 * mean((f - y)^2)``, equal to the loss Hessian's up to the residual term, ``O(n^-1/2)`` at init.
The lr axis is ``linspace(*mlp_lr_lambda0)`` divided by the widest members' mean ``lambda0``; each member's exact
``lr * lambda0`` is measured. Phases (:func:`classify_mlp`): catapult when the loss rises by more than
``RISE_FACTOR`` between two records (with many samples the top mode carries little of the initial loss, so the
total loss may catapult without exceeding its start). The lazy / catapult boundary is checked against 2 from width
``MLP_CHECK_WIDTH`` on: at smaller widths the kernel drifts by ``O(n^-1/2)`` while the loss falls and the measured
edge sits higher. The catapult / divergent boundary has no closed form: it is reported as a measured figure beside
the maximal ``lr lambda0`` of about 12 that Lewkowycz et al. observe for ReLU networks, not checked. Final
sharpness is not recorded for the MLPs (the loss alone decides the phase, and it keeps the sweep cheap).

Measured (MLPs): quick size (depth 2, widths 128 and 1024, 24 lrs, 2 seeds, 60 steps; about 15 CPU-s) lazy /
catapult 2.49 [2.33, 2.66] and 2.24 [2.05, 2.44], catapult / divergent 7.91 [7.10, 8.72] and 6.00 [5.86, 6.14].
Full size (depth 3, widths 128, 512, 1024, 32 lrs, 3 seeds, 80 steps; MLP part 5.7 min wall on 2 shared cores)
lazy / catapult 2.23 [2.07, 2.40], 2.77 [2.33, 3.21] (members of the two phases overlap there) and 2.01
[1.88, 2.15]; catapult / divergent 9.35 [7.68, 11.02], 7.29 [6.42, 8.15] and 5.78 [5.64, 5.92], falling with width
and below the literature's 12 (within the few steps run, a member still above its initial loss counts as divergent).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import engine as _engine
from .. import fit as _fit
from .. import io as _io
from .. import param as _param
from .. import spec as _spec
from ..models import MLP, width_mask
from ..plot import log_ticks, plt, save, width_colors
from ..sweep import Sweep
from ..tasks import TeacherStudent
from ..theory.stability import PHASES, uv_ntk_eigenvalue, uv_phases
from ._base import Check, Experiment, build, register, spec_error, squeeze_axes

TOLERANCE = 0.15  # in lr * lambda0: the O(n^-1/2) finite-width blur of the boundaries (module docstring)
PEAK_FACTOR = 2.0  # a loss that doubles before converging has catapulted; lazy GD on one sample never rises
# MLP members: a rise of the loss between two records by more than this factor marks a catapult. Below lr*lambda0 = 2
# every mode of the linearised dynamics contracts, so lazy GD never rises; above it the top mode grows by
# (lr lambda0 - 1)^2 per step, a factor of at least 1.2 over two steps from lr lambda0 = 2.05. 5% leaves room for
# float32 round-off of a loss already ~1e-8 of its start.
RISE_FACTOR = 1.05
# The MLP's lazy / catapult boundary is checked from this width on. While the loss falls by orders of magnitude in the
# first steps, the kernel of a finite-width MLP moves by O(n^-1/2) relative to lambda0 and lowers the effective
# lr*lambda, and a loss rise may not show before the kernel has flattened: measured boundaries sit 0.2-0.8 above 2 at
# widths 128-512 (reported, not checked), within [1.88, 2.44] at 1024 (module docstring).
MLP_CHECK_WIDTH = 1024
LITERATURE_RELU_MAX = 12.0  # maximal lr*lambda0 Lewkowycz et al. (2020) observe for ReLU networks
MLP_KEYS = {"mlp_depth", "mlp_width", "mlp_seed", "mlp_lr_lambda0", "mlp_steps", "mlp_record_every", "mlp_d_in",
            "mlp_n_train"}

DEFAULTS = {
    "experiment": "catapult",
    "model": {"kind": "uv"},
    "task": {"d_in": 1, "n_train": 1, "n_test": 1, "teacher": "linear", "noise": 0.0, "seed": 0},
    "train": {"steps": 300, "record_every": 1, "observables": ["loss", "sharpness"], "diverge_factor": 1e12},
    "sweep": {"width": [256, 1024, 4096], "lr": {"linspace": [0.15, 1.8, 45]}, "seed": [0, 1, 2, 3],
              "param": ["ntk"], "optimizer": ["sgd"]},
    # The ReLU MLP sweep: its lr axis is lr * lambda0 = linspace(*mlp_lr_lambda0) over the mean lambda0 of the widest
    # member's seeds (each member's exact lr * lambda0 is measured, not assumed).
    "analysis": {"mlp_depth": 3, "mlp_width": [128, 512, 1024], "mlp_seed": [0, 1, 2],
                 "mlp_lr_lambda0": [0.5, 16.0, 32], "mlp_steps": 80, "mlp_record_every": 2, "mlp_d_in": 8,
                 "mlp_n_train": 16},
}
QUICK = {
    "train": {"steps": 200},
    "sweep": {"width": [128, 512, 2048], "lr": {"linspace": [0.15, 1.8, 23]}, "seed": [0, 1]},
    "analysis": {"mlp_depth": 2, "mlp_width": [128, 1024], "mlp_seed": [0, 1], "mlp_lr_lambda0": [0.5, 12.0, 24],
                 "mlp_steps": 60},
}


def lambda0(ds, spec) -> np.ndarray:
    """NTK eigenvalue at initialisation of every member, ``[width, lr, seed]`` (the same for every lr)."""
    model, task, _, _ = build(spec)
    x = float(np.asarray(task.make().x_train)[0, 0])
    table = _param.get("ntk").table("sgd")
    out = np.empty((ds.sizes["width"], ds.sizes["seed"]))
    for i, n in enumerate(ds["width"].values):
        std = model.scales(int(n), table, 1.0).std
        for j, s in enumerate(ds["seed"].values):
            u, v = model.init(jax.random.key(int(s)), int(n), int(n), std)
            out[i, j] = uv_ntk_eigenvalue(np.asarray(u)[:, 0], np.asarray(v)[0], x)
    return np.broadcast_to(out[:, None, :], (ds.sizes["width"], ds.sizes["lr"], ds.sizes["seed"]))


def classify(loss: np.ndarray, diverged: np.ndarray) -> np.ndarray:
    """Phase index (0 lazy, 1 catapult, 2 divergent) from loss trajectories ``[..., step]``."""
    with np.errstate(invalid="ignore"):
        rose = np.nanmax(loss, axis=-1) > PEAK_FACTOR * loss[..., 0]
    return np.where(_divergent(loss, diverged), 2, np.where(rose, 1, 0))


def _divergent(loss: np.ndarray, diverged: np.ndarray) -> np.ndarray:
    """Diverged, or the final loss is not finite or not below the initial one."""
    with np.errstate(invalid="ignore"):
        return diverged | ~np.isfinite(loss[..., -1]) | ~(loss[..., -1] < loss[..., 0])


def boundary(x: np.ndarray, phase: np.ndarray, lower: int) -> tuple[float, tuple[float, float]]:
    """Midpoint and gap between the largest ``x`` in phases ``<= lower`` and the smallest above it.

    NaN where a side is empty or the phases overlap (an upper phase below a lower one).
    """
    lo, hi = x[phase <= lower], x[phase > lower]
    if lo.size == 0 or hi.size == 0:
        return float("nan"), (float("nan"), float("nan"))
    a, b = float(lo.max()), float(hi.min())
    if a > b:  # not separated: report the overlap as the interval
        a, b = b, a
    return 0.5 * (a + b), (a, b)


def rose(loss: np.ndarray, factor: float = RISE_FACTOR) -> np.ndarray:
    """Whether the loss ever grew by more than ``factor`` from one record to the next, ``loss[..., step]``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmax(loss[..., 1:] / loss[..., :-1], axis=-1) > factor


def classify_mlp(loss: np.ndarray, diverged: np.ndarray, factor: float = RISE_FACTOR) -> np.ndarray:
    """Phase index (0 lazy, 1 catapult, 2 divergent) of MLP members from loss trajectories ``[..., step]``.

    Divergent as in :func:`classify`; catapult if the loss ever :func:`rose` between records. With many samples the
    peak test of :func:`classify` misses catapults: the top kernel mode, which alone grows, starts with a small share
    of the residual, and the kernel flattens before the total loss exceeds its start.
    """
    return np.where(_divergent(loss, diverged), 2, np.where(rose(loss, factor), 1, 0))


def mlp_parts(spec) -> tuple[MLP, TeacherStudent]:
    """The ReLU MLP and its training set from ``analysis.mlp_*`` (one output, linear teacher, no noise)."""
    a = spec["analysis"]
    d_in, n_train = a["mlp_d_in"], a["mlp_n_train"]
    task = TeacherStudent(d_in=d_in, n_train=n_train, n_test=n_train, teacher="linear", noise=0.0,
                          seed=spec["task"].get("seed", 0))
    return MLP(d_in=d_in, depth=a["mlp_depth"], act="relu"), task


def ntk_lambda0(model: MLP, x, width: int, seeds) -> np.ndarray:
    """Top eigenvalue at initialisation of ``K / P`` for each seed, NTK parametrization, ``[seed]``.

    ``K = J J^T`` is the empirical NTK on the ``P`` training inputs ``x`` (``[d, P]``; :mod:`dynsim.obs_ntk`), so
    ``K / P`` has the nonzero spectrum of the Gauss-Newton part ``J^T J / P`` of the Hessian of the loss
    ``0.5 * mean((f - y)^2)``; it is the loss Hessian only up to the residual term ``sum_i r_i grad^2 f_i / P``,
    which is ``O(n^-1/2)`` at init. Under GD with one learning rate for every layer (SGD, ``c_l = 0``) the
    linearised residual moves as ``r <- (1 - lr K / P) r``, so ``lr lambda0 = 2`` is its stability edge. The
    weights are redrawn with the engine's keys (a member's init does not depend on its padding).
    """
    scales = model.scales(width, _param.get("ntk").table("sgd"), 1.0)
    mask = width_mask(width, width)

    @jax.jit
    def top(key_data):
        params = model.init(jax.random.wrap_key_data(key_data), width, width, scales.std)
        jac = jax.jacrev(lambda p: model.apply(p, x, scales.mult, mask)[0])(params)
        j = jnp.concatenate([g.reshape(g.shape[0], -1) for g in jac], axis=1)
        return jnp.linalg.eigvalsh(j @ j.T)[-1] / x.shape[1]

    return np.array([float(top(jax.random.key_data(jax.random.key(int(s))))) for s in seeds])


def run_mlp(spec, out, progress) -> xr.Dataset:
    """Train the ReLU MLP sweep of ``analysis.mlp_*`` by full-batch GD into ``out``; adds ``lambda0[width, seed]``.

    The lr axis is ``linspace(*mlp_lr_lambda0) / lambda0_ref``, ``lambda0_ref`` the mean over seeds at the largest
    width (NTK parametrization: ``lambda0`` tends to a width-independent limit).
    """
    a = spec["analysis"]
    model, task = mlp_parts(spec)
    x = task.make().x_train
    widths, seeds = sorted(a["mlp_width"]), list(a["mlp_seed"])
    lam0 = np.stack([ntk_lambda0(model, x, n, seeds) for n in widths])
    start, stop, count = a["mlp_lr_lambda0"]
    lrs = (np.linspace(start, stop, count) / lam0[-1].mean()).tolist()
    sweep = Sweep(width=widths, lr=lrs, seed=seeds, param=["ntk"], optimizer=["sgd"])
    ds = _engine.run(model, task, sweep, steps=a["mlp_steps"], record_every=a["mlp_record_every"],
                     observables=("loss",), diverge_factor=spec["train"].get("diverge_factor", 1e12), out=out,
                     progress=progress, spec=spec)
    lam0 = xr.DataArray(lam0, coords={"width": widths, "seed": seeds}, dims=("width", "seed"),
                        attrs={"description": "top eigenvalue of the empirical NTK / P on the training set at init"})
    return ds.assign(lambda0=lam0)


def execute(spec, out, progress) -> xr.Dataset:
    """Both sweeps: the uv model into ``out/uv``, the ReLU MLPs into ``out/mlp``; one store ``out/results.nc``.

    The MLP's variables and dims carry the prefix ``mlp_`` in the combined store (its widths and lrs are its own).
    """
    model, task, sweep, opts = build(spec)
    try:
        uv = _engine.run(model, task, sweep, out=out / "uv", progress=progress, spec=spec, **opts)
        mlp = run_mlp(spec, out / "mlp", progress)
    except (_io.MetaMismatch, _engine.InputError) as e:
        raise spec_error(e) from None
    timing = {}
    for part in (uv, mlp):
        for k, v in json.loads(part.attrs.get("timing", "{}")).items():
            timing[k] = timing.get(k, 0) + v
    mlp = mlp.rename({name: f"mlp_{name}" for name in set(mlp.variables) | set(mlp.dims)})
    ds = xr.merge([uv, mlp], combine_attrs="drop_conflicts")
    ds.attrs["timing"] = json.dumps(timing)
    _io.write_results(ds, out / "results.nc")
    return ds


_FIXED = ("optimizer", "param", "init_scale", "weight_decay", "momentum")  # one value each (validate)


def analyse(ds, spec, out):
    loss = squeeze_axes(ds["loss"], _FIXED).transpose("width", "lr", "seed", "step").values
    sharp = squeeze_axes(ds["sharpness"], _FIXED).transpose("width", "lr", "seed", "step").values
    diverged = squeeze_axes(ds["diverged_at"], _FIXED).transpose("width", "lr", "seed").values >= 0
    lam0 = lambda0(ds, spec)
    x = ds["lr"].values[None, :, None] * lam0  # lr * lambda0
    phase = classify(loss, diverged)
    widths = ds["width"].values
    checks, regimes, rows = [], {}, []
    for i, n in enumerate(widths):
        for lower, predicted, name in ((0, 2.0, "lazy / catapult"), (1, 4.0, "catapult / divergent")):
            mid, ci = boundary(x[i].ravel(), phase[i].ravel(), lower)
            reason = (f"boundary between the grid's neighbouring members (CI: the gap), blurred by O(n^-1/2) at "
                      f"width {n}")
            checks.append(Check(f"{name} boundary in lr*lambda0, width {n}", mid, ci, predicted, TOLERANCE,
                                bool(np.isfinite(mid)) and _fit.agrees(ci, predicted, TOLERANCE), reason))
        theory = uv_phases(x[i], 1.0)
        measured = np.asarray(PHASES)[phase[i]]
        agree = float(np.mean(theory == measured))
        regimes[f"width {n}"] = (f"{int((phase[i] == 0).sum())} lazy, {int((phase[i] == 1).sum())} catapult, "
                                 f"{int((phase[i] == 2).sum())} divergent members; {100 * agree:.0f}% in the phase "
                                 "uv_phases predicts from lr*lambda0")
        rows.append((n, float(lam0[i].mean()), float(lam0[i].std()), agree))
    figures = [_plot_phases(x, phase, loss, sharp, ds, out)]
    mlp = mlp_part(ds)
    mlp_checks, mlp_regimes, mlp_rows = analyse_mlp(mlp)
    figures.append(_plot_mlp(mlp, out))
    return {"checks": checks + mlp_checks, "regimes": {**regimes, **mlp_regimes}, "figures": figures,
            "report": _report(rows) + "\n\n" + _report_mlp(mlp_rows, mlp, spec)}


def mlp_part(ds) -> xr.Dataset:
    """The MLP sweep of a combined store, with its ``mlp_`` prefix removed and length-1 axes squeezed."""
    mlp = ds[[n for n in ds.data_vars if str(n).startswith("mlp_")]]
    return squeeze_axes(mlp.rename({n: str(n)[4:] for n in set(mlp.variables) | set(mlp.dims)}), _FIXED)


def _mlp_arrays(mlp):
    """``lr * lambda0``, phases and losses ``[width, lr, seed(, step)]`` of the MLP sweep."""
    loss = mlp["loss"].transpose("width", "lr", "seed", "step").values
    diverged = mlp["diverged_at"].transpose("width", "lr", "seed").values >= 0
    x = mlp["lr"].values[None, :, None] * mlp["lambda0"].transpose("width", "seed").values[:, None, :]
    return x, classify_mlp(loss, diverged), loss


def analyse_mlp(mlp):
    """Checks (lazy / catapult boundary against 2), regimes and per-width boundaries of the ReLU MLP sweep."""
    x, phase, _ = _mlp_arrays(mlp)
    checks, regimes, rows = [], {}, []
    for i, n in enumerate(mlp["width"].values):
        lazy, ci_lazy = boundary(x[i].ravel(), phase[i].ravel(), 0)
        top, ci_top = boundary(x[i].ravel(), phase[i].ravel(), 1)
        if n >= MLP_CHECK_WIDTH:
            checks.append(Check(f"ReLU MLP lazy / catapult boundary in lr*lambda0, width {n}", lazy, ci_lazy, 2.0,
                                TOLERANCE, bool(np.isfinite(lazy)) and _fit.agrees(ci_lazy, 2.0, TOLERANCE),
                                "boundary between the grid's neighbouring members (CI: the gap); lambda0 from the "
                                "empirical NTK at init, whose O(n^-1/2) drift in the first steps blurs the edge"))
        regimes[f"ReLU MLP width {n}"] = (f"{int((phase[i] == 0).sum())} lazy, {int((phase[i] == 1).sum())} "
                                          f"catapult, {int((phase[i] == 2).sum())} divergent members; boundaries at "
                                          f"lr*lambda0 = {lazy:.2f} [{ci_lazy[0]:.2f}, {ci_lazy[1]:.2f}] (lazy / "
                                          f"catapult) and {top:.2f} [{ci_top[0]:.2f}, {ci_top[1]:.2f}] (catapult / "
                                          "divergent)")
        rows.append((n, float(mlp["lambda0"].sel(width=n).mean()), float(mlp["lambda0"].sel(width=n).std()), lazy,
                     ci_lazy, top, ci_top))
    return checks, regimes, rows


def _report_mlp(rows, mlp, spec):
    a = spec["analysis"]
    lines = ["## ReLU MLPs", "", f"Depth {a['mlp_depth']} ReLU MLPs (NTK parametrization, no biases), full-batch GD "
             f"for {a['mlp_steps']} steps on {a['mlp_n_train']} samples of a linear teacher in {a['mlp_d_in']} "
             "dimensions. `lambda0` is each member's top eigenvalue of `K / P` at initialisation, `K` the empirical "
             "NTK on the training set: the top eigenvalue of the Gauss-Newton part of the loss Hessian, which the "
             "residual term shifts by `O(n^-1/2)`. Phases: divergent (diverged, or final loss not below the "
             f"initial one), catapult (the loss rose by more than {RISE_FACTOR:g}x between two records, every "
             f"{a['mlp_record_every']} steps, then converged), lazy (otherwise).", "",
             "| width | lambda0 (mean over seeds) | std | lazy / catapult | CI | catapult / divergent | CI |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {m:.4f} | {s:.4f} | {lz:.2f} | [{cl[0]:.2f}, {cl[1]:.2f}] | {tp:.2f} | "
              f"[{ct[0]:.2f}, {ct[1]:.2f}] |" for n, m, s, lz, cl, tp, ct in rows]
    lines += ["", "The catapult / divergent boundary is a measured figure, not a check: Lewkowycz et al. (2020) "
              f"report a maximal learning rate of about {LITERATURE_RELU_MAX:g} / lambda0 for deep ReLU networks "
              "(4 / lambda0 in the uv model); no closed form predicts it. Measured here: "
              + ", ".join(f"{tp:.2f} at width {n}" for n, *_, tp, _ in rows) + "."]
    return "\n".join(lines)


def _report(rows):
    lines = ["The uv model `f = v.u x / sqrt(n)` (NTK parametrization), full-batch GD on one sample. "
             "`lambda0` is each member's NTK eigenvalue at initialisation, `(|u|^2 + |v|^2) x^2 / n`, from its own "
             "initial weights. Phases from the loss trajectory: divergent (diverged, or final loss not below the "
             f"initial one), catapult (the loss rose above {PEAK_FACTOR:g}x its initial value, then converged), "
             "lazy (otherwise). Measured boundaries: midpoint of the gap between neighbouring phases in "
             "`lr * lambda0` over all learning rates and seeds of a width; CI: the gap.", "",
             "| width | lambda0 (mean over seeds) | std | members in the predicted phase |", "|---|---|---|---|"]
    lines += [f"| {n} | {m:.4f} | {s:.4f} | {100 * a:.0f}% |" for n, m, s, a in rows]
    return "\n".join(lines)


def _scatter_phases(ax, x, phase, widths):
    """Every member at (lr * lambda0, width), marked by its phase."""
    markers = {0: ("o", "lazy"), 1: ("s", "catapult"), 2: ("x", "divergent")}
    for i, n in enumerate(widths):
        for p, (m, label) in markers.items():
            sel = phase[i] == p
            ax.scatter(x[i][sel], np.full(sel.sum(), n), marker=m, color=f"C{p}", s=18, label=label if i == 0 else None)
    log_ticks(ax, widths, axis="y")


def _plot_phases(x, phase, loss, sharp, ds, out):
    """Phase diagram (lr*lambda0 vs width), peak loss and final lr*sharpness against lr*lambda0."""
    widths, lrs = ds["width"].values, ds["lr"].values
    colors = width_colors(len(widths))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _scatter_phases(axes[0], x, phase, widths)
    for i, n in enumerate(widths):
        with np.errstate(invalid="ignore", divide="ignore"):
            peak = np.nanmax(loss[i], axis=-1) / loss[i][..., 0]
        axes[1].scatter(x[i].ravel(), peak.ravel(), s=8, color=colors[i], label=f"width {n}")
        final = lrs[:, None] * sharp[i][..., -1]
        axes[2].scatter(x[i].ravel(), final.ravel(), s=8, color=colors[i], label=f"width {n}")
    for ax in axes:
        for b in (2, 4):
            ax.axvline(b, color="k", ls="--", lw=1)
        ax.set(xlabel="lr * lambda0 (NTK eigenvalue at init)")
    axes[0].set(ylabel="width", title="phase of every member; dashed: theory boundaries 2 and 4")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set(yscale="log", ylabel="peak loss / initial loss", title="catapult: the loss rises by O(n)")
    axes[1].legend(fontsize=7)
    grid = np.linspace(0, 4, 50)
    axes[2].plot(grid, grid, color="0.5", lw=1, label="lazy: unchanged kernel")
    axes[2].axhline(2, color="0.5", ls=":", lw=1)
    axes[2].set(ylim=(0, 4.5), ylabel="lr * final sharpness", title="final sharpness: below 2/lr after a catapult")
    axes[2].legend(fontsize=7)
    return save(fig, out / "phase_diagram.png")


def _plot_mlp(mlp, out):
    """ReLU MLPs: phase of every member, peak loss and final loss against lr*lambda0."""
    x, phase, loss = _mlp_arrays(mlp)
    widths = mlp["width"].values
    colors = width_colors(len(widths))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    with np.errstate(invalid="ignore", divide="ignore"):
        peak = np.nanmax(loss, axis=-1) / loss[..., 0]
        final = loss[..., -1] / loss[..., 0]
    _scatter_phases(axes[0], x, phase, widths)
    for i, n in enumerate(widths):
        ok = phase[i] < 2
        axes[1].scatter(x[i][ok], peak[i][ok], s=8, color=colors[i], label=f"width {n}")
        axes[2].scatter(x[i][ok], final[i][ok], s=8, color=colors[i], label=f"width {n}")
    for ax in axes:
        ax.axvline(2, color="k", ls="--", lw=1)
        ax.axvline(LITERATURE_RELU_MAX, color="0.5", ls=":", lw=1)
        ax.set(xlabel="lr * lambda0 (top eigenvalue of NTK / P at init)")
    axes[0].set(ylabel="width", title="ReLU MLP phases; dashed: 2, dotted: 12 (deep ReLU, literature)")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set(yscale="log", ylabel="peak loss / initial loss", title="peak loss (converged members)")
    axes[1].legend(fontsize=7)
    axes[2].set(yscale="log", ylabel="final loss / initial loss", title="final loss (converged members)")
    axes[2].legend(fontsize=7)
    return save(fig, out / "mlp_phase_diagram.png")


def _validate_mlp(analysis: dict) -> None:
    """``analysis.mlp_*``: every key present (the defaults give them) and of the right kind."""
    unknown = set(analysis) - MLP_KEYS
    if unknown:
        raise _spec.SpecError(f"unknown spec key 'analysis.{sorted(unknown)[0]}'; catapult takes "
                              f"{', '.join('analysis.' + k for k in sorted(MLP_KEYS))}.")
    pos_int = lambda v: _spec._pos_int(v)[0]
    nonneg_int = lambda v: _spec._nonneg_int(v)[0]
    for key in ("mlp_steps", "mlp_record_every", "mlp_d_in", "mlp_n_train"):
        if not pos_int(analysis.get(key)):
            raise _spec.SpecError(f"spec key 'analysis.{key}' must be a positive integer, got {analysis.get(key)!r}.")
    if analysis["mlp_steps"] % analysis["mlp_record_every"]:
        raise _spec.SpecError("spec key 'analysis.mlp_steps' must be a multiple of 'analysis.mlp_record_every'.")
    if not (pos_int(analysis.get("mlp_depth")) and analysis["mlp_depth"] >= 2):
        raise _spec.SpecError(f"spec key 'analysis.mlp_depth' must be an integer >= 2, got "
                              f"{analysis.get('mlp_depth')!r}.")
    for key, ok in (("mlp_width", pos_int), ("mlp_seed", nonneg_int)):
        v = analysis.get(key)
        if not (isinstance(v, list) and v and all(ok(w) for w in v) and len(set(v)) == len(v)):
            raise _spec.SpecError(f"spec key 'analysis.{key}' must be a list of distinct "
                                  f"{'positive' if key == 'mlp_width' else 'non-negative'} integers, got {v!r}.")
    grid = analysis.get("mlp_lr_lambda0")
    if not (isinstance(grid, list) and len(grid) == 3 and all(isinstance(g, (int, float)) for g in grid)
            and 0 < grid[0] < grid[1] and pos_int(grid[2]) and grid[2] >= 2):
        raise _spec.SpecError(f"spec key 'analysis.mlp_lr_lambda0' must be [start, stop, count] with "
                              f"0 < start < stop and an integer count >= 2, got {grid!r}.")


def validate(spec):
    from ..spec import SpecError

    if spec.get("model", {}).get("kind") != "uv":
        raise SpecError("spec key 'model.kind' must be 'uv' for catapult.")
    task, sweep, train = spec.get("task", {}), spec.get("sweep", {}), spec.get("train", {})
    if task.get("d_in") != 1 or task.get("n_train") != 1:
        raise SpecError("spec keys 'task.d_in' and 'task.n_train' must be 1 for catapult: the phase boundaries are "
                        "derived for one scalar sample.")
    if list(sweep.get("param", ["mup"])) != ["ntk"] or list(sweep.get("optimizer", ["sgd"])) != ["sgd"]:
        raise SpecError("spec keys 'sweep.param' and 'sweep.optimizer' must be ['ntk'] and ['sgd'] for catapult.")
    for key, default in (("init_scale", 1.0), ("weight_decay", 0.0), ("momentum", 0.0)):
        if list(sweep.get(key, [default])) != [default]:
            raise SpecError(f"spec key 'sweep.{key}' must be [{default}] for catapult (plain GD from the standard "
                            "uv init).")
    if train.get("batch_size", 0) != 0:
        raise SpecError("spec key 'train.batch_size' must be 0 (full batch) for catapult.")
    if "loss" not in train.get("observables", []) or "sharpness" not in train.get("observables", []):
        raise SpecError("spec key 'train.observables' must include 'loss' and 'sharpness' for catapult.")
    _validate_mlp(spec.get("analysis", {}))


EXPERIMENT = register(Experiment("catapult", "uv model and ReLU MLPs under large learning rates: lazy / catapult / "
                                 "divergent phases against lr*lambda0 = 2 and 4 (Lewkowycz et al. 2020)", DEFAULTS,
                                 QUICK, analyse, validate, execute,
                                 required=("task.d_in", "train.steps", "sweep.width", "sweep.lr")))
