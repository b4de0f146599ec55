"""Losses and outputs: ``loss``, ``test_loss``, ``outputs``, ``output_rms`` (outputs-only: both layouts record them)
and ``preact_rms`` (models that return their pre-activations)."""

from __future__ import annotations

import jax.numpy as jnp

from ._registry import Observable

__all__ = ["OBSERVABLES"]


def _train_loss(ctx, params, extra):
    data = ctx.data
    if ctx.prog.task.online:  # the population loss is the training loss of an online task
        return ctx.prog.model.loss(ctx.outputs(params, "test"), data.y_test), None
    return ctx.prog.model.loss(ctx.outputs(params, "train"), data.y_train), None


def _test_loss(ctx, params, extra):
    return ctx.prog.model.loss(ctx.outputs(params, "test"), ctx.data.y_test), None


def _output_rms(ctx, params, extra):
    return jnp.sqrt(jnp.mean(ctx.outputs(params, "test") ** 2)), None


def _outputs(ctx, params, extra):
    return ctx.outputs(params, "test")[0], None


def _preact_rms(ctx, params, extra):
    _, pre = ctx.prog.model.apply(params, ctx.data.x_test, ctx.scales.mult, ctx.mask, return_preacts=True)
    width = ctx.hyper.width.astype(pre[0].dtype)
    # RMS over the member's true units only: padded units are exactly zero.
    return jnp.stack([jnp.sqrt(jnp.sum(h**2) / (width * h.shape[1])) for h in pre]), None


OBSERVABLES = (
    Observable("loss", _train_loss, "training loss (the model's, 0.5*mean((f-y)^2) for an MLP, or the task's own) "
               "on the full training set (on the test set, i.e. the population loss, for online tasks)",
               outputs_only=True),
    Observable("test_loss", _test_loss, "test loss (the same loss as `loss`) on the held-out set", outputs_only=True),
    Observable("output_rms", _output_rms, "root mean square of the network output on the test inputs",
               outputs_only=True),
    Observable("preact_rms", _preact_rms, "RMS of each hidden layer's pre-activations on the test inputs",
               dims=("layer",), shape=lambda prog: (prog.model.depth - 1,),
               applies=lambda model: model.returns_preacts,
               applies_to="models whose apply returns pre-activations (MLPs)"),
    Observable("outputs", _outputs, "network output (first component) on each test input", dims=("sample",),
               shape=lambda prog: (prog.task.n_test,), outputs_only=True),
)
