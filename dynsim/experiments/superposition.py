"""``superposition``: how the loss of a superposition toy model scales with its hidden dimension ``m``.

Liu, Liu & Gore (2025), "Superposition yields robust neural scaling" (arXiv 2505.10465). The model
``x' = ReLU(W^T W x + b)`` (:class:`dynsim.models.Superposition`) reconstructs ``n`` sparse features whose
frequencies fall as ``p_i \\propto i^{-alpha}`` (:class:`dynsim.tasks.SparseFeatures`), trained with AdamW,
linear warmup and cosine decay. The weight decay ``gamma`` selects the regime:

- ``gamma > 0`` (weak superposition): unused directions decay to 0 and about ``m`` features are represented, so the
  loss is what the unrepresented tail leaves, :func:`dynsim.theory.superposition.weak_loss`, ``m^-(alpha - 1)`` for
  ``m << n`` (:func:`~dynsim.theory.superposition.weak_exponent`);
- ``gamma <= 0`` (strong superposition): every direction is pulled to unit norm, all ``n`` features share the ``m``
  dimensions, and for flat frequencies the loss is their interference, proportional to the mean squared overlap of
  the directions, at best the Welch bound ``(n - m) / (m (n - 1))`` of a tight frame
  (:func:`~dynsim.theory.superposition.welch_bound`), ``1/m`` for ``n >> m``
  (:func:`~dynsim.theory.superposition.strong_exponent`). For skewed frequencies Liu et al. find exponents between 1
  and ``2 (alpha - 1)`` (:func:`~dynsim.theory.superposition.strong_exponent_bounds`): a range, not a law, reported
  without a check.

**Where each law applies.** Each ``(alpha, gamma)`` is fitted by ``L = c m^-a`` only over the ``m`` where its
regime's premise holds, read off the measured number ``k`` of represented features (direction norm above 0.5) and
``L0``, the loss of representing nothing (:func:`~dynsim.theory.superposition.weak_loss` at 0 features):

- both: the features are reconstructed at all, ``L <= L0 / 2``. Above it the bias cannot filter the interference
  (strong) or nothing has been learned (weak), and the loss sits near ``L0`` whatever ``m`` is;
- strong: ``k >= 0.9 n``, every feature represented;
- weak: ``m <= k <= 3 m``: the ``m`` most frequent features, the premise of ``weak_loss(m)``, and not many more
  (two per dimension, antipodal pairs, do not interfere while one of them is active; more are strong superposition).

A fit needs ``MIN_POINTS`` such ``m`` spanning a factor ``MIN_SPAN``; with fewer, nothing is measured and the check
is inconclusive. An untrained model (directions at norm 0.1, see below) represents nothing and meets neither
premise.

**Checks.** Each compares the exponent fitted to the losses with its regime's law over the same ``m`` at this ``n``,
against the other regime's law over those ``m``:

- strong, ``alpha <= analysis.strong_alpha_max`` (flat frequencies): predicted, the Welch bound's exponent;
  competitor, ``weak_loss``'s (weak superposition's unrepresented tail);
- weak, ``alpha > 1``: predicted, ``weak_loss``'s exponent; competitor, the Welch bound's (strong superposition's
  interference). At ``alpha = 2`` the two are equal and the check is inconclusive by construction;
- the trained frame, next to each strong check: how far the measured mean squared overlap has come from random
  directions (``m`` x overlap ``= 1``, an untrained frame's, :func:`~dynsim.theory.superposition.random_overlap`)
  toward the Welch bound, ``(1 - m ov) / (1 - m welch)``, averaged over the strong fit's ``m``: predicted 1 (tight
  frame), competitor 0.

Model errors, computed from the run: *finite training*, the change of the checked quantity over the last quarter of
training (from the last record at or before 3/4 of the steps to the end); for the exponents also the *premise*, the
difference between the law's exponent under its premise and under what the model has: ``weak_loss`` at the measured
``k`` against ``weak_loss`` at ``m`` (weak), the measured mean squared overlap's exponent against the Welch bound's
(strong). CIs: residual bootstrap over the fitted ``m`` (seed bootstrap with several seeds) for the exponents,
bootstrap over the ``(seed, m)`` cells for the frame. ``alpha`` is a task axis: one engine run per value, stored in
``DIR/alpha=<value>/`` and combined in ``DIR/results.nc`` over dims ``m, alpha, weight_decay, seed, step`` (plus
the engine's length-1 axes).

Initial scale 0.1 (``sweep.init_scale``). From the usual norm 1, under ``gamma = 1`` every direction at ``m <= 8``
decayed to ``W = 0`` in the first steps (a critical point the model cannot leave: ``W^T W x`` is quadratic in
``W``), while at ``m >= 64`` several times ``m`` features stayed; and an untrained model of norm 1 already has a
loss ``~1/m`` (random directions interfere as ``1/m``), which a strong-superposition exponent check would pass.

Sizes. ``--quick``: ``n = 1000`` features, ``p_active = 1.3``, ``m = 4..128`` (11 values a factor ``sqrt 2``
apart), ``alpha = 0`` and 1.5, ``gamma = -1`` and 1, one seed, 700 steps of batch 128 at a constant rate 0.02,
records every 175 steps: 44 models, the two runs sharing their compiled programs, about 60 CPU-seconds. Measured:

- strong, ``alpha = 0``: ``L / L0`` = 0.98, 0.77, 0.60, 0.42 at ``m`` = 8, 16, 23, 32, so the fit runs over
  ``m = 32..128``, where the local slopes are 1.30, 1.43, 1.18, 0.91: exponent 1.23 [1.05, 1.40] against the Welch
  bound's 1.07 (the tail's 0.07), model error 0.13 (0.07 of training, 0.06 of the frame): agrees;
- the trained frame closed 0.75, 0.71, 0.64, 0.52, 0.28 of the gap from random directions to the Welch bound at
  ``m`` = 32, 45, 64, 90, 128: 0.58 [0.43, 0.71], model error 0.10: **disagrees** with a tight frame, and excludes
  random directions. Twice the steps (two seeds, 1400 steps) close 0.79, 0.72, 0.34 at ``m`` = 32, 64, 128, and
  ``n = 300`` features 0.93 at ``m = 32``: the frames approach the bound slowly, the more slowly the larger ``m``
  and ``n`` (the whole gap is only ``(m - 1) / (n - 1)`` of the interference, so the loss pulls on it weakly);
- weak, ``alpha = 1.5``: ``k`` = 8, 14, 17, 26, 37, 42, 50, 60, 77, 77, 78 at ``m`` = 4..128, about ``2 m`` (antipodal
  pairs) up to ``m = 23``, then capped near 80 by the decay (features rarer than ``p ~ 7e-4`` do not survive
  ``gamma = 1`` in 700 steps), so the fit runs over ``m = 4..64``: exponent 0.50 [0.43, 0.56] against the tail's
  0.56 (``alpha - 1 = 0.5``; the Welch bound's 1.02), model error 0.10 (the tail at the measured ``k`` has 0.46):
  agrees. With ``gamma = 0.3`` the count stays near ``2.5 m`` but the represented features overlap (``m`` x
  overlap above 1 from ``m = 64``) and the loss flattens anyway;
- strong, ``alpha = 1.5`` (reported): local slopes between 0.6 and 1.4 up to ``m = 64``, then 0.3: 1.00
  [0.90, 1.10] over ``m = 4..128``, not a power law at this size.

Left out of the quick sweep: weak superposition at ``alpha = 2`` and 2.5 represents at most 33 and 21 features in
700 steps from norm 1 (14 at ``alpha = 2.5`` from norm 0.1; the rarest of them are seen a few times in training), and
at ``alpha = 2`` the two regimes predict the same exponent; ``alpha = 0.5`` repeats ``alpha = 0``.

The full size (``n = 4096``, ``m`` up to 1024, four ``alpha``, three seeds, 6000 steps of batch 512, ``W``'s rate
``0.02 (8/m)^1/4`` as Liu et al.'s large runs, about 6e15 FLOPs) is meant for an accelerator and has not been run with
these premises; a constant 0.02 fails from ``m = 256`` up.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import fit as _fit
from ..executor import AXES
from ..plot import log_ticks, save, subplots
from ..spec import SpecError
from ..tasks import feature_probabilities
from ..theory import superposition as _theory
from ._contract import Check, Experiment, Requirements
from ._report import ci_errors, squeeze_axes, table

# Premises (see the module docstring): strong superposition represents at least this fraction of the n features;
# weak superposition between m and WEAK_PER_DIM * m of them; both reconstruct, L <= RECONSTRUCTED * L0.
STRONG_FRACTION = 0.9
WEAK_PER_DIM = 3.0
RECONSTRUCTED = 0.5
# A fitted exponent needs this many m where the premise holds (two more than the law's two parameters, so that the
# residual bootstrap has 2 degrees of freedom), spanning at least this factor (a represented count that does not
# grow with m cannot satisfy m <= k <= 3 m over a factor 4).
MIN_POINTS = 4
MIN_SPAN = 4.0
N_BOOT = 1000
# W's learning rate 0.02 (8/m)^1/4, Liu et al.'s rule for their large runs (App. B.1): lr * m^-1/4 with
# model.lr_exponent = 0.25. A constant 0.02 fails from m = 256 up (see dynsim.models.Superposition).
LR = 0.02 * 8**0.25
_KEEP = ("m", "weight_decay", "seed")

DEFAULTS = {
    "experiment": "superposition",
    "model": {"kind": "superposition", "lr_exponent": 0.25},
    "task": {"kind": "sparse_features", "n_features": 4096, "p_active": 1.0, "n_test": 8192, "seed": 0},
    "train": {"steps": 6000, "record_every": 1500, "batch_size": 512, "schedule": "cosine", "warmup_steps": 300,
              "observables": ["loss", "represented_fraction", "mean_sq_overlap", "dims_per_feature"]},
    "sweep": {"width": [8, 16, 32, 64, 128, 256, 512, 1024], "alpha": [0.0, 0.5, 1.5, 2.5],
              "weight_decay": [-1.0, 1.0], "seed": [0, 1, 2], "lr": [LR], "optimizer": ["adamw"], "param": ["sp"],
              "init_scale": [0.1]},
    "analysis": {"strong_alpha_max": 1.0},
}
QUICK = {
    # m <= 128: a constant rate trains as well as the scaled one (within 2% at m = 128). Records every 175 steps: the
    # one at 525 starts the last quarter of training, whose change is the finite-training model error.
    "model": {"lr_exponent": 0.0},
    "task": {"n_features": 1000, "p_active": 1.3, "n_test": 4096},
    "train": {"steps": 700, "record_every": 175, "batch_size": 128, "warmup_steps": 35},
    "sweep": {"width": [4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 128], "alpha": [0.0, 1.5], "seed": [0], "lr": [0.02]},
}


def _record(ds, name, index):
    """``name`` at record ``index`` as ``[alpha, weight_decay, seed, m]`` (the engine's length-1 axes dropped)."""
    da = squeeze_axes(ds[name].isel(step=index), AXES, keep=_KEEP)
    return da.transpose("alpha", "weight_decay", "seed", "m")


def law_exponent(m, values) -> float:
    """Exponent ``a`` of ``c m^-a`` fitted by least squares in log space to a law's ``values`` over the grid ``m``:
    the law's own finite-size exponent over the range a measurement is fitted on (NaN when fewer than two values
    are positive)."""
    m, values = np.asarray(m, float), np.asarray(values, float)
    if np.sum(np.isfinite(values) & (values > 0)) < 2:
        return float("nan")
    return float(_fit.power_law(m, values, n_boot=0).exponent)


def premise(strong: bool, m, k, loss, l0, n: int) -> np.ndarray:
    """Mask of the ``m`` where the regime's law applies: reconstructed (``loss <= RECONSTRUCTED * l0``) and, strong,
    ``k >= STRONG_FRACTION * n`` represented features or, weak, ``m <= k <= WEAK_PER_DIM * m``."""
    m, k, loss = (np.asarray(v, float) for v in (m, k, loss))
    ok = np.isfinite(loss) & (loss <= RECONSTRUCTED * l0) & np.isfinite(k)
    return ok & (k >= STRONG_FRACTION * n) if strong else ok & (k >= m) & (k <= WEAK_PER_DIM * m)


def regime_label(fraction: np.ndarray, m: np.ndarray, n: int) -> str:
    """Label from the represented fraction at each ``m`` (seed-mean): strong, weak or intermediate."""
    k = np.asarray(fraction) * n
    if np.all(k >= STRONG_FRACTION * n):
        return "strong superposition"
    if np.all(k <= WEAK_PER_DIM * np.asarray(m)):
        return "weak superposition"
    return "intermediate"


def welch_fraction(m_ov, m, n: int):
    """How far a frame has come from random directions toward the Welch bound, from its ``m`` x mean squared
    overlap: ``(1 - m ov) / (1 - m welch_bound)``, 0 for random directions (:func:`~dynsim.theory.superposition.
    random_overlap`), 1 for a tight frame, ``(m - 1) / (n - 1)`` the gap between them in ``m ov``."""
    return (1.0 - np.asarray(m_ov, float)) / (1.0 - np.asarray(m, float) * _theory.welch_bound(n, m))


def measure(ds, n: int, p_active: float, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """One row per ``(alpha, gamma)``: the premise mask over ``m``, the fitted exponent with CI over the ``m`` where
    it holds, the laws' exponents over those ``m``, the model errors and the trained frame's Welch fraction."""
    steps = ds["step"].values
    ref = int(np.flatnonzero(steps <= 0.75 * steps[-1])[-1])  # the last quarter of training starts here
    at = lambda name, i: _record(ds, name, i).values  # [alpha, weight_decay, seed, m]
    loss, loss_ref = at("loss", -1), at("loss", ref)
    frac, ov, ov_ref = at("represented_fraction", -1), at("mean_sq_overlap", -1), at("mean_sq_overlap", ref)
    m = ds["m"].values.astype(float)
    rows = []
    for a, alpha in enumerate(ds["alpha"].values):
        probs = feature_probabilities(n, float(alpha), p_active)
        l0 = float(_theory.weak_loss(0, probs))
        for g, gamma in enumerate(ds["weight_decay"].values):
            strong = bool(gamma <= 0)
            y = loss[a, g]  # [seed, m]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an m with every seed NaN stays NaN
                k, mean = np.nanmean(frac[a, g], axis=0) * n, np.nanmean(y, axis=0)
            use = premise(strong, m, k, mean, l0, n)
            mu = m[use]
            enough = use.sum() >= MIN_POINTS and mu.max() / mu.min() >= MIN_SPAN
            grid = mu if enough else m
            row = {"alpha": float(alpha), "gamma": float(gamma), "strong": strong, "m": m, "seeds": y.shape[0],
                   "loss": mean, "k": k, "l0": l0, "use": use, "steps": (int(steps[ref]), int(steps[-1])),
                   "regime": regime_label(k / n, m, n), "fit": None,
                   "tail": law_exponent(grid, _theory.weak_loss(grid.astype(int), probs)),
                   "welch": law_exponent(grid, _theory.welch_bound(n, grid))}
            if enough:
                fit = row["fit"] = _fit.power_law(mu, y[:, use] if y.shape[0] > 1 else y[0, use], n_boot=n_boot,
                                                  seed=seed)
                row["drift"] = abs(fit.exponent - law_exponent(mu, np.nanmean(loss_ref[a, g][:, use], axis=0)))
                if strong:  # the law assumes a tight frame; the measured overlaps give the premise's error
                    row["measured_law"] = law_exponent(mu, np.nanmean(ov[a, g][:, use], axis=0))
                    f = welch_fraction(ov[a, g][:, use] * mu, mu, n)  # [seed, m]
                    f_ref = welch_fraction(ov_ref[a, g][:, use] * mu, mu, n)
                    row["frame"] = _fit.mean_ci(f, n_boot=n_boot, seed=seed)
                    row["frame_m"] = np.nanmean(f, axis=0)
                    row["frame_drift"] = abs(row["frame"][0] - float(np.mean(f_ref))) if np.isfinite(f_ref).all() \
                        else float("nan")
                else:  # the law assumes the m most frequent features; the measured counts give the premise's error
                    row["measured_law"] = law_exponent(mu, _theory.weak_loss(np.round(k[use]).astype(int), probs))
                row["premise_error"] = abs(row["measured_law"] - row["welch" if strong else "tail"])
            rows.append(row)
    return rows


def _span(m) -> str:
    m = np.asarray(m).astype(int)
    return f"m = {m.min()}..{m.max()} ({m.size} values)" if m.size else "no m"


def _checks(row, n: int, strong_alpha_max) -> list[Check]:
    """The checks of one ``(alpha, gamma)`` row of :func:`measure` (none where its regime makes no point
    prediction: strong superposition above ``strong_alpha_max``, weak superposition at ``alpha <= 1``)."""
    alpha, gamma, fit = row["alpha"], row["gamma"], row["fit"]
    label = f"alpha={alpha:g}, gamma={gamma:g}"
    m = row["m"][row["use"]]
    nan, ref, last = float("nan"), *row["steps"]
    if fit is None:
        measured, ci, tolerance = nan, (nan, nan), 0.0
        where = (f"the premise holds at {_span(m)}, fewer than {MIN_POINTS} spanning a factor {MIN_SPAN:g}: nothing "
                 "measured")
        fit_where = where
    else:
        measured, ci, tolerance = fit.exponent, fit.exponent_ci, row["drift"] + row["premise_error"]
        where = f"the premise holds at {_span(m)}"
        fit_where = where + "; CI: " + ("seed bootstrap" if row["seeds"] > 1 else "residual bootstrap over those m")
        training = (f"finite training {row['drift']:.2f} (the exponent's change from step {ref} to {last}, the last "
                    "quarter of training)")
    checks = []
    if row["strong"] and (strong_alpha_max is None or alpha <= strong_alpha_max):
        error = "" if fit is None else (
            f"model error {tolerance:.2f} = {training} + frame {row['premise_error']:.2f} (the law assumes a tight "
            f"frame; the measured mean squared overlap has exponent {row['measured_law']:.2f} over these m); ")
        checks.append(Check(
            name=f"loss exponent, strong superposition (interference of a tight frame), {label}",
            measured=measured, ci=ci, predicted=row["welch"],
            competitor="weak superposition's unrepresented tail (weak_loss)", competing=row["tail"],
            tolerance=tolerance,
            reason=(f"predicted: the Welch bound's exponent over the fitted m at n = {n} (1 for n >> m); {error}"
                    f"{fit_where}.")))
        value, fci, ftol = row.get("frame", (nan, (nan, nan))) + (row.get("frame_drift", 0.0),)
        error = "" if fit is None else (f"model error {ftol:.2f}: finite training, its change from step {ref} to "
                                        f"{last}; CI: bootstrap over the (seed, m) cells; ")
        checks.append(Check(
            name=f"trained frame, fraction of the way from random directions to the Welch bound, {label}",
            measured=value, ci=fci, predicted=1.0, competitor="random directions (an untrained frame)",
            competing=0.0, tolerance=ftol,
            reason=(f"(1 - m x mean squared overlap) / (1 - m x Welch bound), averaged over the strong fit's m; "
                    f"{error}{where}.")))
    elif not row["strong"] and np.isfinite(_theory.weak_exponent(alpha)):
        error = "" if fit is None else (
            f"model error {tolerance:.2f} = {training} + premise {row['premise_error']:.2f} (the law assumes the m "
            f"most frequent features; at the measured represented counts it has exponent {row['measured_law']:.2f} "
            "over these m); ")
        checks.append(Check(
            name=f"loss exponent, weak superposition (unrepresented tail), {label}",
            measured=measured, ci=ci, predicted=row["tail"],
            competitor="strong superposition's interference (Welch bound, ~1/m)", competing=row["welch"],
            tolerance=tolerance,
            reason=(f"predicted: weak_loss's exponent over the fitted m at n = {n} (alpha - 1 = {alpha - 1:g} for "
                    f"m << n); {error}{fit_where}.")))
    return checks


def analyse(ds, spec, out):
    task = spec["task"]
    n, p_active = int(task["n_features"]), float(task.get("p_active", 1.0))
    strong_alpha_max = spec.get("analysis", {}).get("strong_alpha_max", 1.0)
    rows = measure(ds, n, p_active)
    checks, regimes = [], {}
    for row in rows:
        row_checks = _checks(row, n, strong_alpha_max)
        checks += row_checks
        row["checked"] = bool(row_checks)
        label = f"alpha={row['alpha']:g}, gamma={row['gamma']:g}"
        k, fit, m = row["k"], row["fit"], row["m"][row["use"]]
        text = f"{row['regime']} ({np.nanmin(k):.0f} to {np.nanmax(k):.0f} features represented over m)"
        if fit is not None:
            lo, hi = fit.exponent_ci
            text += f"; exponent {fit.exponent:.2f} [{lo:.2f}, {hi:.2f}] over {_span(m)}"
        else:
            text += f"; the {'strong' if row['strong'] else 'weak'} premise holds at {_span(m)}: no fit"
        if row_checks:
            text += "".join(f"; {c.name.removesuffix(', ' + label)}: {c.verdict}" for c in row_checks)
        elif row["strong"]:
            text += ("; reported, not checked (skewed frequencies: Liu et al.'s range [1, 2(alpha - 1)] is not a "
                     "point prediction)")
        else:
            text += "; reported, not checked (alpha <= 1: the unrepresented tail is not a power law of m)"
        regimes[label] = text
    figures = [_plot_loss(rows, n, p_active, out), _plot_exponents(rows, out)]
    return {"checks": checks, "regimes": regimes, "figures": figures,
            "report": _report(rows, n, strong_alpha_max, checks)}


def _report(rows, n, strong_alpha_max, checks) -> str:
    text = (f"Final loss (0.5 x mean over the {n} features and the evaluation set) against the hidden dimension m, "
            "fitted by L = c m^-a over the m where the regime's premise holds (the features reconstructed, L <= "
            f"{RECONSTRUCTED:g} L0 with L0 the loss of representing nothing; strong: at least {STRONG_FRACTION:.0%} "
            f"of the features represented; weak: between m and {WEAK_PER_DIM:g} m of them), with 95% bootstrap CIs. "
            "Each exponent is compared with its regime's law over the same m at this n (weak: the unrepresented "
            "tail, weak_loss; strong: the Welch bound, a tight frame's interference) against the other regime's law; "
            "the model error adds the exponent's change over the last quarter of training and the premise's (the "
            "tail at the measured represented counts, or the measured overlaps' exponent). Strong superposition is "
            f"checked for alpha <= analysis.strong_alpha_max (= {strong_alpha_max}); above it Liu, Liu & Gore (2025, "
            "Fig. 5e) find exponents between 1 and 2(alpha - 1), which is reported, not checked.")
    lines = [[f"{r['alpha']:g}", f"{r['gamma']:g}", int(mj), f"{r['k'][j]:.0f}", float(r["loss"][j] / r["l0"]),
              "yes" if r["use"][j] else ""] for r in rows for j, mj in enumerate(r["m"])]
    text += "\n\n" + table(["alpha", "gamma", "m", "represented k", "L / L0", "in fit"], lines)
    for c in checks:
        if c.name.startswith("trained frame") and c.verdict != "agrees":
            r = next(r for r in rows if c.name.endswith(f"alpha={r['alpha']:g}, gamma={r['gamma']:g}"))
            per_m = ", ".join(f"{f:.2f} (m = {mj:.0f})" for f, mj in zip(r.get("frame_m", []), r["m"][r["use"]]))
            text += (f"\n\nTrained frame, {c.name.split(', ', 1)[1].split(', alpha')[0]} ({c.verdict}"
                     f"{': ' + per_m if per_m else ''}): the frame is "
                     + ("neither a tight frame nor random directions; it has come part of the way" if c.verdict ==
                        "disagrees" and c.ci[0] - c.tolerance > 0 else "not shown to be a tight frame")
                     + ". The whole gap is only (m - 1)/(n - 1) of the interference, so the loss pulls on it "
                     "weakly, and trained frames approach the bound slowly, the more slowly the larger m and n.")
    return text


def _plot_loss(rows, n, p_active, out):
    alphas = sorted({r["alpha"] for r in rows})
    fig, axes = subplots(1, len(alphas), figsize=(4.2 * len(alphas), 3.6), squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        here = [r for r in rows if r["alpha"] == alpha]
        m = here[0]["m"]
        for row in here:
            color = "C3" if row["strong"] else "C0"
            name, mu = f"gamma={row['gamma']:g}", m[row["use"]]
            ax.plot(m, row["loss"], "o", mfc="none", color=color, label=f"{name} measured")
            ax.plot(mu, row["loss"][row["use"]], "o", color=color, label=f"{name}, premise holds")
            if row["fit"] is not None:
                ax.plot(mu, row["fit"].predict(mu), "-", color=color, lw=1, label=f"fit: m^-{row['fit'].exponent:.2f}")
                if row["strong"]:  # the Welch-bound law through the geometric mean of the fitted points
                    law = _theory.welch_bound(n, mu)
                    ax.plot(mu, law * np.exp(np.mean(np.log(row["loss"][row["use"]] / law))), ":", color=color,
                            lw=1, label="theory: Welch bound")
        ax.plot(m, _theory.weak_loss(m.astype(int), feature_probabilities(n, alpha, p_active)), "--", color="C0",
                lw=1, label="theory: unrepresented tail")
        ax.axhline(here[0]["l0"], color="0.6", lw=0.8, label="L0: nothing represented")
        ax.set(yscale="log", xlabel="hidden dimension m", ylabel="final loss", title=f"alpha={alpha:g}")
        log_ticks(ax, m)
        ax.legend(fontsize=6)
    return save(fig, out / "loss_vs_m.png")


def _plot_exponents(rows, out):
    fig, ax = subplots(figsize=(5, 3.8))
    for strong, color, name in ((False, "C0", "gamma > 0 (weak)"), (True, "C3", "gamma <= 0 (strong)")):
        sel = [r for r in rows if r["strong"] == strong and r["fit"] is not None]
        if not sel:
            continue
        x = np.array([r["alpha"] for r in sel]) + (0.02 if strong else -0.02)
        y = np.array([r["fit"].exponent for r in sel])
        ci = np.array([r["fit"].exponent_ci for r in sel])
        ax.errorbar(x, y, yerr=ci_errors(y, ci[:, 0], ci[:, 1]), fmt="o", capsize=3, color=color,
                    label=f"measured, {name}")
        law = [(xi, r["welch"] if strong else r["tail"]) for xi, r in zip(x, sel) if r["checked"]]
        if law:  # the prediction of each check (none for skewed strong superposition)
            ax.plot(*zip(*law), "s", mfc="none", color=color,
                    label=f"{'strong' if strong else 'weak'} law over the fitted m")
    alphas = np.array(sorted({r["alpha"] for r in rows}))
    grid = np.linspace(min(alphas.min(), 1.0), alphas.max() + 0.25, 50)
    ax.plot(grid, _theory.weak_exponent(grid), "--", color="C0", label="weak: alpha - 1 (m << n)")
    ax.plot(grid, _theory.strong_exponent(grid), ":", color="C3", label="strong: 1 (n >> m)")
    skewed = grid > 1.5
    if skewed.any():
        ax.fill_between(grid[skewed], 1.0, _theory.skewed_strong_exponent(grid[skewed]), color="C3", alpha=0.12,
                        label="strong, skewed: 1 to 2(alpha - 1)")
    ax.set(xlabel="frequency exponent alpha", ylabel="loss exponent a (L ~ m^-a)")
    ax.legend(fontsize=7)
    return save(fig, out / "exponent_vs_alpha.png")


def _number_or_null(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v)))


REQUIRES = Requirements(
    observables=("loss", "represented_fraction", "mean_sq_overlap"),
    single=("lr", "optimizer", "param", "init_scale", "momentum"),
    at_least=(("width", MIN_POINTS, "a power-law fit over the m where a regime's premise holds"),),
    analysis={"strong_alpha_max": (_number_or_null, "a number or null (every alpha)")},
)


def validate(spec):
    """What the requirements cannot say as data: the model and task, and a record before the last quarter of
    training (at most half the steps between records)."""
    if spec.get("model", {}).get("kind") != "superposition" or spec.get("task", {}).get("kind") != "sparse_features":
        raise SpecError("spec keys 'model.kind' and 'task.kind' must be 'superposition' and 'sparse_features' for "
                        "the superposition experiment.")
    train = spec.get("train", {})
    if train["steps"] // train.get("record_every", 10) < 2:
        raise SpecError("spec key 'train.record_every' must be at most half of 'train.steps' for the superposition "
                        "analysis (a record before the last quarter of training gives the finite-training model "
                        "error).")


EXPERIMENT = Experiment("superposition", "loss vs hidden dimension m of superposition toy models, weak "
                                 "(gamma > 0) against the unrepresented tail and strong (gamma <= 0) against a tight "
                                 "frame's interference (~1/m), each against the other, and the trained frame against "
                                 "random directions", DEFAULTS, QUICK, analyse, validate,
                                 required=("sweep.alpha",), requires=REQUIRES)
