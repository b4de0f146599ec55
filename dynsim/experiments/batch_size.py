"""``batch-size``: how the learning rate, the curvature and the cost of training depend on the batch size.

Reproduces, on a teacher-student MLP under muP, the claims of McCandlish et al. (2018), "An Empirical Model of
Large-Batch Training", and Granziol, Zohren & Roberts (2022), "Learning Rates as a Function of Batch Size":

1. **Optimal learning rate** against batch size ``B``: ``lr* ~ B`` for SGD and ``lr* ~ sqrt(B)`` for Adam below the
   critical batch size, saturating above it (:func:`dynsim.theory.batch_size.optimal_lr`). ``lr*`` is the rate that
   reaches the target loss in the fewest steps, interpolated in log lr.
2. **Largest stable learning rate** of SGD against ``B``: ``2 / lambda_B``, with ``lambda_B`` the top eigenvalue of the
   mini-batch Hessian (scaled by the per-layer rates), so it grows with ``B`` where ``lambda_B`` falls.
3. **Mini-batch Hessian**: ``lambda_B`` measured at initialisation on the batches the run draws, against
   :func:`dynsim.theory.batch_size.batch_hessian_top` (Granziol et al.'s BBP law: the full Hessian's top eigenvalue
   shifted by noise of variance ``1/B - 1/P``, an outlier at large ``B`` and the noise's edge at small ``B``), and
   the competing law of no batch dependence.
4. **Steps and examples to a target**: ``S = S_min (1 + B_noise q(B))``, ``E = B S`` with ``q = 1/B`` for fresh data
   (:func:`dynsim.theory.batch_size.steps_to_target`; without replacement from ``P`` samples ``q`` carries the
   finite-population factor), fitted per optimizer; the fitted ``B_crit`` of SGD against the simple noise scale
   ``B_simple = tr(D Sigma) / G^T D G`` measured per member along its run (the ``gradient_noise`` observable).

Every check is a :class:`~dynsim.experiments.Check` against a named competing law, with a model error computed at the
swept sizes.

Measured at ``--quick`` size (7 batch sizes 1-256 of a 256-sample training set, 19 rates, 2 seeds, SGD and Adam;
532 members, about 100 s of CPU time): every check agrees. SGD's fitted critical batch is 22 against a measured
noise scale of 24 (log10 ratio -0.03 [-0.14, 0.04]); lr* rises as ``B^0.97`` [0.97, 1.00] below it and as
``B^0.15`` [0.11, 0.24] above it (the saturating law's own slope over those sizes: 0.17); Adam's rises as
``B^0.46`` [0.31, 0.46] below its critical batch of 28. The largest stable SGD rate rises as ``B^0.42``, the slope
of ``2 / lambda_B`` from the Hessian law (0.42), and the mini-batch Hessian lies within ``exp(-0.15)`` of that law
(competitor: ``exp(-1.14)``), between its outlier and bulk-edge branches. At the default size (8 batch sizes, 21
rates, 3 seeds) every check agrees too: critical batch 19 against 22, lr* as ``B^1.00`` (SGD) and ``B^0.45`` (Adam).
Steps to the target are interpolated between records 10 steps apart, which at the largest batches (6-8 steps) is the
coarsest part of the measurement.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from .. import executor as _executor
from .. import fit as _fit
from .. import io as _io
from .. import spec as _spec
from ..executor import Sweep
from ..observables import top_eigenpair
from ..padding import width_mask
from ..plot import log_ticks, save, subplots
from ..theory import batch_size as _theory
from ._contract import Check, Experiment, Requirements
from ._report import squeeze_axes, table
from ._runner import build, spec_error

N_BOOT = 300
PRODUCTS = 24  # Lanczos products per mini-batch Hessian: the Ritz value of K_24 on a matrix of rank <= B (or a few
# hundred effective dimensions at full batch); the residual it reports bounds the error (see hessian_tops).

DEFAULTS = {
    "experiment": "batch-size",
    "model": {"kind": "mlp", "depth": 2, "act": "relu"},
    "task": {"d_in": 8, "n_train": 256, "n_test": 256, "teacher": "mlp", "teacher_width": 16, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 200, "record_every": 10, "observables": ["loss", "gradient_noise"]},
    "sweep": {"width": [64], "batch_size": [1, 2, 4, 8, 16, 32, 64, 256], "lr": {"logspace": [-3.5, 1.5, 21]},
              "seed": [0, 1, 2], "param": ["mup"], "optimizer": ["sgd", "adam"]},
    "analysis": {"target": 0.05, "hessian_batches": 8},
}
QUICK = {
    "train": {"steps": 160, "record_every": 10},
    "sweep": {"batch_size": [1, 2, 4, 8, 16, 64, 256], "lr": {"logspace": [-3.25, 1.25, 19]}, "seed": [0, 1]},
    "analysis": {"hessian_batches": 4},
}


def _loss(ds):
    """Training loss ``[optimizer, batch_size, lr, seed, step]`` (the other axes hold one value)."""
    keep = ("optimizer", "batch_size", "lr", "seed")
    return squeeze_axes(ds["loss"], keep=keep).transpose(*keep, "step")


def steps_to(loss: np.ndarray, steps: np.ndarray, target: float) -> np.ndarray:
    """Steps at which each curve ``loss[..., record]`` reaches ``target`` to stay, interpolated linearly in log loss
    between the two records around that crossing; ``inf`` where it does not end below it (or diverged).

    The last crossing, not the first: a small batch's loss fluctuates, and a dip below the target that training then
    leaves again would credit it with steps it did not take to get there."""
    loss = np.asarray(loss, float)
    below = np.flip(np.logical_and.accumulate(np.flip(np.nan_to_num(loss, nan=np.inf) <= target, -1), -1), -1)
    first = np.argmax(below, axis=-1)
    hit = below.any(axis=-1)
    out = np.full(loss.shape[:-1], np.inf)
    for idx in zip(*np.nonzero(hit)):
        i = first[idx]
        if i == 0:
            out[idx] = float(steps[0])
            continue
        a, b = np.log(loss[idx][i - 1]), np.log(loss[idx][i])
        frac = (a - math.log(target)) / (a - b) if a > b else 1.0
        out[idx] = steps[i - 1] + frac * (steps[i] - steps[i - 1])
    return out


def fit_critical_batch(batch, s, n_train=np.inf):
    """``(S_min, B_noise)`` of :func:`dynsim.theory.batch_size.steps_to_target` by least squares of ``S`` on
    ``q(B)`` (:func:`dynsim.theory.batch_size.noise_fraction`): the law is linear, ``S = S_min + S_min B_noise q``.
    NaN where fewer than two batch sizes reach the target, and ``B_noise`` NaN where the fit has no trade-off
    (``S_min <= 0`` or ``B_noise <= 0``: steps that do not fall with the batch size)."""
    q = _theory.noise_fraction(np.asarray(batch, float), n_train)
    s = np.asarray(s, float)
    ok = np.isfinite(s)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(q[ok], s[ok], 1)
    return float(intercept), float(slope / intercept) if intercept > 0 and slope > 0 else float("nan")


def _batch_top(model, unravel, mask, mult, flat, root, start, x, y):
    """Top eigenvalue of ``D^1/2 H D^1/2`` (``root = D^1/2`` flat) of the loss on ``(x, y)`` at the flat
    parameters ``flat``, by Lanczos from ``start``."""
    grad = jax.grad(lambda f: model.loss(model.apply(unravel(f), x, mult, mask), y))
    matvec = lambda v: root * jax.jvp(grad, (flat,), (root * v,))[1]
    return top_eigenpair(matvec, start, PRODUCTS)[0]


# vmapped over the draws of one batch size (their x, y); model and unravel are static
_batch_tops = jax.jit(jax.vmap(_batch_top, in_axes=(None, None, None, None, None, None, None, 0, 0)),
                      static_argnums=(0, 1))


def hessian_tops(model, task, sweep, sizes, batches: int):
    """Top eigenvalue of ``D^1/2 H_B D^1/2`` at initialisation, ``[seed, size, batch]``, with ``H_B`` the Hessian of
    the loss on the batches of size ``B`` the run draws at steps ``0 .. batches - 1`` (``B = 1``: single samples;
    ``B = n_train``: the full batch, the same at every step) and ``D`` the per-layer rates of SGD under the sweep's
    parametrization. Lanczos with :data:`PRODUCTS` products (:func:`dynsim.observables.top_eigenpair`)."""
    data = task.make()
    width = sweep.width[0]
    sub = Sweep(width=[width], lr=[1.0], seed=sweep.seed, param=sweep.param[:1], optimizer=["sgd"])
    hyper = _executor.member_hyper(sub, np.arange(sub.size))
    mask = width_mask(hyper.width[0], width)
    draws = {size: [task.batch(data, jnp.asarray(t), size) for t in range(batches)] for size in sizes}
    draws = {size: (jnp.stack([d[0] for d in v]), jnp.stack([d[1] for d in v])) for size, v in draws.items()}
    out = np.zeros((len(sweep.seed), len(sizes), batches))
    unravel = None
    for i in range(len(sweep.seed)):
        h = jax.tree.map(lambda a, i=i: a[i], hyper)
        scales = model.scales(h.width, h.abc, h.init_scale)
        params = model.init(jax.random.wrap_key_data(h.key), width, h.width, scales.std)
        flat, unravel_i = ravel_pytree(params)
        unravel = unravel or unravel_i  # one structure for every seed: one compiled program per batch size
        root = ravel_pytree(tuple(jnp.full(p.shape, scales.lr[k]) for k, p in enumerate(params)))[0] ** 0.5
        start = jax.random.normal(jax.random.key(i), flat.shape, flat.dtype)
        start = start / jnp.linalg.norm(start)
        for j, size in enumerate(sizes):
            out[i, j] = np.asarray(_batch_tops(model, unravel, mask, scales.mult, flat, root, start, *draws[size]))
    return out


def execute(spec, out, progress) -> xr.Dataset:
    """The grid run (resumable in ``out/grid``), then the mini-batch Hessians at initialisation."""
    model, task, sweep, opts = build(spec)
    try:
        ds = _executor.run(model, task, sweep, out=out / "grid", progress=progress, spec=spec, **opts)
    except (_io.MetaMismatch, _executor.InputError) as e:
        raise spec_error(e) from None
    sizes = sorted({1, *[b or task.n_train for b in sweep.batch_size], task.n_train})
    tops = hessian_tops(model, task, sweep, sizes, spec.get("analysis", {}).get("hessian_batches", 8))
    ds["hessian_top"] = xr.DataArray(tops, dims=("seed", "hessian_batch", "draw"),
                                     coords={"seed": list(sweep.seed), "hessian_batch": sizes})
    ds["hessian_top"].attrs["description"] = ("top eigenvalue of D^1/2 H_B D^1/2 at init on the batches of size "
                                              "hessian_batch drawn at steps 0.. (D: SGD's per-layer rates)")
    _io.write_results(ds, out / "results.nc")
    return ds


def _boot_rows(n_seeds: int, seed: int = 0):
    """Seed resamples for the bootstrap: ``[N_BOOT, n_seeds]`` indices."""
    return np.random.default_rng(seed).integers(0, n_seeds, (N_BOOT, n_seeds))


def _measure(ds, spec):
    """Everything the checks and figures read: per optimizer, steps to target, lr*, the fitted critical batch
    (point and bootstrap over seeds), the largest stable lr and the noise scale per member."""
    analysis = spec.get("analysis", {})
    target = analysis.get("target", DEFAULTS["analysis"]["target"])
    loss = _loss(ds)  # [O, B, L, S, T]
    steps = ds["step"].values
    lrs = ds["lr"].values
    n_train = spec["task"].get("n_train", 256)
    batch = np.asarray([b or n_train for b in ds["batch_size"].values], float)
    rows = _boot_rows(loss.sizes["seed"])
    m = {"target": target, "batch": batch, "lrs": lrs, "n_train": n_train, "opts": [str(o) for o in
                                                                                       ds["optimizer"].values]}
    curve = loss.values.mean(axis=3)  # seed-mean [O, B, L, T]
    s_curve = steps_to(curve, steps, target)  # [O, B, L]
    boot_curve = loss.values[:, :, :, rows].mean(axis=4)  # [O, B, L, N_BOOT, T]
    s_boot = np.moveaxis(steps_to(boot_curve, steps, target), 3, 0)  # [N_BOOT, O, B, L]
    m["s_curve"] = s_curve
    m["s_min_lr"] = np.min(s_curve, axis=-1)  # steps at the best grid rate [O, B]
    m["s_boot"] = np.min(s_boot, axis=-1)  # [N_BOOT, O, B]
    with np.errstate(divide="ignore"):
        m["lr_star"] = _fit.lr_optimum(lrs, np.log(s_curve))  # [O, B]
        m["lr_star_boot"] = _fit.lr_optimum(lrs, np.log(s_boot))  # [N_BOOT, O, B]
    fits = [fit_critical_batch(batch, m["s_min_lr"][i], n_train) for i in range(len(m["opts"]))]
    m["s_min"], m["b_crit"] = np.array([f[0] for f in fits]), np.array([f[1] for f in fits])
    m["b_crit_boot"] = np.array([[fit_critical_batch(batch, m["s_boot"][r, i], n_train)[1]
                                  for i in range(len(m["opts"]))] for r in range(N_BOOT)])
    # Largest stable rate: the largest grid rate at which no seed diverged and the loss fell below its start.
    div = squeeze_axes(ds["diverged_at"], keep=("optimizer", "batch_size", "lr", "seed")).transpose(
        "optimizer", "batch_size", "lr", "seed").values
    stable = (div == -1).all(axis=-1) & (loss.values[..., -1] < loss.values[..., 0]).all(axis=-1)  # [O, B, L]
    m["lr_max"] = np.where(stable.any(axis=-1), lrs[_last_true(stable)], np.nan)  # [O, B]
    # Simple noise scale of each member (optimizer, batch size, at its best grid rate): the ratio of its two
    # gradient moments, each averaged over its records up to the target (or the run's end).
    if "gradient_noise" in ds:
        gn = squeeze_axes(ds["gradient_noise"], keep=("optimizer", "batch_size", "lr", "seed")).transpose(
            "optimizer", "batch_size", "lr", "seed", "step", "moment").values
        best = np.argmin(s_curve, axis=-1)  # [O, B]
        b_simple = np.full(best.shape + (gn.shape[3],), np.nan)
        for o, b in np.ndindex(*best.shape):
            mom = gn[o, b, best[o, b]]  # [S, T, 2]
            reached = steps <= (s_curve[o, b, best[o, b]] if np.isfinite(s_curve[o, b, best[o, b]]) else steps[-1])
            b_simple[o, b] = np.nanmean(mom[:, reached, 0], axis=1) / np.nanmean(mom[:, reached, 1], axis=1)
        m["b_simple"] = b_simple  # [O, B, S]
    return m


def _last_true(mask):
    """Index of the last True along the last axis (0 where none)."""
    n = mask.shape[-1]
    return np.where(mask.any(axis=-1), n - 1 - np.argmax(mask[..., ::-1], axis=-1), 0)


def _chord(x, y) -> float:
    """Least-squares slope of ``y`` against ``x`` (both 1-D, finite)."""
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def _slope_check(name, logb, point, boot, predicted, competitor, competing, tolerance, reason):
    ok = np.isfinite(point)
    if ok.sum() < 2:
        return Check(name=name, measured=float("nan"), ci=(float("nan"), float("nan")), predicted=predicted,
                     competitor=competitor, competing=competing, tolerance=tolerance,
                     reason=reason + f"; fewer than two points resolved ({int(ok.sum())})")
    line = _fit.slope(logb[ok], np.where(np.isfinite(boot[:, ok]), boot[:, ok], np.nan))
    line_point = _chord(logb[ok], point[ok])
    return Check(name=name, measured=line_point, ci=line.slope_ci, predicted=predicted, competitor=competitor,
                 competing=competing, tolerance=tolerance, reason=reason + f"; {int(ok.sum())} batch sizes")


def hessian_check(ds) -> tuple[Check, dict]:
    """The measured mini-batch ``lambda_B`` against :func:`dynsim.theory.batch_size.batch_hessian_top` (pinned at
    one sample and at the full batch): the mean of ``log(lambda_B / law)`` over the batch sizes between, 0 if the law
    holds, ``mean log(lambda_P / law)`` if the batch size did not matter."""
    tops = ds["hessian_top"].values  # [S, B, draw]
    sizes = ds["hessian_batch"].values.astype(float)
    n_train = sizes.max()
    inner = (sizes > 1) & (sizes < n_train)

    def statistic(mean):
        law = _theory.batch_hessian_top(sizes[inner], mean[-1], mean[0], n_train)
        return float(np.mean(np.log(mean[inner] / law)))

    mean = tops.mean(axis=(0, 2))
    lam_one, lam_full = mean[0], mean[-1]
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(N_BOOT):  # resample seeds and draws together: each replicate a mean over resampled batches
        s = rng.integers(0, tops.shape[0], tops.shape[0])
        d = rng.integers(0, tops.shape[2], tops.shape[2])
        boot.append(statistic(tops[s][:, :, d].mean(axis=(0, 2))))
    law = _theory.batch_hessian_top(sizes[inner], lam_full, lam_one, n_train)
    competing = float(np.mean(np.log(lam_full / law)))
    # Model error: the law switches sharply between its outlier branch (linear in the noise variance) and its
    # bulk-edge branch (a square root) at the BBP transition, the large-matrix limit; a mini-batch Hessian's noise has
    # rank <= B, which rounds the switch. Half the mean log-gap between the two branches at these batch sizes bounds
    # where a rounded switch can put lambda_B.
    gap = np.log(_theory.bulk_edge_hessian_top(sizes[inner], lam_full, lam_one, n_train)
                 / _theory.outlier_hessian_top(sizes[inner], lam_full, lam_one, n_train))
    tolerance = float(0.5 * np.mean(np.abs(gap)))
    check = Check(name="mini-batch Hessian: mean log(lambda_B / BBP law) between one sample and the full batch",
                  measured=statistic(mean), ci=tuple(np.percentile(boot, [2.5, 97.5])), predicted=0.0,
                  competitor="no batch dependence (lambda_B = lambda_P)", competing=competing, tolerance=tolerance,
                  reason=f"lambda_P = {lam_full:.3g}, lambda_1 = {lam_one:.3g} (means over seeds and draws) pin the "
                         f"law; model error: half the mean log-gap ({tolerance:.2f}) between its outlier and bulk-edge "
                         f"branches at the {int(inner.sum())} batch sizes between, where finite batches round its "
                         f"transition; CI: {N_BOOT}-replicate bootstrap over seeds and batches")
    return check, {"sizes": sizes, "mean": mean, "lam_one": lam_one, "lam_full": lam_full,
                   "spread": tops.std(axis=(0, 2))}


def analyse(ds, spec, out):
    m = _measure(ds, spec)
    batch, n_train = m["batch"], m["n_train"]
    logb = np.log(batch)
    grid = float(np.median(np.diff(np.log(m["lrs"]))))
    checks, regimes = [], {}
    h_check, hess = hessian_check(ds)
    for i, opt in enumerate(m["opts"]):
        k = _theory.LR_EXPONENTS[opt]
        other = 0.5 if k == 1 else 1.0
        b_crit = m["b_crit"][i]
        regimes[f"{opt}: critical batch"] = (f"B_crit = {b_crit:.3g} (fit of steps to loss {m['target']:g}: "
                                             f"S_min = {m['s_min'][i]:.3g})")
        below = batch < b_crit if np.isfinite(b_crit) else np.zeros_like(batch, bool)
        lr_star, lr_boot = np.log(m["lr_star"][i]), np.log(m["lr_star_boot"][:, i])
        theory = np.log(_theory.optimal_lr(batch, 1.0, b_crit, opt, n_train)) if np.isfinite(b_crit) else logb * 0
        sel = below & np.isfinite(lr_star)
        chord = _chord(logb[sel], theory[sel]) if sel.sum() >= 2 else k
        checks.append(_slope_check(
            f"lr* vs batch size below B_crit, {opt}", np.where(below, logb, np.nan), np.where(below, lr_star, np.nan),
            np.where(below, lr_boot, np.nan), float(k), f"the {'square-root' if k == 1 else 'linear'} rule ({other:g})",
            other, abs(k - chord), f"model error |{k:g} - {chord:.2f}|: the slope over these batch sizes of "
            f"lr_max / (1 + B_crit q(B))^{k:g} with the fitted B_crit = {b_crit:.3g}; lr* interpolated in log lr on "
            f"the steps to loss {m['target']:g}; CI: {N_BOOT}-replicate bootstrap over seeds"))
        above = batch >= b_crit if np.isfinite(b_crit) else np.zeros_like(batch, bool)
        sel = above & np.isfinite(lr_star)
        chord_above = _chord(logb[sel], theory[sel]) if sel.sum() >= 2 else 0.0
        checks.append(_slope_check(
            f"lr* vs batch size above B_crit, {opt} (saturation)", np.where(above, logb, np.nan),
            np.where(above, lr_star, np.nan), np.where(above, lr_boot, np.nan), 0.0,
            f"{'linear' if k == 1 else 'square-root'} scaling continued ({k:g})", float(k), abs(chord_above),
            f"model error {abs(chord_above):.2f}: the slope over these batch sizes of the saturating law with "
            f"B_crit = {b_crit:.3g}; CI: {N_BOOT}-replicate bootstrap over seeds"))
    # Largest stable SGD rate against 2 / lambda_B: the slopes over the swept batch sizes.
    if "sgd" in m["opts"]:
        i = m["opts"].index("sgd")
        lam = _theory.batch_hessian_top(batch, hess["lam_full"], hess["lam_one"], n_train)
        predicted = _chord(logb, np.log(2.0 / lam))
        lr_max = np.log(m["lr_max"][i])
        span = float(np.ptp(logb[np.isfinite(lr_max)])) if np.isfinite(lr_max).sum() >= 2 else 1.0
        point = lr_max
        checks.append(_slope_check(
            "largest stable lr vs batch size, sgd", logb, point, point[None, :].repeat(2, 0), predicted,
            "no batch dependence (0)", 0.0, 2 * grid / span,
            f"predicted: the slope over these batch sizes of 2 / lambda_B from the mini-batch Hessian law; model "
            f"error: the largest stable rate is a grid value, within one grid step ({grid:.2f} in log lr) at each "
            f"end of the {span:.2f} log-range of B; no CI (one grid value per batch size)"))
        if "b_simple" in m:
            b_simple = m["b_simple"][i]  # [B, S]
            measured_noise = float(np.nanmedian(b_simple))
            ratio = m["b_crit"][i] / measured_noise
            boot = np.log10(m["b_crit_boot"][:, i] / measured_noise)
            ci = _fit.percentile_ci(boot)
            spread = float(np.nanmax(b_simple) / np.nanmin(b_simple))
            checks.append(Check(
                name="critical batch (fit of S = S_min(1 + B_noise/B)) / measured noise scale, sgd, log10",
                measured=float(np.log10(ratio)), ci=ci, predicted=0.0,
                competitor="steps fall as 1/B up to the full batch (B_crit = n_train)",
                competing=float(np.log10(n_train / measured_noise)), tolerance=0.5 * math.log10(spread),
                reason=f"measured B_simple = {measured_noise:.3g}: median over members (each batch size at its best "
                       f"rate, each seed) of tr(D Sigma) / G^T D G averaged over the records up to the target; model "
                       f"error: half the log10-range of those values ({spread:.2g}x), since the law's B_noise is one "
                       f"number for a run along which it moves; CI: {N_BOOT}-replicate bootstrap over seeds of the "
                       "fit"))
    checks.append(h_check)
    figures = [_plot_lr(m, hess, out), _plot_hessian(hess, n_train, out), _plot_cost(m, out)]
    rows = []
    for j, b in enumerate(batch):
        rows.append([int(b)] + [v for i in range(len(m["opts"])) for v in (m["s_min_lr"][i, j], m["lr_star"][i, j],
                                                                           m["lr_max"][i, j])]
                    + ([float(np.nanmedian(m["b_simple"][0, j]))] if "b_simple" in m else []))
    header = ["B"] + [f"{h} {o}" for o in m["opts"] for h in ("steps", "lr*", "lr_max")] + (
        ["B_simple (first optimizer)"] if "b_simple" in m else [])
    report = (f"Steps to the target loss {m['target']:g} per batch size at its best grid rate; lr* interpolated in "
              "log lr; lr_max the largest grid rate that neither diverged nor ended above its start (every seed).\n\n"
              + table(header, rows))
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def _plot_lr(m, hess, out):
    fig, axes = subplots(1, len(m["opts"]), figsize=(5.2 * len(m["opts"]), 4.0), squeeze=False)
    b = m["batch"]
    fine = np.geomspace(b.min(), b.max(), 100)
    for i, opt in enumerate(m["opts"]):
        ax = axes[0, i]
        lo, hi = np.nanpercentile(m["lr_star_boot"][:, i], [2.5, 97.5], axis=0)
        ax.errorbar(b, m["lr_star"][i], yerr=np.where(np.isfinite([m["lr_star"][i] - lo, hi - m["lr_star"][i]]),
                                                      np.abs([m["lr_star"][i] - lo, hi - m["lr_star"][i]]), 0),
                    fmt="o", label="lr* (fewest steps to target)")
        ax.plot(b, m["lr_max"][i], "s", mfc="none", label="largest stable lr")
        if np.isfinite(m["b_crit"][i]):
            top = np.nanmax(m["lr_star"][i])
            ax.plot(fine, _theory.optimal_lr(fine, top, m["b_crit"][i], opt, m["n_train"]) /
                    _theory.optimal_lr(b.max(), 1.0, m["b_crit"][i], opt, m["n_train"]), "-", lw=1,
                    label=f"theory: B^{_theory.LR_EXPONENTS[opt]:g} below B_crit = {m['b_crit'][i]:.3g}")
            ax.axvline(m["b_crit"][i], color="0.6", ls=":", lw=1)
        if opt == "sgd":
            lam = _theory.batch_hessian_top(fine, hess["lam_full"], hess["lam_one"], m["n_train"])
            ax.plot(fine, 2.0 / lam, "--", lw=1, label="2 / lambda_B (Hessian law)")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="learning rate", title=opt)
        log_ticks(ax, b)
        ax.legend(fontsize=7)
    return save(fig, out / "lr_vs_batch.png")


def _plot_hessian(hess, n_train, out):
    fig, axes = subplots(1, 1, figsize=(5.2, 4.0), squeeze=False)
    ax = axes[0, 0]
    sizes = hess["sizes"]
    fine = np.geomspace(1, n_train, 200)
    ax.errorbar(sizes, hess["mean"], yerr=hess["spread"], fmt="o", label="measured (mean, sd over seeds and batches)")
    ax.plot(fine, _theory.batch_hessian_top(fine, hess["lam_full"], hess["lam_one"], n_train), "-",
            label="BBP law (Granziol et al.)")
    ax.plot(fine, _theory.outlier_hessian_top(fine, hess["lam_full"], hess["lam_one"], n_train), ":",
            label="outlier branch: 1/B - 1/P")
    ax.plot(fine, _theory.bulk_edge_hessian_top(fine, hess["lam_full"], hess["lam_one"], n_train), "--",
            label="bulk-edge branch: sqrt(1/B - 1/P)")
    ax.axhline(hess["lam_full"], color="0.6", lw=0.8, ls=":", label="full batch")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="top eigenvalue of D^1/2 H_B D^1/2 at init")
    log_ticks(ax, sizes)
    ax.legend(fontsize=7)
    return save(fig, out / "hessian_vs_batch.png")


def _plot_cost(m, out):
    fig, axes = subplots(1, 3, figsize=(15, 4.0), squeeze=False)
    b = m["batch"]
    fine = np.geomspace(b.min(), b.max(), 100)
    for i, opt in enumerate(m["opts"]):
        s = m["s_min_lr"][i]
        line = axes[0, 0].plot(b, s, "o", label=opt)[0]
        axes[0, 1].plot(b, b * s, "o", color=line.get_color(), label=opt)
        axes[0, 2].plot(b * s, s, "o", color=line.get_color(), label=opt)
        if np.isfinite(m["b_crit"][i]):
            fit = _theory.steps_to_target(fine, m["s_min"][i], m["b_crit"][i], m["n_train"])
            axes[0, 0].plot(fine, fit, "-", color=line.get_color(), lw=1,
                            label=f"S_min (1 + B_noise q(B)), B_noise = {m['b_crit'][i]:.3g}")
            axes[0, 1].plot(fine, fine * fit, "-", color=line.get_color(), lw=1)
            axes[0, 2].plot(fine * fit, fit, "-", color=line.get_color(), lw=1)
    if "b_simple" in m:
        for i, opt in enumerate(m["opts"]):
            axes[0, 0].axvline(float(np.nanmedian(m["b_simple"][i])), ls=":", lw=1, color=f"C{i}",
                               label=f"measured B_simple ({opt})")
    axes[0, 0].set(xscale="log", yscale="log", xlabel="batch size", ylabel=f"steps to loss {m['target']:g}")
    axes[0, 1].set(xscale="log", yscale="log", xlabel="batch size", ylabel="examples to target")
    axes[0, 2].set(xscale="log", yscale="log", xlabel="examples to target", ylabel="steps to target",
                   title="the trade-off (S/S_min - 1)(E/E_min - 1) = 1")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    return save(fig, out / "steps_examples.png")


def validate(spec):
    if spec.get("task", {}).get("n_train", 0) < 2:
        raise _spec.SpecError("spec key 'task.n_train' must be at least 2 for the batch-size analysis, whose batches "
                              "are drawn from a training set.")


_is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
REQUIRES = Requirements(
    observables=("loss",),
    single=("width", "param", "init_scale", "weight_decay", "momentum"),
    at_least=(("batch_size", 4, "the laws are slopes and fits against batch size"),
              ("lr", 5, "each optimum is located between two neighbouring learning rates"),
              ("seed", 2, "the CIs are a bootstrap over seeds")),
    analysis={"target": (lambda v: _is_num(v) and v > 0, "a positive number (a training loss)"),
              "hessian_batches": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                                  "a positive integer")})

EXPERIMENT = Experiment(
    "batch-size", "lr* and the largest stable lr vs batch size (SGD ~B, Adam ~sqrt(B), saturating), the mini-batch "
    "Hessian and the steps/examples trade-off vs the noise scale (McCandlish et al. 2018, 'An Empirical Model of "
    "Large-Batch Training'; Granziol et al. 2022, 'Learning Rates as a Function of Batch Size')",
    DEFAULTS, QUICK, analyse, validate, execute=execute, requires=REQUIRES,
    required=("task.d_in", "task.n_train", "train.steps", "sweep.width", "sweep.lr", "sweep.batch_size"))
