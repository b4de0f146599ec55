"""Coordinate check (Yang et al. 2022): a diagnostic sweep, not a named experiment."""

from __future__ import annotations

import numpy as np

from ..executor import Sweep, run
from ..tasks import TeacherStudent

__all__ = ["coord_check"]


def coord_check(model, parametrization, widths, *, lr: float, steps: int = 3, optimizer: str = "sgd",
                seeds=(0, 1, 2), d_in: int = 16, n_train: int = 64, layers: str = "all"):
    """Coordinate check (Yang et al. 2022): activation and output scales after ``0..steps`` steps, per width.

    Runs a sweep through the executor and returns an ``xarray.Dataset`` with ``preact_rms`` (per hidden layer),
    ``output_rms`` and ``delta_out_rms``, the RMS of ``f_t - f_0`` on the test inputs, over dims ``width``,
    ``seed`` and ``step``. Under muP and NTK these are width-independent; under SP the output update grows with
    width.
    """
    task = TeacherStudent(d_in=d_in, n_train=n_train, n_test=n_train, seed=0)
    sweep = Sweep(width=tuple(widths), lr=(lr,), seed=tuple(seeds), param=(parametrization,),
                  optimizer=(optimizer,))
    ds = run(model, task, sweep, steps=steps, record_every=1, observables=("output_rms", "preact_rms", "outputs"),
             progress=False)
    out = ds["outputs"]
    delta = out - out.isel(step=0)
    ds["delta_out_rms"] = np.sqrt((delta**2).mean("sample"))
    return ds
