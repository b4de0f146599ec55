"""``catapult``: lazy / catapult / divergent phases of large learning rates, in the uv model and wide ReLU MLPs.

Lewkowycz et al. (2020), "The large learning rate phase of deep learning: the catapult mechanism": for the uv model
``f = v . u x / sqrt(n)`` (NTK parametrization) trained by full-batch GD with squared loss on one sample, with
``lambda0`` the NTK eigenvalue at initialisation, training is *lazy* for ``lr lambda0 < 2`` (the loss falls
monotonically and the kernel barely moves), *catapults* for ``2 < lr lambda0 < 4`` (the loss first grows by a
factor of order ``n``, which drives the kernel below ``2 / lr``, then training converges in a flatter region) and
*diverges* for ``lr lambda0 > 4`` (:func:`dynsim.theory.stability.uv_phases`).

Learning rates: the sweep's ``lr`` axis is absolute (one compiled program serves every member), and each member's
``lambda0 = (|u|^2 + |v|^2) x^2 / n`` (:func:`~dynsim.theory.stability.uv_ntk_eigenvalue`) and initial output
``f0`` are computed from its own initial weights, re-drawn outside the program with the engine's keys, and stored
(``lambda0[width, seed]``, ``f0[width, seed]``). With one sample and the task's seed 0, ``x = 1.2956``, so
``lambda0`` is close to its infinite-width value ``2 x^2 = 3.357``; the default grid ``lr = 0.15 ... 1.8`` covers
``lr lambda0`` from about 0.5 to 6, and a spec whose grid does not reach below 2 and above 4 at that value is refused
before training.

Phases are read off each member's loss trajectory: *divergent* if the member diverged (its loss became non-finite
or exceeded ``train.diverge_factor`` times its start) or its final loss is not below its initial loss; else
*catapult* if its loss ever rose above ``PEAK_FACTOR`` times its initial loss; else *lazy*.

Boundaries, not quantised by the grid: for each seed, the boundary above a phase is bracketed by its last member
below it and its first member above it along ``lr`` (:func:`bracket`); ``analysis.bisect_rounds`` rounds of training
at each bracket's midpoint (:func:`bisect`; stored as ``extra_*[width, seed, extra]``) halve it each time. A width's
boundary is the mean of its seeds' midpoints in ``lr * lambda0``, and its interval the hull of their brackets, which
holds every seed's boundary. Model error: the boundaries are sharp only as ``n -> inf``. The output and the kernel of
the uv model obey an exact two-dimensional map at finite width (:func:`~dynsim.theory.stability.uv_gd`); run from a
seed's own ``lambda0`` and ``f0`` with the same steps and phase rules it gives that seed's finite-width boundaries
(:func:`map_brackets`), and the check's model error is their largest distance from 2 or 4. The lazy / catapult
boundary moves up by ``sqrt(2 (PEAK_FACTOR - 1)) |f0 - y| / (x sqrt(n))`` (a catapult must grow the loss to twice
its start before the kernel has fallen below ``2 / lr``; 0.03-0.24 at the default widths), the catapult / divergent
one by ``O(1/n)``. Each check names the other boundary as its competitor: 4 for the lazy / catapult boundary (where a
kernel mis-scaled by 2 puts it), 2 for the catapult / divergent one (where a frozen kernel, with no catapult phase,
diverges). The engine's float32 brackets hold the float64 map's boundaries to 1e-4 (10 rounds at quick size).

Measured: quick size (widths 128-2048, 23 lrs, 2 seeds, 4 rounds) lazy / catapult 2.079 [2.028, 2.131], 2.054
[2.036, 2.072], 2.039 [2.014, 2.063] (model errors 0.123, 0.061, 0.051) and catapult / divergent 4.012
[3.985, 4.041], 3.997 [3.979, 4.015], 4.000 [3.986, 4.013] (0.025, 0.008, 0.003). Full size (widths 256, 1024,
4096; 45 lrs, 4 seeds, 5 rounds) lazy / catapult 2.129 [2.005, 2.243], 2.060 [2.032, 2.097], 2.015 [2.004, 2.032]
(0.241, 0.095, 0.031) and catapult / divergent 3.987 [3.958, 4.018], 3.997 [3.990, 4.005], 4.000 [3.995, 4.004]
(0.038, 0.009, 0.001); 97-100% of the grid's members in the phase ``uv_phases`` predicts.

Wide ReLU MLPs (``analysis.mlp_*``; a second engine sweep, stored under the prefix ``mlp_`` in ``results.nc``):
depth-``L`` ReLU networks without biases in NTK parametrization, full-batch GD on a small training set of a linear
teacher. ``lambda0`` of a member is the top eigenvalue of ``K / P`` at init, ``K = J J^T`` the empirical NTK on the
``P`` training inputs (:func:`ntk_lambda0`): the top eigenvalue of the Gauss-Newton part ``J^T J / P`` of the
Hessian of ``0.5 * mean((f - y)^2)``, equal to the loss Hessian's up to the residual term, ``O(n^-1/2)`` at init.
The lr axis is ``linspace(*mlp_lr_lambda0)`` divided by the widest members' mean ``lambda0``; each member's exact
``lr * lambda0`` is measured. Phases (:func:`classify_mlp`): catapult when the loss rises by more than
``RISE_FACTOR`` between two records from above ``ROUNDOFF_FLOOR`` of its start (with many samples the top mode
carries little of the initial loss, so the total loss may catapult without exceeding its start). The lazy /
catapult boundary is bisected and checked against 2 from width ``MLP_CHECK_WIDTH`` on, after a probe of every seed
at ``lr * lambda0 = 2`` that records the sharpness. Its model error (:func:`sharpness_error`) is measured: in the
first steps the kernel of a finite-width network moves and the sharpness of the lazy members at or below 2 falls
from ``S_0`` to ``S_min`` (5-6% at depth 2, width 1024; 12-19% at depth 3), which moves the frozen kernel's edge
``x_det = 1 + RISE_FACTOR^(1 / (2 record_every))`` to ``x_det S_0 / S_min`` in ``lr * lambda0``. Its competitor is
4. The catapult / divergent boundary has no closed form: it is reported (from the grid's brackets) as a measured
figure beside the maximal ``lr lambda0`` of about 12 that Lewkowycz et al. observe for ReLU networks, not checked.

Measured (MLPs): quick size (depth 2, widths 128 and 1024, 24 lrs, 2 seeds, 60 steps) lazy / catapult 2.46
[1.74, 3.10] at width 128 (seeds apart: reported only) and 2.127 [2.083, 2.174] at 1024 (model error 0.135);
catapult / divergent 7.94 [6.65, 9.30] and 5.99 [5.63, 6.35]. Full size (depth 3, widths 128, 512, 1024, 32 lrs,
3 seeds, 80 steps): lazy / catapult 2.25 [1.92, 2.75] and 2.84 [1.75, 3.74] (grid brackets, seeds apart; reported
only) and 2.427 [2.088, 2.790] at 1024 (model error 0.474: the probe of seed 0 at 2 loses 19% of its sharpness; that
seed's own edge, 2.79, lies beyond what this explains, its sharpness falling by 41% there, and the check agrees
through the seeds at 2.09 and 2.41); catapult / divergent 8.94 [7.20, 11.71], 6.96 [5.88, 8.73], 5.91 [5.17, 6.44],
falling with width and below the literature's 12 (within the few steps run, a member still above its initial loss
counts as divergent). Bisected with depth 2, six seeds
(quick settings otherwise), the edge of single seeds lies at 2.10-2.15 at width 1024 and 2.06-2.14 at 4096.

Quick run: 20-27 s wall on 2 CPU cores shared with other jobs (about 20 s of training, 292 members with the
bisection). Full size: 4.4 min wall (253 s of training, 966 members).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import executor as _executor
from .. import io as _io
from .. import param as _param
from .. import spec as _spec
from ..executor import Sweep
from ..models import MLP
from ..padding import width_mask
from ..plot import log_ticks, save, subplots, width_colors
from ..tasks import TeacherStudent
from ..theory.stability import PHASES, uv_gd, uv_ntk_eigenvalue, uv_phases
from ._contract import Check, Experiment, Requirements
from ._report import ci_errors, squeeze_axes, table
from ._runner import build, spec_error

PEAK_FACTOR = 2.0  # a loss that doubles before converging has catapulted; lazy GD on one sample never rises
# MLP members: a rise of the loss between two records by more than this factor marks a catapult. Below lr*lambda0 = 2
# every mode of the linearised dynamics contracts, so lazy GD never rises; above it the top mode grows by
# (lr lambda0 - 1)^2 per step, a factor of at least 1.2 over two steps from lr lambda0 = 2.05. 5% leaves room for
# float32 round-off of a loss already ~1e-8 of its start.
RISE_FACTOR = 1.05
# ... counted only while the loss is above this fraction of its start: float32 residuals carry round-off of ~1e-7 of
# the targets, ~1e-14 of the loss, and a member that has converged to that floor wobbles (+14% at 1e-13 of its start
# measured at depth 3, width 1024, lr*lambda0 = 1.5). A catapult rises from where the top mode overtakes the others,
# above its initial share of the loss (1e-4 to 0.4 measured), far above this floor.
ROUNDOFF_FLOOR = 1e-9
# The MLP's lazy / catapult boundary is checked (and bisected) from this width on. Below it the edges of single seeds
# scatter from 2.06 to 3.21 (width 128, depth 2, six seeds bisected): the kernel's O(n^-1/2) movement in the first
# steps, which differs from seed to seed, is then comparable to the gap between 2 and 4 (reported, not checked).
MLP_CHECK_WIDTH = 1024
LITERATURE_RELU_MAX = 12.0  # maximal lr*lambda0 Lewkowycz et al. (2020) observe for ReLU networks
# The uv model's boundaries: (phase index below the boundary, lr*lambda0 predicted, name, competitor, its value).
UV_EDGES = ((0, 2.0, "lazy / catapult", "the catapult / divergent boundary", 4.0),
            (1, 4.0, "catapult / divergent", "a frozen kernel's divergence edge (no catapult phase)", 2.0))
MAP_STEP = 0.005  # lr*lambda0 spacing of the scan for the exact dynamics' first phase change, then bisected
MAP_BISECT = 40  # bisection steps on the exact dynamics: 2^-40 of MAP_STEP, far below any measured resolution

DEFAULTS = {
    "experiment": "catapult",
    "model": {"kind": "uv"},
    "task": {"d_in": 1, "n_train": 1, "n_test": 1, "teacher": "linear", "noise": 0.0, "seed": 0},
    "train": {"steps": 300, "record_every": 1, "observables": ["loss", "sharpness"], "diverge_factor": 1e12},
    "sweep": {"width": [256, 1024, 4096], "lr": {"linspace": [0.15, 1.8, 45]}, "seed": [0, 1, 2, 3],
              "param": ["ntk"], "optimizer": ["sgd"]},
    # The ReLU MLP sweep: its lr axis is lr * lambda0 = linspace(*mlp_lr_lambda0) over the mean lambda0 of the widest
    # member's seeds (each member's exact lr * lambda0 is measured, not assumed). bisect_rounds: extra trainings that
    # halve each seed's bracket of a boundary in lr, after the grid.
    "analysis": {"mlp_depth": 3, "mlp_width": [128, 512, 1024], "mlp_seed": [0, 1, 2],
                 "mlp_lr_lambda0": [0.5, 16.0, 32], "mlp_steps": 80, "mlp_record_every": 2, "mlp_d_in": 8,
                 "mlp_n_train": 16, "bisect_rounds": 5},
}
QUICK = {
    "train": {"steps": 200},
    "sweep": {"width": [128, 512, 2048], "lr": {"linspace": [0.15, 1.8, 23]}, "seed": [0, 1]},
    "analysis": {"mlp_depth": 2, "mlp_width": [128, 1024], "mlp_seed": [0, 1], "mlp_lr_lambda0": [0.5, 12.0, 24],
                 "mlp_steps": 60, "bisect_rounds": 4},
}


def initial_state(spec, widths, seeds) -> tuple[np.ndarray, np.ndarray]:
    """NTK eigenvalue ``lambda0`` and output ``f0`` at initialisation of the uv members, each ``[width, seed]``.

    The weights are re-drawn outside the training program with the engine's keys (a member's init does not depend
    on its padding): ``lambda0 = (|u|^2 + |v|^2) x^2 / n`` (:func:`~dynsim.theory.stability.uv_ntk_eigenvalue`),
    ``f0 = v . u x / sqrt(n)``.
    """
    model, task, _, _ = build(spec)
    data = task.make()
    x = float(np.asarray(data.x_train)[0, 0])
    table_ = _param.get("ntk").table("sgd")
    lam0 = np.empty((len(widths), len(seeds)))
    f0 = np.empty_like(lam0)
    for i, n in enumerate(widths):
        scales = model.scales(int(n), table_, 1.0)
        mask = width_mask(int(n), int(n))
        for j, s in enumerate(seeds):
            params = model.init(jax.random.key(int(s)), int(n), int(n), scales.std)
            lam0[i, j] = uv_ntk_eigenvalue(np.asarray(params[0])[:, 0], np.asarray(params[1])[0], x)
            f0[i, j] = float(model.apply(params, data.x_train, scales.mult, mask)[0, 0])
    return lam0, f0


def classify(loss: np.ndarray, diverged: np.ndarray) -> np.ndarray:
    """Phase index (0 lazy, 1 catapult, 2 divergent) from loss trajectories ``[..., step]``."""
    with np.errstate(invalid="ignore"):
        rose = np.max(np.where(np.isnan(loss), -np.inf, loss), axis=-1) > PEAK_FACTOR * loss[..., 0]
    return np.where(_divergent(loss, diverged), 2, np.where(rose, 1, 0))


def _divergent(loss: np.ndarray, diverged: np.ndarray) -> np.ndarray:
    """Diverged, or the final loss is not finite or not below the initial one."""
    with np.errstate(invalid="ignore"):
        return diverged | ~np.isfinite(loss[..., -1]) | ~(loss[..., -1] < loss[..., 0])


def rose(loss: np.ndarray, factor: float = RISE_FACTOR, floor: float = ROUNDOFF_FLOOR) -> np.ndarray:
    """Whether the loss ever grew by more than ``factor`` from one record to the next, ``loss[..., step]``, from a
    value above ``floor`` times its start (below it the changes are round-off)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = loss[..., 1:] / loss[..., :-1]
        return np.any((ratio > factor) & (loss[..., :-1] > floor * loss[..., :1]), axis=-1)


