"""``lr-sensitivity``: learning-rate sensitivity of a small classifier, with and without the z-loss, warmup and weight
decay (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities", sections 3.1
and 3.2).

A small MLP is trained by AdamW on softmax cross-entropy (:class:`dynsim.tasks.Classification`) over a grid of
learning rates spanning three decades and more, in every combination of z-loss (0 or ``1e-4 log^2 Z``), linear warmup
(none or ``warmup_steps``) and weight decay (the sweep's values). At high rates Adam lets the log-partition function
drift (cross-entropy does not see a common shift of the logits): the logits grow by orders of magnitude and training
fails, the paper's *output logit divergence*. The learning-rate sensitivity (:mod:`dynsim.sensitivity`), the mean
excess of the final loss over the best across the grid with failed runs counted at the loss at init, measures how
much of the grid is lost.

Check, with and without warmup and no weight decay, where the logits diverge: **the z-loss lowers the sensitivity**.
Measured: ``S(no z-loss) - S(z-loss)`` (seed mean over widths; 95% bootstrap CI over seeds). Predicted: the part of
``S(no z-loss)`` carried by the runs whose logits diverged (final mean ``|log Z|`` above ``LOGZ_FACTOR`` times that
at the best rate of their curve), which the z-loss exists to remove. Model error: the excess the z-loss runs keep at
those same rates (the z-loss removes the drift of ``log Z``, not every other failure at a high rate). Competitor: 0,
the z-loss changing nothing. The loss is the training cross-entropy without the z-loss term.

Reported, not checked: the sensitivity with weight decay, with and without the z-loss. Measured at quick size (width
32, 3 seeds, 200 steps, lr 1e-3 to 3.16; about 80 s of training on 2 shared CPU cores): without warmup S = 0.312
without z-loss and 0.113 with it (check: 0.199 [0.088, 0.307] against 0.201 carried by logit divergence, model
error 0.002: agrees); with 40 warmup steps 0.490 and 0.166 (0.324 [0.251, 0.381] against 0.359, model error 0.020:
agrees). Mean ``|log Z|`` at lr 3.16 without z-loss: 1.4e4 (no warmup) and 2.3e4 (warmup), against 18 and 168 with
it. Weight decay 0.1 keeps ``|log Z|`` below 10 at every rate without warmup (S = 0.133 either way: no divergence
to remove); with warmup it lowers S to 0.255 (0.143 with z-loss). Warmup does not lower S here, unlike the paper's
Transformers. At the default size (widths 32-128, 4 seeds, 300 steps, warmup 60; about 6 min on 2 shared cores):
without warmup S = 0.381 without z-loss and 0.047 with it (check 0.333 [0.246, 0.449] against 0.254, model error
0.009: agrees); with warmup 0.233 and 0.141 (0.093 [0.003, 0.165] against 0.170, model error 0.066: inconclusive,
the widened interval holding 0 as well); weight decay 0.1: 0.051 and 0.053 without warmup, 0.088 and 0.061 with it.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import executor as _executor
from .. import io as _io
from .. import observables as _observables
from ..models import MLP
from ..plot import save, subplots
from ..sensitivity import lr_sensitivity
from ..spec import SpecError
from ..tasks import Classification
from ._contract import Check, Experiment, Requirements
from ._report import table
from ._runner import spec_error

N_BOOT = 1000
LEVEL = 0.95
# A run's logits diverged when its final mean |log Z| exceeds this multiple of that at the best rate of its curve
# (and when it diverged outright).
LOGZ_FACTOR = 10.0


def _cross_entropy(ctx, params, extra):
    out, y = ctx.outputs(params, "train"), ctx.data.y_train
    return jnp.mean(jax.nn.logsumexp(out, axis=0) - jnp.sum(y * out, axis=0)), None


def _log_z(ctx, params, extra):
    return jnp.mean(jnp.abs(jax.nn.logsumexp(ctx.outputs(params, "train"), axis=0))), None


# The recorded ``loss`` of a run with z-loss includes the z-loss term; the sensitivity compares cross-entropy alone.
OBSERVABLES = (
    _observables.Observable("cross_entropy", _cross_entropy, "softmax cross-entropy on the training set, without "
                            "the z-loss term", outputs_only=True),
    _observables.Observable("log_z", _log_z, "mean |log Z| (log-partition function of the logits) on the training "
                            "set", outputs_only=True),
)


DEFAULTS = {
    "experiment": "lr-sensitivity",
    "analysis": {"d_in": 16, "n_classes": 8, "n_train": 256, "n_test": 512, "widths": [32, 64, 128],
                 "lr": [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0, 3.16], "seeds": 4, "steps": 300,
                 "record_every": 100, "z_loss": 1e-4, "warmup_steps": 60, "weight_decay": [0.0, 0.1], "param": "sp"},
}
QUICK = {"analysis": {"widths": [32], "seeds": 3, "steps": 200, "record_every": 100, "warmup_steps": 40}}


def _variants(a):
    return [(z, w) for z in (0.0, a["z_loss"]) for w in (0, a["warmup_steps"])]


def _squeeze(v):
    """``v`` without the sweep axes that hold one value (optimizer, param, init scale, momentum)."""
    keep = ("width", "lr", "seed", "weight_decay", "step")
    return v.squeeze([d for d in v.dims if d not in keep and v.sizes[d] == 1])


def execute(spec: dict, out, progress=None) -> xr.Dataset:
    """One engine run per (z-loss, warmup), each sweeping width x lr x seed x weight decay; stores the final and
    initial cross-entropy (``final_loss``, ``init_loss``; without the z-loss term), the training objective at init
    (``init_objective``: cross-entropy plus the z-loss term), and the final ``log_z`` and
    ``output_rms`` over ``z_loss, warmup, weight_decay, width, seed, lr``."""
    a = spec["analysis"]
    model = MLP(d_in=a["d_in"], d_out=a["n_classes"], depth=2, act="relu")
    sweep = _executor.Sweep(width=a["widths"], lr=a["lr"], seed=list(range(a["seeds"])), param=[a["param"]],
                            optimizer=["adamw"], weight_decay=a["weight_decay"])
    for o in OBSERVABLES:  # registered here, by an explicit call; registering the same object again is a no-op
        _observables.register(o)
    parts, t0 = [], time.perf_counter()
    for z, warm in _variants(a):
        task = Classification(d_in=a["d_in"], n_classes=a["n_classes"], n_train=a["n_train"], n_test=a["n_test"],
                              z_loss=z)
        try:
            r = _executor.run(model, task, sweep, steps=a["steps"], record_every=a["record_every"],
                              observables=("loss", "cross_entropy", "log_z", "output_rms"), warmup_steps=warm,
                              schedule="constant",
                              out=out / f"z={z:g}_warmup={warm}", progress=progress, spec=spec)
        except (_io.MetaMismatch, _executor.InputError) as e:
            raise spec_error(e) from None
        part = xr.Dataset({"final_loss": _squeeze(r["cross_entropy"]).isel(step=-1, drop=True),
                           "init_loss": _squeeze(r["cross_entropy"]).isel(step=0, drop=True),
                           "init_objective": _squeeze(r["loss"]).isel(step=0, drop=True),
                           "log_z": _squeeze(r["log_z"]).isel(step=-1, drop=True),
                           "output_rms": _squeeze(r["output_rms"]).isel(step=-1, drop=True)})
        parts.append(part.expand_dims(z_loss=[z], warmup=[warm]))
    ds = xr.combine_by_coords(parts, combine_attrs="drop_conflicts")
    ds = ds.transpose("z_loss", "warmup", "weight_decay", "width", "seed", "lr")
    ds.attrs = {"spec": json.dumps(spec), "timing": json.dumps({"run_s": time.perf_counter() - t0}),
                **{k: (int(v) if isinstance(v, bool) else v) for k, v in _executor.versions().items()}}
    _io.write_results(ds, out / "results.nc")
    return ds


def _clipped(ds):
    loss, init = ds["final_loss"].values, ds["init_loss"].values
    return np.where(np.isfinite(loss), np.minimum(loss, init), init)


def _diverged(ds):
    """Runs whose logits diverged ``[z, warmup, wd, width, seed, lr]`` (module docstring)."""
    log_z, clipped = ds["log_z"].values, _clipped(ds)
    best = np.take_along_axis(log_z, np.argmin(clipped, axis=-1)[..., None], axis=-1)
    with np.errstate(invalid="ignore"):
        return ~(log_z <= LOGZ_FACTOR * best)  # NaN (a diverged run) counts as diverged


def measurements(ds, seeds=None) -> dict[str, np.ndarray]:
    """Per (warmup, weight decay): the sensitivity with and without z-loss, the part of the latter carried by
    logit-divergent runs, and the excess the z-loss runs keep at those rates; widths averaged, seeds ``seeds``
    (indices, default all) averaged."""
    clipped = _clipped(ds)  # [Z, W, D, N, S, L]
    seeds = np.arange(ds.sizes["seed"]) if seeds is None else np.asarray(seeds)
    lrs = ds["lr"].values
    s = lr_sensitivity(lrs, clipped, ds["init_loss"].values)[..., seeds].mean(axis=(-1, -2))  # [Z, W, D]
    excess = clipped - clipped.min(axis=-1, keepdims=True)
    div = _diverged(ds)[0]  # where the no-z-loss runs diverged
    carried = np.where(div, excess[0], 0.0).mean(-1)[..., seeds].mean(axis=(-1, -2))
    kept = np.where(div, excess[1], 0.0).mean(-1)[..., seeds].mean(axis=(-1, -2))
    return {"without": s[0], "with": s[1], "difference": s[0] - s[1], "carried": carried, "kept": kept}


def checks(ds, n_boot: int = N_BOOT, seed: int = 0) -> tuple[list[Check], dict]:
    point = measurements(ds)
    n_seeds = ds.sizes["seed"]
    idx = np.random.default_rng(seed).integers(0, n_seeds, (n_boot, n_seeds))
    boot = np.stack([measurements(ds, i)["difference"] for i in idx])
    lo, hi = np.percentile(boot, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
    out = []
    for i, warm in enumerate(ds["warmup"].values):  # without weight decay, where the logits diverge
        out.append(Check(
            name=f"S(no z-loss) - S(z-loss), warmup {int(warm)}, no weight decay",
            measured=float(point["difference"][i, 0]), ci=(float(lo[i, 0]), float(hi[i, 0])),
            predicted=float(point["carried"][i, 0]), competitor="the z-loss changing nothing (0)",
            competing=0.0, tolerance=float(point["kept"][i, 0]),
            reason=f"prediction: the sensitivity carried by runs whose logits diverged without z-loss (mean |log Z| "
                   f"> {LOGZ_FACTOR:g}x the best rate's); model error: the excess the z-loss runs keep at those "
                   f"rates; CI: {n_boot}-replicate bootstrap over {n_seeds} seeds"))
    return out, point


def analyse(ds, spec, out):
    result, point = checks(ds)
    warm, wds = ds["warmup"].values, ds["weight_decay"].values
    rows = [[int(w), f"{d:g}", point["without"][i, j], point["with"][i, j], point["carried"][i, j]]
            for i, w in enumerate(warm) for j, d in enumerate(wds)]
    regimes = {f"warmup {int(w)}, weight decay {d:g}": (f"sensitivity {point['without'][i, j]:.3g} without z-loss, "
                                                       f"{point['with'][i, j]:.3g} with")
               for i, w in enumerate(warm) for j, d in enumerate(wds)}
    report = ("Learning-rate sensitivity S (Wortsman et al. 2023): the mean over the lr grid of the final training "
              "loss, clipped at the loss at init, minus its best; widths and seeds averaged.\n\n"
              + table(["warmup", "weight decay", "S without z-loss", "S with z-loss", "S carried by logit divergence"],
                      rows))
    figures = [_plot(ds, "final_loss", "final cross-entropy (clipped at init)", out / "loss_vs_lr.png"),
               _plot(ds, "log_z", "final mean |log Z|", out / "logits_vs_lr.png")]
    return {"checks": result, "regimes": regimes, "figures": figures, "report": report}


def _plot(ds, name, label, path):
    warm, wds = ds["warmup"].values, ds["weight_decay"].values
    fig, axes = subplots(len(warm), len(wds), figsize=(4.2 * len(wds), 3.3 * len(warm)), squeeze=False)
    lrs = ds["lr"].values
    for i, w in enumerate(warm):
        for j, d in enumerate(wds):
            ax = axes[i, j]
            for k, z in enumerate(ds["z_loss"].values):
                v = ds[name].isel(z_loss=k, warmup=i, weight_decay=j)
                if name == "final_loss":
                    v = v.fillna(ds["init_loss"].isel(z_loss=k, warmup=i, weight_decay=j))
                    v = np.minimum(v, ds["init_loss"].isel(z_loss=k, warmup=i, weight_decay=j))
                for n, width in enumerate(ds["width"].values):
                    ax.plot(lrs, v.sel(width=width).median("seed").values, "o-" if z else "s--", ms=3,
                            color=f"C{k}", alpha=1 - 0.25 * n,
                            label=(f"z-loss {z:g}" if z else "no z-loss") + f", width {int(width)}")
            ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel=label,
                   title=f"warmup {int(w)}, weight decay {d:g}")
    axes[0, -1].legend(fontsize=6)
    return save(fig, path)


_int = lambda low: (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low)
_nums = lambda v: isinstance(v, list) and len(v) >= 1 and all(
    isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v)
REQUIRES = Requirements(analysis={
    "d_in": (_int(1), "a positive integer"), "n_classes": (_int(2), "an integer of at least 2"),
    "n_train": (_int(1), "a positive integer"), "n_test": (_int(1), "a positive integer"),
    "widths": (lambda v: isinstance(v, list) and len(v) >= 1 and all(_int(1)(x) for x in v),
               "a list of positive integers"),
    "lr": (lambda v: _nums(v) and len(v) >= 3 and min(v) > 0 and v == sorted(v),
           "an increasing list of at least 3 positive learning rates (a grid uniform in log lr)"),
    "seeds": (_int(2), "an integer of at least 2 (the CIs are a bootstrap over seeds)"),
    "steps": (_int(1), "a positive integer"), "record_every": (_int(1), "a positive integer"),
    "z_loss": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number"),
    "warmup_steps": (_int(1), "a positive integer (runs without warmup are always included)"),
    "weight_decay": (_nums, "a list of non-negative weight decays"),
    "param": (lambda v: v in ("sp", "mup", "ntk", "mean_field"), "'sp', 'mup', 'ntk' or 'mean_field'"),
})


def validate(spec):
    for key in spec:
        if key not in ("experiment", "analysis"):
            raise SpecError(f"spec key {key!r} is not used by lr-sensitivity; its settings live in [analysis].")
    a = spec["analysis"]
    if a["steps"] % a["record_every"]:
        raise SpecError("spec key 'analysis.steps' must be a multiple of analysis.record_every.")
    if a["weight_decay"][0] != 0:
        raise SpecError("spec key 'analysis.weight_decay' must start at 0 (the z-loss check runs without it).")
    if a["warmup_steps"] >= a["steps"]:
        raise SpecError("spec key 'analysis.warmup_steps' must be below analysis.steps.")


EXPERIMENT = Experiment("lr-sensitivity", "learning-rate sensitivity of a small softmax classifier with and without "
                                          "the z-loss, warmup and weight decay (Wortsman et al. 2023, \"Small-scale "
                                          "proxies for large-scale Transformer training instabilities\")",
                        DEFAULTS, QUICK, analyse, validate, execute, requires=REQUIRES)
