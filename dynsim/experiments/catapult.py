"""``catapult``: the phases of large learning rates in the uv model, lazy / catapult / divergent at 2 and 4.

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

Not covered: the wide ReLU MLP part of issue 5 (its boundary near 12 in ``lr lambda0`` reported by Lewkowycz et al.
for deep ReLU networks) is not run by this experiment.
"""

from __future__ import annotations

import jax
import numpy as np

from .. import fit as _fit
from .. import param as _param
from ..plot import plt, save, width_colors
from ..theory.stability import PHASES, uv_ntk_eigenvalue, uv_phases
from ._base import Check, Experiment, build, register

TOLERANCE = 0.15  # in lr * lambda0: the O(n^-1/2) finite-width blur of the boundaries (module docstring)
PEAK_FACTOR = 2.0  # a loss that doubles before converging has catapulted; lazy GD on one sample never rises

DEFAULTS = {
    "experiment": "catapult",
    "model": {"kind": "uv"},
    "task": {"d_in": 1, "n_train": 1, "n_test": 1, "teacher": "linear", "noise": 0.0, "seed": 0},
    "train": {"steps": 300, "record_every": 1, "observables": ["loss", "sharpness"], "diverge_factor": 1e12},
    "sweep": {"width": [256, 1024, 4096], "lr": {"linspace": [0.15, 1.8, 45]}, "seed": [0, 1, 2, 3],
              "param": ["ntk"], "optimizer": ["sgd"]},
}
QUICK = {
    "train": {"steps": 200},
    "sweep": {"width": [128, 512, 2048], "lr": {"linspace": [0.15, 1.8, 23]}, "seed": [0, 1]},
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
        bad = diverged | ~np.isfinite(loss[..., -1]) | ~(loss[..., -1] < loss[..., 0])
        rose = np.nanmax(loss, axis=-1) > PEAK_FACTOR * loss[..., 0]
    return np.where(bad, 2, np.where(rose, 1, 0))


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


def _squeezed(da):
    return da.squeeze([d for d in ("optimizer", "param", "init_scale", "weight_decay", "momentum") if d in da.dims])


def analyse(ds, spec, out):
    loss = _squeezed(ds["loss"]).transpose("width", "lr", "seed", "step").values
    sharp = _squeezed(ds["sharpness"]).transpose("width", "lr", "seed", "step").values
    diverged = _squeezed(ds["diverged_at"]).transpose("width", "lr", "seed").values >= 0
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
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": _report(rows)}


def _report(rows):
    lines = ["The uv model `f = v.u x / sqrt(n)` (NTK parametrization), full-batch GD on one sample. "
             "`lambda0` is each member's NTK eigenvalue at initialisation, `(|u|^2 + |v|^2) x^2 / n`, from its own "
             "initial weights. Phases from the loss trajectory: divergent (diverged, or final loss not below the "
             f"initial one), catapult (the loss rose above {PEAK_FACTOR:g}x its initial value, then converged), "
             "lazy (otherwise). Measured boundaries: midpoint of the gap between neighbouring phases in "
             "`lr * lambda0` over all learning rates and seeds of a width; CI: the gap.", "",
             "The deep-ReLU boundary (about 12 in `lr * lambda0`, Lewkowycz et al. 2020) is not measured here.", "",
             "| width | lambda0 (mean over seeds) | std | members in the predicted phase |", "|---|---|---|---|"]
    lines += [f"| {n} | {m:.4f} | {s:.4f} | {100 * a:.0f}% |" for n, m, s, a in rows]
    return "\n".join(lines)


def _plot_phases(x, phase, loss, sharp, ds, out):
    """Phase diagram (lr*lambda0 vs width), peak loss and final lr*sharpness against lr*lambda0."""
    widths, lrs = ds["width"].values, ds["lr"].values
    colors = width_colors(len(widths))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    markers = {0: ("o", "lazy"), 1: ("s", "catapult"), 2: ("x", "divergent")}
    for i, n in enumerate(widths):
        for p, (m, label) in markers.items():
            sel = phase[i] == p
            axes[0].scatter(x[i][sel], np.full(sel.sum(), n), marker=m, color=f"C{p}", s=18,
                            label=label if i == 0 else None)
        with np.errstate(invalid="ignore", divide="ignore"):
            peak = np.nanmax(loss[i], axis=-1) / loss[i][..., 0]
        axes[1].scatter(x[i].ravel(), peak.ravel(), s=8, color=colors[i], label=f"n={n}")
        final = lrs[:, None] * sharp[i][..., -1]
        axes[2].scatter(x[i].ravel(), final.ravel(), s=8, color=colors[i], label=f"n={n}")
    for ax in axes:
        for b in (2, 4):
            ax.axvline(b, color="k", ls="--", lw=1)
        ax.set(xlabel="lr * lambda0 (NTK eigenvalue at init)")
    axes[0].set(yscale="log", ylabel="width", title="phase of every member; dashed: theory boundaries 2 and 4")
    axes[0].legend(fontsize=7)
    axes[1].set(yscale="log", ylabel="peak loss / initial loss", title="catapult: the loss rises by O(n)")
    axes[1].legend(fontsize=7)
    grid = np.linspace(0, 4, 50)
    axes[2].plot(grid, grid, color="0.5", lw=1, label="lazy: unchanged kernel")
    axes[2].axhline(2, color="0.5", ls=":", lw=1)
    axes[2].set(ylim=(0, 4.5), ylabel="lr * final sharpness", title="final sharpness: below 2/lr after a catapult")
    axes[2].legend(fontsize=7)
    return save(fig, out / "phase_diagram.png")


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


EXPERIMENT = register(Experiment("catapult", "uv model under large learning rates: lazy / catapult / divergent "
                                 "phases against lr*lambda0 = 2 and 4 (Lewkowycz et al. 2020)", DEFAULTS, QUICK,
                                 analyse, validate))