def classify_mlp(loss: np.ndarray, diverged: np.ndarray, factor: float = RISE_FACTOR) -> np.ndarray:
    """Phase index (0 lazy, 1 catapult, 2 divergent) of MLP members from loss trajectories ``[..., step]``.

    Divergent as in :func:`classify`; catapult if the loss ever :func:`rose` between records. With many samples the
    peak test of :func:`classify` misses catapults: the top kernel mode, which alone grows, starts with a small share
    of the residual, and the kernel flattens before the total loss exceeds its start.
    """
    return np.where(_divergent(loss, diverged), 2, np.where(rose(loss, factor), 1, 0))


def bracket(lr: np.ndarray, phase: np.ndarray, lower: int) -> tuple[float, float]:
    """The first change of phase above ``lower`` along ``lr`` (one member per entry): ``(a, b)`` with ``b`` the
    smallest ``lr`` in a phase above ``lower`` and ``a`` the largest ``lr`` below it (in a phase ``<= lower``).

    ``(nan, nan)`` where no member is above ``lower``, or none lies below the first that is. A member of a lower
    phase above ``b`` (the phases out of order) does not move the bracket: it is counted in the report's share of
    members in their predicted phase.
    """
    lr, phase = np.asarray(lr, float), np.asarray(phase)
    ok = np.isfinite(lr)
    lr, phase = lr[ok], phase[ok]
    upper = lr[phase > lower]
    if upper.size == 0:
        return float("nan"), float("nan")
    b = float(upper.min())
    below = lr[lr < b]
    return (float(below.max()), b) if below.size else (float("nan"), float("nan"))


