"""``sweep``: a bare sweep from a spec file, with no theory attached; figures of the loss curves."""

from __future__ import annotations

import numpy as np

from ..plot import plt, save, width_colors
from ._base import Experiment, register

DEFAULTS = {
    "experiment": "sweep",
    "model": {"kind": "mlp", "depth": 2, "act": "relu"},
    "task": {"d_in": 16, "n_train": 128, "n_test": 256},
    "train": {"steps": 100, "record_every": 10},
    "sweep": {"width": [32, 128], "lr": [0.1], "seed": [0], "param": ["mup"], "optimizer": ["sgd"]},
}
QUICK = {"train": {"steps": 50, "record_every": 10}}


def analyse(ds, spec, out):
    loss = ds["loss"]
    other = [d for d in loss.dims if d not in ("width", "step")]
    curves = loss.mean(other) if other else loss
    fig, ax = plt.subplots(figsize=(5, 3.6))
    colors = width_colors(ds.sizes["width"])
    for k, w in enumerate(ds["width"].values):
        ax.plot(ds["step"].values, curves.sel(width=w).values, color=colors[k], label=f"width {w}")
    ax.set(yscale="log", xlabel="step", ylabel="training loss (mean over other axes)")
    ax.legend(fontsize=7)
    final = ds["loss"].isel(step=-1)
    report = f"Members: {int(np.prod(final.shape))}; diverged: {int((ds['diverged_at'] >= 0).sum())}."
    return {"checks": [], "regimes": {}, "figures": [save(fig, out / "loss_curves.png")], "report": report}


def validate(spec):
    from ..spec import SpecError

    if spec.get("analysis"):
        raise SpecError(f"unknown spec key 'analysis.{sorted(spec['analysis'])[0]}'; the sweep experiment takes "
                        "no analysis settings.")
    if "loss" not in spec.get("train", {}).get("observables", ["loss"]):
        raise SpecError("spec key 'train.observables' must include 'loss' for the sweep experiment's figures.")


EXPERIMENT = register(Experiment("sweep", "a bare sweep from a TOML spec: results and loss curves, no theory",
                                 DEFAULTS, QUICK, analyse, validate))
