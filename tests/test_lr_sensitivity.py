"""Softmax cross-entropy with the z-loss, the classification task, a task's own loss in the engine, and the
lr-sensitivity experiment at quick size with simulations that must fail its check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import dynsim as ds
from dynsim import experiments
from dynsim.experiments import lr_sensitivity
from dynsim.spec import SpecError
from dynsim.tasks import Classification, SoftmaxCrossEntropy


def test_cross_entropy_matches_a_numpy_reference_and_adds_the_z_loss():
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((5, 7))  # [classes, samples]
    labels = np.eye(5)[:, np.arange(7) % 5]
    log_z = scipy.special.logsumexp(logits, axis=0)
    reference = np.mean(log_z - (labels * logits).sum(0))
    losses = jax.jit(lambda f, y: jnp.stack([SoftmaxCrossEntropy()(f, y), SoftmaxCrossEntropy(1e-2)(f, y),
                                             SoftmaxCrossEntropy()(f + 5.0, y), SoftmaxCrossEntropy(1e-2)(f + 5.0, y)]))
    plain, with_z, shifted, shifted_z = np.asarray(losses(jnp.asarray(logits, jnp.float32), jnp.asarray(labels,
                                                                                                         jnp.float32)))
    # float32 against float64: a few ulps of values near 3 (rtol 1e-5 leaves a factor 10 of room).
    np.testing.assert_allclose(plain, reference, rtol=1e-5)
    np.testing.assert_allclose(with_z, reference + 1e-2 * np.mean(log_z**2), rtol=1e-5)
    # A common shift of every logit leaves cross-entropy alone and moves only the z-loss: nothing else holds log Z.
    np.testing.assert_allclose(shifted, reference, rtol=1e-5)
    assert shifted_z > with_z + 0.1


def test_classification_task_and_its_errors():
    task = Classification(d_in=6, n_classes=4, n_train=32, n_test=16)
    shapes = jax.eval_shape(task.make)  # traced, not computed: the values are checked by the run below
    assert task.d_out == 4 and shapes.y_train.shape == (4, 32) and shapes.x_test.shape == (6, 16)
    assert task.loss == SoftmaxCrossEntropy(0.0)
    assert ds.tasks.TeacherStudent(d_in=4).loss is None  # regression keeps the model's own loss
    with pytest.raises(ValueError, match="z_loss") as info:
        Classification(d_in=6, z_loss=-1.0)
    assert str(info.value).count(". ") == 0


def test_with_loss_delegates_to_its_model_and_keys_programs_by_value():
    model = ds.models.MLP(d_in=6, d_out=4)
    a = ds.models.WithLoss(model, SoftmaxCrossEntropy(1e-4))
    assert a == ds.models.WithLoss(model, SoftmaxCrossEntropy(1e-4)) and hash(a) == hash(
        ds.models.WithLoss(model, SoftmaxCrossEntropy(1e-4)))
    assert a != ds.models.WithLoss(model, SoftmaxCrossEntropy(0.0))
    assert (a.depth, a.roles, a.d_out, a.smooth, a.packable) == (model.depth, model.roles, 4, model.smooth, False)


@pytest.mark.parametrize("sets, key", [
    (["analysis.weight_decay=[0.1]"], "analysis.weight_decay"),
    (["analysis.z_loss=0"], "analysis.z_loss"),
    (["analysis.lr=[0.1, 0.01, 1.0]"], "analysis.lr"),
    (["analysis.warmup_steps=500"], "analysis.warmup_steps"),
])
def test_bad_specs_are_refused_in_one_sentence(sets, key):
    with pytest.raises(SpecError, match=key.replace(".", "\\.")) as info:
        experiments.resolve_spec("lr-sensitivity", quick=True, sets=sets)
    assert str(info.value).endswith(".") and str(info.value).count(". ") == 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr-sensitivity")
    # Quick size without the weight-decay runs (the check runs without weight decay), to halve the members.
    return experiments.run("lr-sensitivity", quick=True, out=out, sets=["analysis.weight_decay=[0.0]"],
                           progress=False, log=lambda s: None)


@pytest.mark.slow
def test_lr_sensitivity_quick(quick):
    out, summary = quick
    for name in ("report.md", "results.nc", "loss_vs_lr.png", "logits_vs_lr.png"):
        assert (out / name).exists(), name
    res = ds.io.load(out)
    # The engine trains on the task's loss: at init the recorded objective is the cross-entropy (computed apart by
    # the experiment's observable; float32 rounding of the same sums, 1e-6) without z-loss, and exceeds it with one.
    objective, ce = res["init_objective"], res["init_loss"]
    np.testing.assert_allclose(objective.sel(z_loss=0.0), ce.sel(z_loss=0.0), rtol=1e-6)
    assert (objective.isel(z_loss=1) > ce.isel(z_loss=1)).all()
    assert len(summary["checks"]) == 2  # with and without warmup
    for check in summary["checks"]:
        assert check["verdict"] == "agrees", check


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_check(quick):
    out, _ = quick
    res = ds.io.load(out)
    verdict = lambda d: lr_sensitivity.checks(d)[0][0].verdict
    # The runs with and without the z-loss exchanged: the z-loss now raises the sensitivity (the measured difference
    # is negative; the model error, now the excess of the failing runs, is wide enough to leave it inconclusive).
    swapped = res.assign_coords(z_loss=res["z_loss"].values[::-1]).sortby("z_loss")
    assert lr_sensitivity.measurements(swapped)["difference"][0, 0] < 0
    assert verdict(swapped) != "agrees"
    # A z-loss that does nothing (its runs copies of those without): the difference is 0, the competitor's value.
    same = res.copy()
    for name in same.data_vars:
        same[name] = res[name].isel(z_loss=[0, 0]).assign_coords(z_loss=res["z_loss"].values)
    assert verdict(same) != "agrees"