def boundary(brackets: np.ndarray) -> tuple[float, tuple[float, float]]:
    """One width's boundary from its seeds' brackets ``[seed, 2]`` in ``lr * lambda0``: the mean of their midpoints,
    and the hull of the brackets, which holds every seed's boundary. NaN where no seed has a bracket."""
    ok = np.all(np.isfinite(brackets), axis=-1)
    if not ok.any():
        return float("nan"), (float("nan"), float("nan"))
    b = brackets[ok]
    return float(b.mean()), (float(b[:, 0].min()), float(b[:, 1].max()))


def member_brackets(part: xr.Dataset, lower: int, classify_fn) -> np.ndarray:
    """Each seed's bracket ``[width, seed, 2]`` in ``lr * lambda0`` of the boundary above phase ``lower``, from every
    member of a sweep ``part`` (grid and bisection members, each classified by ``classify_fn``)."""
    lr = part["lr"].values
    loss = part["loss"].transpose("width", "lr", "seed", "step").values
    phase = classify_fn(loss, part["diverged_at"].transpose("width", "lr", "seed").values >= 0)
    lam0 = part["lambda0"].transpose("width", "seed").values
    extra = _extras(part, classify_fn)
    out = np.full(lam0.shape + (2,), np.nan)
    for i in range(lam0.shape[0]):
        for j in range(lam0.shape[1]):
            lrs, phases = lr, phase[i, :, j]
            if extra is not None:
                lrs, phases = np.concatenate([lrs, extra[0][i, j]]), np.concatenate([phases, extra[1][i, j]])
            out[i, j] = np.asarray(bracket(lrs, phases, lower)) * lam0[i, j]
    return out


def _extras(part: xr.Dataset, classify_fn):
    """``(lr, phase)`` of the bisection members ``[width, seed, extra]``, or ``None`` where the part has none."""
    if "extra_lr" not in part:
        return None
    lr = part["extra_lr"].transpose("width", "seed", "extra").values
    loss = part["extra_loss"].transpose("width", "seed", "extra", "step").values
    return lr, classify_fn(loss, part["extra_diverged_at"].transpose("width", "seed", "extra").values >= 0)


