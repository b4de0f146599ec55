"""Learning-rate sensitivity (Wortsman et al. 2023): the metric on hand-computed curves, and lr-transfer's per
(optimizer, param, width) table of it."""

import numpy as np
import pytest
import xarray as xr

from dynsim.sensitivity import lr_sensitivity


def test_sensitivity_is_the_mean_excess_over_the_best_with_divergence_clipped():
    lr = np.logspace(-3, 0, 4)
    # A curve whose best is 0.1, one rate at 0.3, one diverged (NaN) and one that ended above its start (5 > 1):
    # both clip to the loss at init, 1. Excesses: 0, 0.2, 0.9, 0.9 -> mean 0.5 (float64: exact up to rounding).
    loss = np.array([[0.1, 0.3, np.nan, 5.0], [0.2, 0.2, 0.2, 0.2]])
    s = lr_sensitivity(lr, loss, np.array([[1.0], [1.0]]))
    np.testing.assert_allclose(s, [0.5, 0.0], atol=1e-15)
    # Restricted to the first two rates: (0 + 0.2) / 2.
    np.testing.assert_allclose(lr_sensitivity(lr, loss, 1.0, lr_range=(1e-3, 1e-2))[0], 0.1, atol=1e-15)
    # Every run diverged: all clip to the init loss, so nothing is worse than the best: 0.
    assert lr_sensitivity(lr, np.full(4, np.inf), 2.0) == 0.0
    # A range holding no rate measures nothing.
    assert np.isnan(lr_sensitivity(lr, loss, 1.0, lr_range=(2.0, 3.0))).all()


def test_sensitivity_refuses_a_misshapen_curve():
    with pytest.raises(ValueError, match="lr axis"):
        lr_sensitivity([0.1, 1.0], np.zeros((2, 3)), 1.0)


def test_lr_transfer_reports_sensitivity_per_curve_over_the_grid_only():
    from dynsim.experiments import lr_transfer

    lrs = np.array([1e-3, 1e-2, 1e-1, 0.3, 1.0])
    dims = ("optimizer", "param", "width", "lr", "seed", "init_scale", "weight_decay", "momentum", "step")
    # Records at step 0 (init, loss 1) and at the end. Curve "sharp" reaches 0.1 at one rate and diverges above it,
    # "flat" is 0.1 everywhere. The rate 0.3 is an edge refinement computed for "flat" only (diverged_at -2 elsewhere):
    # it must not enter either curve's sensitivity.
    end = np.array([[0.5, 0.1, np.nan, np.nan, np.nan], [0.1, 0.1, 0.1, 0.1, 0.1]])
    end[0, 3] = np.nan
    loss = np.stack([np.ones_like(end), end], axis=-1)[None, :, None, :, None, None, None, None, :]
    diverged = np.where(np.isnan(end), 3, -1)
    diverged[0, 3] = -2  # not computed for "sharp"
    diverged = diverged[None, :, None, :, None, None, None, None]
    coords = {"optimizer": ["sgd"], "param": ["sharp", "flat"], "width": [8], "lr": lrs, "seed": [0],
              "init_scale": [1.0], "weight_decay": [0.0], "momentum": [0.0], "step": [0, 10]}
    ds = xr.Dataset({"loss": (dims, loss), "diverged_at": (dims[:-1], diverged)}, coords=coords)
    sens = lr_transfer.lr_sensitivity(ds)[0, :, 0]
    # sharp over the grid 1e-3, 1e-2, 1e-1, 1: excesses 0.4, 0, 0.9 (diverged -> init loss 1), 0.9 -> 0.55.
    np.testing.assert_allclose(sens, [0.55, 0.0], atol=1e-12)
