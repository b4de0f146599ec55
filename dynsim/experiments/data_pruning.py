"""``data-pruning``: beating power-law data scaling by pruning (Sorscher et al. 2022, "Beyond neural scaling laws:
beating power law scaling via data pruning", section 2).

A teacher-student perceptron in ``N`` dimensions: Gaussian inputs labelled by ``sign(T . x)``. A probe at angle
``theta`` to the teacher ranks ``P / f`` examples by their margin ``|probe . x|``, and a fraction ``f = 1 - prune``
is kept: the hardest (smallest margins) or the easiest. The student is the maximum-margin perceptron on the ``P``
kept examples (exact, by non-negative least squares on the least-distance problem, Lawson & Hanson 1974 ch. 23), and
its test error is ``arccos(R) / pi`` with ``R`` its cosine to the teacher (exact for Gaussian inputs). The curves run
over the kept-data size ``alpha = P / N`` for every pruning fraction, probe angle and mode, over seeds, at ``N`` and
at ``N / 2``; every member of a seed draws from one pool of examples, so comparisons between settings are paired.
The replica theory (:mod:`dynsim.theory.data_pruning`) gives the same curves at ``N -> infinity``.

Checks (95% bootstrap CIs over seeds, the same resample for every setting; each against the law it rules out):

1. **The unpruned power law.** The log-log slope of the unpruned error over ``alpha >= 1`` against the theory's slope
   over the same sizes (tending to -1, Gardner's ``0.50 / alpha``); competitor: -1/2, the Hebbian student's
   ``alpha^-1/2`` (a student that does not find the maximum margin).
2. **Faster than a power law with a perfect probe.** The slope over ``alpha >= 2`` of the frontier, the best
   seed-mean error over the pruning fractions (keeping hard examples, ``theta = 0``), against the theory's frontier
   slope; competitor: the unpruned theory's slope over the same sizes (a frontier decaying as the power law).
3. **Keep easy examples when data are scarce**: ``log(eps_hard / eps_easy)`` at the smallest ``alpha`` and the
   largest pruning fraction (perfect probe) against theory; competitor: 0 (the mode does not matter).
4. **Keep hard examples when data are abundant**: the same at the largest ``alpha``; competitor: 0.
5. **The gain is lost as the probe's angle grows**: ``log(eps_pruned / eps_unpruned)`` at the largest ``alpha``,
   largest pruning fraction (hard) and largest angle, against theory; competitor: the perfect probe's gain there.

Model error of every check: ``|m(N) - m(N/2)|``, the measurement at ``N / 2`` against that at ``N``. Finite-size
corrections of the max-margin perceptron's error are ``O(1/N)``, so the correction left at ``N`` is about the
change from ``N / 2`` to ``N``.

Measured at quick size (N = 100 and 50, 6 seeds, alpha 0.5-8, pruning 0 / 0.5 / 0.8, theta 0 / 0.4; simulations
about 10 s and theory about 7 s on 2 shared CPU cores): unpruned exponent -0.694 [-0.737, -0.648] against the
theory's -0.711 (competitor -0.5); frontier exponent -1.61 [-1.68, -1.26] against -1.48 (unpruned -0.82);
log(hard / easy) 0.851 [0.783, 0.935] against 0.857 (scarce) and -0.669 [-0.764, -0.586] against -0.735
(abundant); log(pruned / unpruned) at theta = 0.4: -0.63 [-0.80, -0.47] against -0.48 (perfect probe: -1.58). Every
check agrees, each in its CI or within the N/2-to-N change. Default size (alpha 0.5-16, pruning up to 0.9, theta 0 /
0.2 / 0.4, 12 seeds; about 3 min of simulation and 30 s of theory on 2 shared cores): unpruned exponent -0.771
[-0.790, -0.753] against -0.782; frontier -1.38 [-1.48, -1.27] against -1.48 (unpruned -0.87); log(hard / easy)
1.04 [1.00, 1.08] against 1.03 and -1.29 [-1.36, -1.23] against -1.31; at theta = 0.4 -0.07 [-0.19, 0.02] against
-0.20 (perfect probe -2.30): every check agrees.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import scipy.optimize
import xarray as xr

from .. import io as _io
from ..executor import versions
from ..plot import log_ticks, save, subplots
from ..progress import tracker
from ..spec import SpecError
from ..theory import data_pruning as _theory
from ._contract import Check, Experiment, Requirements
from ._report import table

N_BOOT = 1000
LEVEL = 0.95
MODES = _theory.MODES

DEFAULTS = {
    "experiment": "data-pruning",
    "analysis": {"dim": 100, "alpha": [0.5, 1, 2, 4, 8, 16], "prune": [0.0, 0.5, 0.8, 0.9], "theta": [0.0, 0.2, 0.4],
                 "seeds": 12},
}
QUICK = {"analysis": {"alpha": [0.5, 1, 2, 4, 8], "prune": [0.0, 0.5, 0.8], "theta": [0.0, 0.4], "seeds": 6}}


def max_margin(G: np.ndarray) -> np.ndarray:
    """The maximum-margin direction ``w`` (unnormalised) for rows ``G = y x / sqrt(N)``: ``min |w|`` subject to
    ``G w >= 1``, solved exactly as a least-distance problem by non-negative least squares (Lawson & Hanson 1974,
    ch. 23): with ``u >= 0`` minimising ``|E u - e|``, ``E = [G^T; 1^T]``, ``e = (0, ..., 0, 1)``, the solution is
    ``w = -r[:N] / r[N]`` for the residual ``r = E u - e``."""
    p, n = G.shape
    E = np.vstack([G.T, np.ones((1, p))])
    e = np.zeros(n + 1)
    e[-1] = 1.0
    u, _ = scipy.optimize.nnls(E, e, maxiter=50 * max(p, n))
    r = E @ u - e
    return -r[:n] / r[n]


def simulate(dim: int, alphas, prunes, thetas, seeds, progress=None) -> np.ndarray:
    """Test errors ``[seed, mode, prune, theta, alpha]`` of max-margin students on pruned data (module docstring).

    The teacher is the first axis and the probe lies in the plane of the first two, ``cos(theta) e_1 + sin(theta)
    e_2`` (the inputs are isotropic, so this loses nothing). Each seed draws one pool of examples: the first
    ``ceil(P / f)`` of it are ranked and pruned for kept size ``P`` and kept fraction ``f``. Unpruned members
    (``prune = 0``) do not depend on mode or angle and are computed once.
    """
    prunes, thetas, alphas = list(prunes), list(thetas), list(alphas)
    for prune in prunes:
        if not 0 <= prune < 1:
            raise ValueError(f"a pruning fraction must lie in [0, 1), got {prune!r}.")
    for theta in thetas:
        if not 0 <= theta <= math.pi / 2:
            raise ValueError(f"a probe angle must lie in [0, pi/2] radians, got {theta!r}.")
    out = np.full((len(seeds), len(MODES), len(prunes), len(thetas), len(alphas)), np.nan)
    sizes = [int(round(a * dim)) for a in alphas]
    bar = tracker(len(seeds), progress, f"data-pruning N = {dim}", unit="seed")
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng([dim, int(seed)])
        pool = rng.standard_normal((int(math.ceil(max(sizes) / (1 - max(prunes)))), dim))
        for a, size in enumerate(sizes):
            for p, prune in enumerate(prunes):
                x = pool[:int(math.ceil(size / (1 - prune)))]
                for t, theta in enumerate(thetas):
                    order = np.argsort(np.abs(math.cos(theta) * x[:, 0] + math.sin(theta) * x[:, 1]), kind="stable")
                    for m, mode in enumerate(MODES):
                        if prune == 0 and (m, t) != (0, 0):
                            out[i, m, p, t, a] = out[i, 0, p, 0, a]
                            continue
                        kept = x[order[:size] if mode == "hard" else order[len(order) - size:]]
                        w = max_margin(np.sign(kept[:, :1]) * kept / math.sqrt(dim))
                        out[i, m, p, t, a] = math.acos(float(np.clip(w[0] / np.linalg.norm(w), -1, 1))) / math.pi
        bar.update()
    bar.close()
    return out


def theory(alphas, prunes, thetas) -> np.ndarray:
    """The replica theory's errors ``[mode, prune, theta, alpha]`` (:func:`dynsim.theory.data_pruning.test_error`)."""
    out = np.empty((len(MODES), len(prunes), len(thetas), len(alphas)))
    unpruned = _theory.test_error(np.asarray(alphas, dtype=float))
    for m, mode in enumerate(MODES):
        for p, prune in enumerate(prunes):
            for t, theta in enumerate(thetas):
                out[m, p, t] = unpruned if prune == 0 else _theory.test_error(np.asarray(alphas, dtype=float),
                                                                              prune, theta, mode)
    return out