def bisect(grid: xr.Dataset, run, *, lowers, rounds: int, classify_fn, widths=None, probe=None,
           observables=("loss",)) -> tuple[xr.Dataset, dict]:
    """Refine each seed's brackets of the boundaries above phases ``lowers`` by training at their midpoints.

    ``grid`` is a trained sweep (``loss``, ``diverged_at``, ``lambda0[width, seed]``). Each round trains, for every
    width in ``widths`` (default all), seed and boundary, one member at the midpoint in ``lr`` of that seed's current
    :func:`bracket` (from all its members so far, classified by ``classify_fn``), and halves the bracket. ``probe``:
    an ``lr * lambda0`` at which every seed is trained first (e.g. the predicted boundary, to measure what happens
    there). ``run(widths, lrs, seeds)`` trains a sweep and returns its dataset; it is called once per width and seed
    and round, so that nothing is trained in vain (after the first round of a width the program is compiled).

    Returns:
      ``(extras, timing)``: ``extra_lr[width, seed, extra]`` (NaN where nothing was trained), and ``extra_<name>``
      ``[width, seed, extra(, step)]`` for the ``observables`` and ``diverged_at``; the engine's summed timing.
    """
    widths_all, seeds = grid["width"].values, grid["seed"].values
    chosen = [i for i, n in enumerate(widths_all) if widths is None or n in widths]
    lam0 = grid["lambda0"].transpose("width", "seed").values
    lr_grid = grid["lr"].values
    phase_grid = classify_fn(grid["loss"].transpose("width", "lr", "seed", "step").values,
                             grid["diverged_at"].transpose("width", "lr", "seed").values >= 0)
    members = {(i, j): (list(lr_grid), list(phase_grid[i, :, j])) for i in chosen for j in range(len(seeds))}
    n_extra = rounds * len(lowers) + (probe is not None)
    n_step = grid.sizes["step"]
    shape = (len(widths_all), len(seeds), n_extra)
    extra = {"lr": np.full(shape, np.nan), "diverged_at": np.full(shape, -1, dtype=np.int64)}
    extra.update({name: np.full(shape + (n_step,), np.nan) for name in observables})
    timing = {}

    def train(targets):
        # one engine run per width and seed: the sweep is a grid, and these members share neither lr nor seed
        for i, j in sorted({(t[0], t[1]) for t in targets}):
            mine = [t for t in targets if (t[0], t[1]) == (i, j)]
            lrs = np.unique([t[3] for t in mine])
            res = run([int(widths_all[i])], lrs.tolist(), [int(seeds[j])])
            for k, v in json.loads(res.attrs.get("timing", "{}")).items():
                timing[k] = timing.get(k, 0) + v
            res = squeeze_axes(res, _FIXED + ("width", "seed"))
            for _, _, slot, lr in mine:
                member = res.isel(lr=int(np.searchsorted(lrs, lr)))
                extra["lr"][i, j, slot] = lr
                extra["diverged_at"][i, j, slot] = int(member["diverged_at"])
                for name in observables:
                    extra[name][i, j, slot] = member[name].values
                phase = classify_fn(member["loss"].values, np.asarray(int(member["diverged_at"]) >= 0))
                members[(i, j)][0].append(lr)
                members[(i, j)][1].append(int(phase))

    if probe is not None:
        train([(i, j, 0, probe / lam0[i, j]) for i in chosen for j in range(len(seeds))])
    for r in range(rounds):
        targets = []
        for i in chosen:
            for j in range(len(seeds)):
                for k, lower in enumerate(lowers):
                    a, b = bracket(*members[(i, j)], lower)
                    if np.isfinite(a):
                        targets.append((i, j, (probe is not None) + r * len(lowers) + k, 0.5 * (a + b)))
        if targets:
            train(targets)
    dims = ("width", "seed", "extra")
    data = {f"extra_{name}": (dims + (("step",) if name in observables else ()), v) for name, v in extra.items()}
    coords = {"width": widths_all, "seed": seeds, "step": grid["step"].values}
    return xr.Dataset(data, coords=coords), timing


def map_brackets(part: xr.Dataset, spec) -> np.ndarray:
    """Each uv member's own boundaries ``[width, seed, 2]`` in ``lr * lambda0`` under the exact finite-width
    dynamics (:func:`~dynsim.theory.stability.uv_gd`) from its ``lambda0`` and ``f0``, with the phase rules of
    :func:`classify`, the spec's steps, records and divergence factor: the first phase change above lazy and above
    catapult along a scan of ``lr * lambda0`` with spacing ``MAP_STEP``, bisected ``MAP_BISECT`` times."""
    _, task, _, opts = build(spec)
    data = task.make()
    x, y = float(np.asarray(data.x_train)[0, 0]), float(np.asarray(data.y_train)[0, 0])
    lam0 = part["lambda0"].transpose("width", "seed").values[..., None]
    f0 = part["f0"].transpose("width", "seed").values[..., None]
    q = (x**2 / part["width"].values.astype(float))[:, None, None]
    steps, every, factor = int(part["step"].values[-1]), opts["record_every"], opts["diverge_factor"]

    def phase(xs):
        f, _ = uv_gd(xs / lam0, lam0, f0, y, q, steps)
        with np.errstate(over="ignore", invalid="ignore"):
            loss = 0.5 * (f - y) ** 2
            diverged = np.any(~np.isfinite(loss) | (loss > factor * np.maximum(loss[..., :1], 1.0)), axis=-1)
        return classify(loss[..., ::every], diverged)

    scan = np.arange(0.5, 6.0 + MAP_STEP, MAP_STEP)
    phases = phase(np.broadcast_to(scan, lam0.shape[:2] + scan.shape))
    out = np.full(lam0.shape[:2] + (2,), np.nan)
    for e, lower in enumerate((0, 1)):
        above = phases > lower
        first = np.argmax(above, axis=-1)
        found = above.any(axis=-1) & (first > 0)
        lo, hi = scan[np.maximum(first - 1, 0)], scan[first]
        for _ in range(MAP_BISECT):
            mid = 0.5 * (lo + hi)
            up = phase(mid[..., None])[..., 0] > lower
            hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
        out[..., e] = np.where(found, 0.5 * (lo + hi), np.nan)
    return out


def mlp_parts(spec) -> tuple[MLP, TeacherStudent]:
    """The ReLU MLP and its training set from ``analysis.mlp_*`` (one output, linear teacher, no noise)."""
    a = spec["analysis"]
    d_in, n_train = a["mlp_d_in"], a["mlp_n_train"]
    task = TeacherStudent(d_in=d_in, n_train=n_train, n_test=n_train, teacher="linear", noise=0.0,
                          seed=spec["task"].get("seed", 0))
    return MLP(d_in=d_in, depth=a["mlp_depth"], act="relu"), task


def ntk_lambda0(model: MLP, x, width: int, seeds) -> np.ndarray:
    """Top eigenvalue at initialisation of ``K / P`` for each seed, NTK parametrization, ``[seed]``.

    ``K = J J^T`` is the empirical NTK on the ``P`` training inputs ``x`` (``[d, P]``; :mod:`dynsim.observables`), so
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


def detection_edge(record_every: int, factor: float = RISE_FACTOR) -> float:
    """``lr * lambda`` above which a frozen kernel's top mode makes the loss rise by ``factor`` per record:
    ``(lr lambda - 1)^(2 record_every) = factor`` (the mode's loss grows by ``(lr lambda - 1)^2`` a step)."""
    return 1.0 + factor ** (1.0 / (2 * record_every))


def _sweep_runner(model, task, *, steps, record_every, observables, diverge_factor, opts=None):
    """``run(widths, lrs, seeds)`` for :func:`bisect`: plain full-batch GD in NTK parametrization, in memory."""
    opts = {k: v for k, v in (opts or {}).items() if k not in ("steps", "record_every", "observables",
                                                                "diverge_factor")}

    def run(widths, lrs, seeds):
        sweep = Sweep(width=widths, lr=lrs, seed=seeds, param=["ntk"], optimizer=["sgd"])
        return _executor.run(model, task, sweep, steps=steps, record_every=record_every, observables=observables,
                           diverge_factor=diverge_factor, progress=False, **opts)

    return run


def run_mlp(spec, out, progress) -> tuple[xr.Dataset, dict]:
    """Train the ReLU MLP sweep of ``analysis.mlp_*`` by full-batch GD into ``out``; adds ``lambda0[width, seed]``
    and the bisection members of the lazy / catapult boundary at widths from ``MLP_CHECK_WIDTH`` on (with a probe at
    ``lr * lambda0 = 2`` first, and the sharpness recorded).

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
    diverge = spec["train"].get("diverge_factor", 1e12)
    ds = _executor.run(model, task, sweep, steps=a["mlp_steps"], record_every=a["mlp_record_every"],
                     observables=("loss",), diverge_factor=diverge, out=out, progress=progress, spec=spec)
    lam0 = xr.DataArray(lam0, coords={"width": widths, "seed": seeds}, dims=("width", "seed"),
                        attrs={"description": "top eigenvalue of the empirical NTK / P on the training set at init"})
    ds = ds.assign(lambda0=lam0)
    checked = [n for n in widths if n >= MLP_CHECK_WIDTH]
    timing = json.loads(ds.attrs.get("timing", "{}"))
    if checked:
        run = _sweep_runner(model, task, steps=a["mlp_steps"], record_every=a["mlp_record_every"],
                            observables=("loss", "sharpness"), diverge_factor=diverge)
        extras, t = bisect(squeeze_axes(ds, _FIXED), run, lowers=(0,), rounds=a["bisect_rounds"],
                           classify_fn=classify_mlp, widths=checked, probe=2.0, observables=("loss", "sharpness"))
        ds = xr.merge([ds, extras], combine_attrs="override")
        timing = {k: timing.get(k, 0) + t.get(k, 0) for k in set(timing) | set(t)}
    return ds, timing


def execute(spec, out, progress) -> xr.Dataset:
    """Both sweeps: the uv model into ``out/uv``, the ReLU MLPs into ``out/mlp``, each with its bisection members
    (trained in memory); one store ``out/results.nc``.

    The MLP's variables and dims carry the prefix ``mlp_`` in the combined store (its widths and lrs are its own).
    """
    model, task, sweep, opts = build(spec)
    try:
        uv = _executor.run(model, task, sweep, out=out / "uv", progress=progress, spec=spec, **opts)
        timing = json.loads(uv.attrs.get("timing", "{}"))
        lam0, f0 = initial_state(spec, uv["width"].values, uv["seed"].values)
        coords = {"width": uv["width"].values, "seed": uv["seed"].values}
        uv = uv.assign(lambda0=xr.DataArray(lam0, coords=coords, dims=("width", "seed"),
                                            attrs={"description": "NTK eigenvalue at init, (|u|^2 + |v|^2) x^2 / n"}),
                       f0=xr.DataArray(f0, coords=coords, dims=("width", "seed"),
                                       attrs={"description": "output at init"}))
        run = _sweep_runner(model, task, steps=opts["steps"], record_every=opts["record_every"],
                            observables=("loss",), diverge_factor=opts["diverge_factor"], opts=opts)
        extras, t = bisect(squeeze_axes(uv, _FIXED), run, lowers=(0, 1), rounds=spec["analysis"]["bisect_rounds"],
                           classify_fn=classify)
        uv = xr.merge([uv, extras], combine_attrs="override")
        mlp, t_mlp = run_mlp(spec, out / "mlp", progress)
    except (_io.MetaMismatch, _executor.InputError) as e:
        raise spec_error(e) from None
    for part in (t, t_mlp):
        for k, v in part.items():
            timing[k] = timing.get(k, 0) + v
    mlp = mlp.rename({name: f"mlp_{name}" for name in set(mlp.variables) | set(mlp.dims)})
    ds = xr.merge([uv, mlp], combine_attrs="drop_conflicts")
    ds.attrs["timing"] = json.dumps(timing)
    _io.write_results(ds, out / "results.nc")
    return ds


_FIXED = ("optimizer", "param", "init_scale", "weight_decay", "momentum")  # one value each (requirements)


def _uv_part(ds) -> xr.Dataset:
    """The uv sweep of a combined store, length-1 axes squeezed."""
    return squeeze_axes(ds[[n for n in ds.data_vars if not str(n).startswith("mlp_")]], _FIXED)


def mlp_part(ds) -> xr.Dataset:
    """The MLP sweep of a combined store, with its ``mlp_`` prefix removed and length-1 axes squeezed."""
    mlp = ds[[n for n in ds.data_vars if str(n).startswith("mlp_")]]
    return squeeze_axes(mlp.rename({n: str(n)[4:] for n in set(mlp.variables) | set(mlp.dims)}), _FIXED)


def _verdict_words(check: Check) -> str:
    """A check's verdict in a few words for the regimes."""
    if not np.isfinite(check.measured):
        return "no boundary found in the swept range: inconclusive"
    if check.verdict == "agrees":
        return f"agrees with {check.predicted:g}"
    if check.verdict == "inconclusive":
        return f"inconclusive: consistent with {check.predicted:g} and with {check.competing:g}"
    return f"disagrees with {check.predicted:g}"


def analyse(ds, spec, out):
    uv = _uv_part(ds)
    rounds = spec["analysis"]["bisect_rounds"]
    loss = uv["loss"].transpose("width", "lr", "seed", "step").values
    sharp = uv["sharpness"].transpose("width", "lr", "seed", "step").values
    phase = classify(loss, uv["diverged_at"].transpose("width", "lr", "seed").values >= 0)
    lam0 = uv["lambda0"].transpose("width", "seed").values
    x = uv["lr"].values[None, :, None] * lam0[:, None, :]  # lr * lambda0 of every grid member
    theory = map_brackets(uv, spec)  # [width, seed, edge]
    measured = [member_brackets(uv, lower, classify) for lower, *_ in UV_EDGES]
    widths = uv["width"].values
    checks, regimes, rows, marks = [], {}, [], []
    for i, n in enumerate(widths):
        words, row = [], [int(n), float(lam0[i].mean()), float(lam0[i].std())]
        for e, (_, predicted, name, competitor, competing) in enumerate(UV_EDGES):
            mid, ci = boundary(measured[e][i])
            tol = float(np.max(np.abs(theory[i, :, e] - predicted))) if np.isfinite(theory[i, :, e]).all() \
                else float("nan")
            check = Check(name=f"{name} boundary in lr*lambda0, width {n}", measured=mid, ci=ci, predicted=predicted,
                          competitor=competitor, competing=competing, tolerance=tol,
                          reason=f"model error {tol:.3g}: the largest distance from {predicted:g} of the seeds' own "
                          "boundaries under the exact finite-width uv dynamics (stability.uv_gd, from each seed's "
                          "lambda0 and initial output, same steps and phase rules); CI: the hull of the seeds' "
                          f"brackets after {rounds} bisection rounds in lr, which holds every seed's boundary")
            checks.append(check)
            marks.append((i, e, mid, ci))
            words.append(f"{name} boundary {mid:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({_verdict_words(check)})")
            own = theory[i, :, e][np.isfinite(theory[i, :, e])]
            row += [mid, f"[{ci[0]:.3f}, {ci[1]:.3f}]", f"{own.min():.3f}-{own.max():.3f}" if own.size else "n/a"]
        predicted_phase = uv_phases(x[i], 1.0)
        agree = float(np.mean(predicted_phase == np.asarray(PHASES)[phase[i]]))
        regimes[f"width {n}"] = (f"{int((phase[i] == 0).sum())} lazy, {int((phase[i] == 1).sum())} catapult, "
                                 f"{int((phase[i] == 2).sum())} divergent grid members ({100 * agree:.0f}% in the "
                                 "phase uv_phases predicts); " + "; ".join(words))
        rows.append(row + [f"{100 * agree:.0f}%"])
    figures = [_plot_phases(x, phase, loss, sharp, uv, marks, out)]
    mlp = mlp_part(ds)
    mlp_checks, mlp_regimes, mlp_rows = analyse_mlp(mlp, spec)
    figures.append(_plot_mlp(mlp, mlp_rows, out))
    return {"checks": checks + mlp_checks, "regimes": {**regimes, **mlp_regimes}, "figures": figures,
            "report": _report(rows, rounds) + "\n\n" + _report_mlp(mlp_rows, mlp, spec)}


def _mlp_arrays(mlp):
    """``lr * lambda0``, phases and losses ``[width, lr, seed(, step)]`` of the MLP sweep's grid."""
    loss = mlp["loss"].transpose("width", "lr", "seed", "step").values
    diverged = mlp["diverged_at"].transpose("width", "lr", "seed").values >= 0
    x = mlp["lr"].values[None, :, None] * mlp["lambda0"].transpose("width", "seed").values[:, None, :]
    return x, classify_mlp(loss, diverged), loss


def sharpness_error(mlp, record_every: int) -> np.ndarray:
    """Model error ``[width]`` of the MLP's lazy / catapult boundary from the sharpness of its lazy bisection members
    at or below ``lr * lambda0 = 2``: ``x_det S_0 / S_min - 2``, the largest over those members.

    The boundary sits where ``lr`` times the sharpness the top mode meets crosses the frozen-kernel edge ``x_det``
    (:func:`detection_edge`); in the first steps the kernel of a finite-width network moves, and the sharpness falls
    from ``S_0`` (the recorded value at init, ``lambda0`` up to the residual term) to ``S_min``, which moves the
    boundary in ``lr * lambda0`` up by that factor. Members at or below the predicted boundary are lazy whatever the
    drift, so their sharpness measures it without reference to where the boundary was found. NaN at widths without
    such members. A width whose lazy members at or below 2 recorded no sharpness (none was bisected there, or every
    probe at 2 left the lazy phase, which no drift of the sharpness downwards explains) gets the frozen-kernel edge's
    own distance from 2.
    """
    out = np.full(mlp.sizes["width"], np.nan)
    if "extra_sharpness" not in mlp:
        return out
    lam0 = mlp["lambda0"].transpose("width", "seed").values
    x = mlp["extra_lr"].transpose("width", "seed", "extra").values * lam0[..., None]
    sharp = mlp["extra_sharpness"].transpose("width", "seed", "extra", "step").values
    phase = _extras(mlp, classify_mlp)[1]
    x_det = detection_edge(record_every)
    low = np.min(np.where(np.isfinite(sharp), sharp, np.inf), axis=-1)
    use = (phase == 0) & (x <= 2.0 + 1e-9) & np.isfinite(sharp[..., 0]) & np.isfinite(low) & (low > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(use, x_det * sharp[..., 0] / np.where(use, low, 1.0) - 2.0, -np.inf).max(axis=(1, 2))
    bisected = np.isfinite(mlp["extra_lr"].transpose("width", "seed", "extra").values).any(axis=(1, 2))
    return np.where(bisected, np.maximum(shift, x_det - 2.0), np.nan)


def analyse_mlp(mlp, spec):
    """Checks (lazy / catapult boundary against 2 from ``MLP_CHECK_WIDTH`` on), regimes and per-width rows of the
    ReLU MLP sweep."""
    x, phase, _ = _mlp_arrays(mlp)
    a = spec["analysis"]
    tol = sharpness_error(mlp, a["mlp_record_every"])
    lazy_edges, top_edges = member_brackets(mlp, 0, classify_mlp), member_brackets(mlp, 1, classify_mlp)
    checks, regimes, rows = [], {}, []
    for i, n in enumerate(mlp["width"].values):
        lazy, ci_lazy = boundary(lazy_edges[i])
        top, ci_top = boundary(top_edges[i])
        text = (f"{int((phase[i] == 0).sum())} lazy, {int((phase[i] == 1).sum())} catapult, "
                f"{int((phase[i] == 2).sum())} divergent grid members; lazy / catapult boundary at lr*lambda0 = "
                f"{lazy:.2f} [{ci_lazy[0]:.2f}, {ci_lazy[1]:.2f}]")
        if n >= MLP_CHECK_WIDTH:
            check = Check(name=f"ReLU MLP lazy / catapult boundary in lr*lambda0, width {n}", measured=lazy,
                          ci=ci_lazy, predicted=2.0, competitor="the uv model's catapult / divergent boundary",
                          competing=4.0, tolerance=float(tol[i]),
                          reason=f"model error {tol[i]:.3g}: x_det S_0 / S_min - 2 of the lazy members at "
                          "lr*lambda0 <= 2, whose sharpness falls from S_0 to S_min as the kernel moves in the first "
                          f"steps (x_det = {detection_edge(a['mlp_record_every']):.4f}, the frozen-kernel edge at "
                          f"which the loss rises {RISE_FACTOR:g}x per record); CI: the hull of the seeds' brackets "
                          f"after {a['bisect_rounds']} bisection rounds in lr")
            checks.append(check)
            text += f" ({_verdict_words(check)}, model error {tol[i]:.3f})"
        else:
            text += " (reported, not checked)"
        regimes[f"ReLU MLP width {n}"] = (text + f"; catapult / divergent boundary {top:.2f} [{ci_top[0]:.2f}, "
                                          f"{ci_top[1]:.2f}] (the literature's maximum for deep ReLU networks is "
                                          f"about {LITERATURE_RELU_MAX:g})")
        rows.append((int(n), float(mlp["lambda0"].sel(width=n).mean()), float(mlp["lambda0"].sel(width=n).std()),
                     lazy, ci_lazy, float(tol[i]), top, ci_top))
    return checks, regimes, rows


def _report(rows, rounds):
    lines = ["The uv model `f = v.u x / sqrt(n)` (NTK parametrization), full-batch GD on one sample. "
             "`lambda0` is each member's NTK eigenvalue at initialisation, `(|u|^2 + |v|^2) x^2 / n`, from its own "
             "initial weights. Phases from the loss trajectory: divergent (diverged, or final loss not below the "
             f"initial one), catapult (the loss rose above {PEAK_FACTOR:g}x its initial value, then converged), "
             "lazy (otherwise). Each seed's boundary is bracketed by its last member below it and its first above "
             f"it, on the lr grid and then through {rounds} rounds of training at the bracket's midpoint; a width's "
             "boundary is the mean of its seeds' midpoints, its interval the hull of their brackets. The model error "
             "is the largest distance of the seeds' own boundaries from 2 or 4 under the exact finite-width "
             "dynamics of the uv model (`stability.uv_gd`), which the `exact dynamics` columns give.", "",
             table(["width", "lambda0 (mean over seeds)", "std", "lazy / catapult", "interval", "exact dynamics",
                    "catapult / divergent", "interval", "exact dynamics", "grid members in the predicted phase"],
                   rows)]
    return "\n".join(lines)


def _report_mlp(rows, mlp, spec):
    a = spec["analysis"]
    x_det = detection_edge(a["mlp_record_every"])
    lines = ["## ReLU MLPs", "", f"Depth {a['mlp_depth']} ReLU MLPs (NTK parametrization, no biases), full-batch GD "
             f"for {a['mlp_steps']} steps on {a['mlp_n_train']} samples of a linear teacher in {a['mlp_d_in']} "
             "dimensions. `lambda0` is each member's top eigenvalue of `K / P` at initialisation, `K` the empirical "
             "NTK on the training set: the top eigenvalue of the Gauss-Newton part of the loss Hessian, which the "
             "residual term shifts by `O(n^-1/2)`. Phases: divergent (diverged, or final loss not below the "
             f"initial one), catapult (the loss rose by more than {RISE_FACTOR:g}x between two records, every "
             f"{a['mlp_record_every']} steps, then converged), lazy (otherwise). From width {MLP_CHECK_WIDTH} on the "
             f"lazy / catapult boundary is bisected ({a['bisect_rounds']} rounds, after a probe of every seed at "
             "lr*lambda0 = 2, with the sharpness recorded) and checked against 2; its model error is how far the "
             f"sharpness drift of the lazy members at or below 2 moves the frozen-kernel edge {x_det:.4f} "
             "(x_det S_0 / S_min - 2). Elsewhere the boundaries are the grid's brackets.", "",
             table(["width", "lambda0 (mean over seeds)", "std", "lazy / catapult", "interval", "model error",
                    "catapult / divergent", "interval"],
                   [[n, m, s, lz, f"[{cl[0]:.3f}, {cl[1]:.3f}]", tol, tp, f"[{ct[0]:.2f}, {ct[1]:.2f}]"]
                    for n, m, s, lz, cl, tol, tp, ct in rows])]
    lines += ["", "The catapult / divergent boundary is a measured figure, not a check: Lewkowycz et al. (2020) "
              f"report a maximal learning rate of about {LITERATURE_RELU_MAX:g} / lambda0 for deep ReLU networks "
              "(4 / lambda0 in the uv model); no closed form predicts it. Measured here: "
              + ", ".join(f"{tp:.2f} at width {n}" for n, *_, tp, _ in rows) + "."]
    return "\n".join(lines)


def _scatter_phases(ax, x, phase, widths):
    """Every member at (lr * lambda0, width), marked by its phase."""
    markers = {0: ("o", "lazy"), 1: ("s", "catapult"), 2: ("x", "divergent")}
    for i, n in enumerate(widths):
        for p, (m, label) in markers.items():
            sel = phase[i] == p
            ax.scatter(x[i][sel], np.full(sel.sum(), n), marker=m, color=f"C{p}", s=18, label=label if i == 0 else None)
    log_ticks(ax, widths, axis="y")


def _mark_boundaries(ax, widths, marks):
    """Each measured boundary with its interval as a horizontal bar, just above its width's row."""
    for k, (i, _, mid, ci) in enumerate(marks):
        ax.errorbar([mid], [widths[i] * 1.15], xerr=ci_errors([mid], [ci[0]], [ci[1]]), fmt="|", color="k",
                    ms=10, capsize=3, label="measured boundary (interval)" if k == 0 else None)


def _plot_phases(x, phase, loss, sharp, uv, marks, out):
    """Phase diagram (lr*lambda0 vs width), peak loss and final lr*sharpness against lr*lambda0."""
    widths, lrs = uv["width"].values, uv["lr"].values
    colors = width_colors(len(widths))
    fig, axes = subplots(1, 3, figsize=(15, 4.2))
    _scatter_phases(axes[0], x, phase, widths)
    _mark_boundaries(axes[0], widths, marks)
    for i, n in enumerate(widths):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            peak = np.max(np.where(np.isnan(loss[i]), -np.inf, loss[i]), axis=-1) / loss[i][..., 0]
        axes[1].scatter(x[i].ravel(), peak.ravel(), s=8, color=colors[i], label=f"width {n}")
        final = lrs[:, None] * sharp[i][..., -1]
        axes[2].scatter(x[i].ravel(), final.ravel(), s=8, color=colors[i], label=f"width {n}")
    for ax in axes:
        for b in (2, 4):
            ax.axvline(b, color="k", ls="--", lw=1)
        ax.set(xlabel="lr * lambda0 (NTK eigenvalue at init)")
    axes[0].set(ylabel="width", title="phase of every grid member; dashed: theory boundaries 2 and 4")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set(yscale="log", ylabel="peak loss / initial loss", title="catapult: the loss rises by O(n)")
    axes[1].legend(fontsize=7)
    grid = np.linspace(0, 4, 50)
    axes[2].plot(grid, grid, color="0.5", lw=1, label="lazy: unchanged kernel")
    axes[2].axhline(2, color="0.5", ls=":", lw=1)
    axes[2].set(ylim=(0, 4.5), ylabel="lr * final sharpness", title="final sharpness: below 2/lr after a catapult")
    axes[2].legend(fontsize=7)
    return save(fig, out / "phase_diagram.png")


def _plot_mlp(mlp, rows, out):
    """ReLU MLPs: phase of every grid member with the measured boundaries, peak loss and final loss against
    lr*lambda0."""
    x, phase, loss = _mlp_arrays(mlp)
    widths = mlp["width"].values
    colors = width_colors(len(widths))
    fig, axes = subplots(1, 3, figsize=(15, 4.2))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        peak = np.max(np.where(np.isnan(loss), -np.inf, loss), axis=-1) / loss[..., 0]
        final = loss[..., -1] / loss[..., 0]
    _scatter_phases(axes[0], x, phase, widths)
    marks = [(i, e, mid, ci) for i, (_, _, _, lz, cl, _, tp, ct) in enumerate(rows)
             for e, (mid, ci) in enumerate(((lz, cl), (tp, ct)))]
    _mark_boundaries(axes[0], widths, marks)
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


def _int_list(positive: bool):
    ok = _spec.positive_int if positive else _spec.nonnegative_int
    return lambda v: isinstance(v, list) and bool(v) and all(ok(w)[0] for w in v) and len(set(v)) == len(v)


_is_pos_int = lambda v: _spec.positive_int(v)[0]  # noqa: E731
ANALYSIS = {
    "mlp_depth": (lambda v: _is_pos_int(v) and v >= 2, "an integer >= 2"),
    "mlp_width": (_int_list(True), "a list of distinct positive integers"),
    "mlp_seed": (_int_list(False), "a list of distinct non-negative integers"),
    "mlp_lr_lambda0": (lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(g, (int, float))
                                                                              and not isinstance(g, bool) for g in v)
                       and 0 < v[0] < 2.0 < v[1] and _is_pos_int(v[2]) and v[2] >= 2,
                       "[start, stop, count] with 0 < start < 2 < stop (lazy members below the checked boundary "
                       "and catapulting ones above it) and an integer count >= 2"),
    "mlp_steps": (_is_pos_int, "a positive integer"),
    "mlp_record_every": (_is_pos_int, "a positive integer"),
    "mlp_d_in": (_is_pos_int, "a positive integer"),
    "mlp_n_train": (_is_pos_int, "a positive integer"),
    "bisect_rounds": (lambda v: _spec.nonnegative_int(v)[0], "a non-negative integer (training rounds that halve each "
                      "boundary's bracket)"),
}
REQUIRES = Requirements(
    observables=("loss", "sharpness"),
    single=_FIXED,
    at_least=(("lr", 3, "a lazy, a catapulting and a diverging member bracket the two boundaries"),),
    full_batch=True,
    analysis=ANALYSIS,
)


def validate(spec):
    """What the requirements cannot say as data: the model, one scalar sample, plain GD from the standard uv init, an
    lr grid that reaches below lr*lambda = 2 and above 4 at the kernel's infinite-width value (a member whose own
    ``lambda0`` leaves a boundary outside the grid has no bracket there, which the analysis reports as nothing
    measured), and the MLP's step count."""
    from ..spec import SpecError

    if spec.get("model", {}).get("kind") != "uv":
        raise SpecError("spec key 'model.kind' must be 'uv' for catapult.")
    task, sweep = spec.get("task", {}), spec.get("sweep", {})
    if task.get("d_in") != 1 or task.get("n_train") != 1:
        raise SpecError("spec keys 'task.d_in' and 'task.n_train' must be 1 for catapult: the phase boundaries are "
                        "derived for one scalar sample.")
    if list(sweep.get("param", ["mup"])) != ["ntk"] or list(sweep.get("optimizer", ["sgd"])) != ["sgd"]:
        raise SpecError("spec keys 'sweep.param' and 'sweep.optimizer' must be ['ntk'] and ['sgd'] for catapult.")
    for key, default in (("init_scale", 1.0), ("weight_decay", 0.0), ("momentum", 0.0)):
        if list(sweep.get(key, [default])) != [default]:
            raise SpecError(f"spec key 'sweep.{key}' must be [{default}] for catapult (plain GD from the standard "
                            "uv init).")
    a = spec.get("analysis", {})
    if a.get("mlp_steps", 0) % a.get("mlp_record_every", 1):
        raise SpecError("spec key 'analysis.mlp_steps' must be a multiple of 'analysis.mlp_record_every'.")
    _, task, sw, _ = build(spec)
    lam = 2.0 * float(np.asarray(task.make().x_train)[0, 0]) ** 2  # lambda0's infinite-width value (initial_state)
    lo, hi = min(sw.lr) * lam, max(sw.lr) * lam
    if not (lo < 2.0 and hi > 4.0):
        raise SpecError(f"spec key 'sweep.lr' must reach below lr*lambda = 2 and above 4 at the infinite-width "
                        f"kernel lambda = 2 x^2 = {lam:.3g} to bracket both boundaries; its ends give {lo:.3g} and "
                        f"{hi:.3g}.")


EXPERIMENT = Experiment("catapult", "uv model and ReLU MLPs under large learning rates: lazy / catapult / "
                                 "divergent phases against lr*lambda0 = 2 and 4 (Lewkowycz et al. 2020)", DEFAULTS,
                                 QUICK, analyse, validate, execute,
                                 required=("task.d_in", "train.steps", "sweep.width", "sweep.lr"), requires=REQUIRES)