def execute(spec: dict, out, progress=None) -> xr.Dataset:
    """Simulate at ``N`` and ``N / 2`` and evaluate the theory; store ``test_error`` and ``theory_error``."""
    a = spec["analysis"]
    dims = [a["dim"] // 2, a["dim"]]
    seeds = np.arange(a["seeds"])
    t0 = time.perf_counter()
    sims = np.stack([simulate(n, a["alpha"], a["prune"], a["theta"], seeds, progress) for n in dims])
    t_sim = time.perf_counter() - t0
    th = theory(a["alpha"], a["prune"], a["theta"])
    coords = {"dim": dims, "seed": seeds, "mode": list(MODES), "prune": a["prune"], "theta": a["theta"],
              "alpha": a["alpha"]}
    ds = xr.Dataset(
        {"test_error": (("dim", "seed", "mode", "prune", "theta", "alpha"), sims,
                        {"description": "test error arccos(R) / pi of the max-margin student on the kept examples"}),
         "theory_error": (("mode", "prune", "theta", "alpha"), th,
                          {"description": "replica theory (N -> infinity), dynsim.theory.data_pruning.test_error"})},
        coords=coords,
        attrs={"spec": json.dumps(spec), "timing": json.dumps({"simulate_s": t_sim,
                                                                "theory_s": time.perf_counter() - t0 - t_sim}),
               **{k: (int(v) if isinstance(v, bool) else v) for k, v in versions().items()}})
    _io.write_results(ds, out / "results.nc")
    return ds


def _slope(x, y):
    """Least-squares slope of ``log y`` on ``log x`` along the last axis (NaN where any ``y`` is not positive)."""
    lx = np.log(np.asarray(x, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        ly = np.log(y)
    lx = lx - lx.mean()
    return (ly * lx).sum(-1) / (lx * lx).sum()


def measurements(err: np.ndarray, ds) -> dict[str, np.ndarray]:
    """The five checked quantities from seed-mean errors ``err [..., mode, prune, theta, alpha]`` (any leading
    axes: bootstrap replicates, sizes). Returns name -> array over the leading axes."""
    alphas = ds["alpha"].values.astype(float)
    prunes, thetas = ds["prune"].values, ds["theta"].values
    p0, pmax = int(np.argmin(prunes)), int(np.argmax(prunes))
    t0, tmax = int(np.argmin(thetas)), int(np.argmax(thetas))
    hard, easy = MODES.index("hard"), MODES.index("easy")
    unpruned = err[..., hard, p0, t0, :]
    upper = alphas >= 1
    frontier_at = alphas >= 2
    frontier = err[..., hard, :, t0, :].min(axis=-2)
    return {
        "unpruned exponent": _slope(alphas[upper], unpruned[..., upper]),
        "frontier exponent": _slope(alphas[frontier_at], frontier[..., frontier_at]),
        "unpruned exponent, frontier range": _slope(alphas[frontier_at], unpruned[..., frontier_at]),
        "scarce": np.log(err[..., hard, pmax, t0, 0] / err[..., easy, pmax, t0, 0]),
        "abundant": np.log(err[..., hard, pmax, t0, -1] / err[..., easy, pmax, t0, -1]),
        "gain at the largest angle": np.log(err[..., hard, pmax, tmax, -1] / unpruned[..., -1]),
        "gain with a perfect probe": np.log(err[..., hard, pmax, t0, -1] / unpruned[..., -1]),
    }


CHECKS = {  # check name -> (measurement, competitor in words, the competitor's measurement or a number)
    "unpruned error exponent": ("unpruned exponent", "a Hebbian student's alpha^-1/2", -0.5),
    "perfect-probe frontier exponent": ("frontier exponent", "the unpruned power law over the same sizes",
                                        "unpruned exponent, frontier range"),
    "log(hard / easy), scarce data": ("scarce", "no difference between the modes (0)", 0.0),
    "log(hard / easy), abundant data": ("abundant", "no difference between the modes (0)", 0.0),
    "log(pruned / unpruned), largest angle": ("gain at the largest angle", "the perfect probe's gain",
                                              "gain with a perfect probe"),
}


def checks(ds, n_boot: int = N_BOOT, seed: int = 0) -> tuple[list[Check], dict]:
    """The five :class:`Check` s and the measurements they come from (module docstring)."""
    err = ds["test_error"].values  # [dim, seed, mode, prune, theta, alpha]
    n_seeds = err.shape[1]
    idx = np.random.default_rng(seed).integers(0, n_seeds, (n_boot, n_seeds))
    at_n = measurements(err[-1].mean(0), ds)
    at_half = measurements(err[0].mean(0), ds)
    boot = measurements(err[-1][idx].mean(1), ds)
    pred = measurements(ds["theory_error"].values, ds)
    dims = ds["dim"].values
    out = []
    for name, (key, competitor, competing) in CHECKS.items():
        lo, hi = np.nanpercentile(boot[key], [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        value = float(pred[competing]) if isinstance(competing, str) else competing
        tol = float(abs(at_n[key] - at_half[key]))
        out.append(Check(name=name, measured=float(at_n[key]), ci=(float(lo), float(hi)), predicted=float(pred[key]),
                         competitor=competitor, competing=value, tolerance=tol,
                         reason=f"model error |m(N={dims[-1]}) - m(N={dims[0]})| = {tol:.3g}, the finite-size change "
                                f"from N/2 to N (corrections are O(1/N)); CI: {n_boot}-replicate bootstrap over "
                                f"{n_seeds} seeds; prediction: replica theory at N -> infinity"))
    return out, {"N": at_n, "N/2": at_half, "theory": pred}


def analyse(ds, spec, out):
    result, values = checks(ds)
    figures = [_plot_power_law(ds, out), _plot_frontier(ds, out), _plot_modes(ds, out), _plot_angle(ds, out)]
    regimes = {}
    best = values["N"]
    regimes["unpruned"] = f"power law: error ~ alpha^{best['unpruned exponent']:.2f} over alpha >= 1"
    regimes["perfect probe"] = (f"frontier exponent {best['frontier exponent']:.2f} over alpha >= 2, against the "
                                f"unpruned {best['unpruned exponent, frontier range']:.2f}")
    regimes["modes"] = (f"scarce data: hard / easy = {math.exp(best['scarce']):.2f}; abundant data: hard / easy = "
                        f"{math.exp(best['abundant']):.2f}")
    perfect, angled = (math.exp(best[k]) for k in ("gain with a perfect probe", "gain at the largest angle"))
    regimes["probe angle"] = (f"pruned / unpruned at the largest alpha: {perfect:.2f} with a perfect probe, "
                              f"{angled:.2f} at theta = {float(ds['theta'].values.max()):.3g}")
    err = ds["test_error"].isel(dim=-1).mean("seed")
    rows = []
    for mode in MODES:
        for prune in ds["prune"].values:
            for theta in ds["theta"].values:
                if prune == 0 and (mode != MODES[0] or theta != ds["theta"].values.min()):
                    continue
                sim = err.sel(mode=mode, prune=prune, theta=theta).values
                th = ds["theory_error"].sel(mode=mode, prune=prune, theta=theta).values
                rows.append([mode if prune else "-", f"{prune:g}", f"{theta:g}" if prune else "-"]
                            + [f"{s:.3g} ({t:.3g})" for s, t in zip(sim, th)])
    report = (f"Seed-mean test error at N = {int(ds['dim'].values[-1])} (replica theory in brackets), against the kept "
              "size alpha = P / N.\n\n"
              + table(["mode", "prune", "theta"] + [f"alpha {a:g}" for a in ds["alpha"].values], rows))
    return {"checks": result, "regimes": regimes, "figures": figures, "report": report}


def _sim_points(ax, ds, sel, color, label, dim=-1):
    e = ds["test_error"].isel(dim=dim).sel(sel)
    mean, sem = e.mean("seed").values, e.std("seed").values / math.sqrt(e.sizes["seed"])
    ax.errorbar(ds["alpha"].values, mean, yerr=2 * sem, fmt="o", ms=4, capsize=2, color=color, label=label)


def _plot_power_law(ds, out):
    fig, ax = subplots(figsize=(5, 4))
    alphas = ds["alpha"].values
    sel = {"mode": MODES[0], "prune": 0.0, "theta": float(ds["theta"].values.min())}
    for d, color in zip(range(ds.sizes["dim"]), ("0.6", "C0")):
        _sim_points(ax, ds, sel, color, f"simulation, N = {int(ds['dim'].values[d])}", d)
    ax.plot(alphas, ds["theory_error"].sel(sel).values, "-", color="C0", label="replica theory")
    ax.plot(alphas, 0.5 / alphas, ":", color="k", label="0.50 / alpha (asymptote)")
    ax.plot(alphas, ds["theory_error"].sel(sel).values[0] * (alphas / alphas[0]) ** -0.5, "--", color="C3",
            label="alpha^-1/2 (Hebbian; competitor)")
    ax.set(yscale="log", xlabel="kept examples per dimension alpha = P / N", ylabel="test error",
           title="unpruned: a power law")
    log_ticks(ax, alphas)
    ax.legend(fontsize=7)
    return save(fig, out / "power_law.png")


def _plot_frontier(ds, out):
    fig, ax = subplots(figsize=(5.5, 4))
    alphas = ds["alpha"].values
    theta0 = float(ds["theta"].values.min())
    for k, prune in enumerate(ds["prune"].values):
        sel = {"mode": "hard", "prune": prune, "theta": theta0}
        _sim_points(ax, ds, sel, f"C{k}", f"keep hardest {1 - prune:.0%}")
        ax.plot(alphas, ds["theory_error"].sel(sel).values, "-", color=f"C{k}", lw=1)
    front = ds["theory_error"].sel(mode="hard", theta=theta0).min("prune").values
    ax.plot(alphas, front, "k--", lw=1.5, label="theory frontier (best pruning)")
    ax.set(yscale="log", xlabel="alpha = P / N (kept)", ylabel="test error",
           title="perfect probe: the frontier beats the power law")
    log_ticks(ax, alphas)
    ax.legend(fontsize=7)
    return save(fig, out / "frontier.png")


def _plot_modes(ds, out):
    fig, ax = subplots(figsize=(5, 4))
    alphas = ds["alpha"].values
    prune, theta0 = float(ds["prune"].values.max()), float(ds["theta"].values.min())
    for k, mode in enumerate(MODES):
        sel = {"mode": mode, "prune": prune, "theta": theta0}
        _sim_points(ax, ds, sel, f"C{k}", f"keep {mode}est {1 - prune:.0%}")
        ax.plot(alphas, ds["theory_error"].sel(sel).values, "-", color=f"C{k}", lw=1)
    sel = {"mode": "hard", "prune": 0.0, "theta": theta0}
    ax.plot(alphas, ds["theory_error"].sel(sel).values, ":", color="k", label="no pruning (theory)")
    ax.set(yscale="log", xlabel="alpha = P / N (kept)", ylabel="test error",
           title="easy examples when scarce, hard when abundant")
    log_ticks(ax, alphas)
    ax.legend(fontsize=7)
    return save(fig, out / "easy_vs_hard.png")


def _plot_angle(ds, out):
    fig, ax = subplots(figsize=(5, 4))
    alphas = ds["alpha"].values
    prune = float(ds["prune"].values.max())
    for k, theta in enumerate(ds["theta"].values):
        sel = {"mode": "hard", "prune": prune, "theta": theta}
        _sim_points(ax, ds, sel, f"C{k}", f"probe angle {theta:g} rad")
        ax.plot(alphas, ds["theory_error"].sel(sel).values, "-", color=f"C{k}", lw=1)
    sel = {"mode": "hard", "prune": 0.0, "theta": float(ds["theta"].values.min())}
    ax.plot(alphas, ds["theory_error"].sel(sel).values, ":", color="k", label="no pruning (theory)")
    ax.set(yscale="log", xlabel="alpha = P / N (kept)", ylabel="test error",
           title=f"hardest {1 - prune:.0%} kept: the gain fades with the angle")
    log_ticks(ax, alphas)
    ax.legend(fontsize=7)
    return save(fig, out / "probe_angle.png")


def _values(check, what):
    def ok(v):
        return isinstance(v, list) and len(v) >= 1 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and check(x) for x in v) and v == sorted(set(v))
    return ok, what


REQUIRES = Requirements(analysis={
    "dim": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 8, "an integer of at least 8"),
    "alpha": (lambda v: _values(lambda x: x > 0, "")[0](v) and len(v) >= 3 and sum(x >= 2 for x in v) >= 2,
              "an increasing list of positive kept sizes P/N with at least 3 values, 2 of them >= 2 (the frontier "
              "exponent is a slope over alpha >= 2)"),
    "prune": _values(lambda x: 0 <= x < 1, "an increasing list of pruning fractions in [0, 1)"),
    "theta": _values(lambda x: 0 <= x <= math.pi / 2, "an increasing list of probe angles in [0, pi/2] radians"),
    "seeds": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
              "an integer of at least 2 (the CIs are a bootstrap over seeds)"),
})


def validate(spec):
    """The ``[analysis]`` keys together (single keys: :data:`REQUIRES`), each failure one sentence."""
    for key in spec:
        if key not in ("experiment", "analysis"):
            raise SpecError(f"spec key {key!r} is not used by data-pruning; its settings live in [analysis].")
    a = spec.get("analysis", {})
    for value in a.get("prune", []):
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise SpecError(f"spec key 'analysis.prune' holds {value!r}; a pruning fraction must lie in [0, 1).")
    for value in a.get("theta", []):
        if not (isinstance(value, (int, float)) and 0 <= value <= math.pi / 2):
            raise SpecError(f"spec key 'analysis.theta' holds {value!r}; a probe angle must lie in [0, pi/2] radians.")
    if a["prune"][0] != 0 or len(a["prune"]) < 2:
        raise SpecError("spec key 'analysis.prune' must start at 0 (the unpruned baseline) and hold a positive "
                        "fraction.")
    if a["theta"][0] != 0 or len(a["theta"]) < 2:
        raise SpecError("spec key 'analysis.theta' must start at 0 (the perfect probe) and hold a positive angle.")


EXPERIMENT = Experiment("data-pruning", "data pruning in the teacher-student perceptron (Sorscher et al. 2022, "
                                        "\"Beyond neural scaling laws\"): test error vs kept data by pruning fraction "
                                        "and probe angle, against the replica theory", DEFAULTS, QUICK, analyse,
                        validate, execute, requires=REQUIRES)
