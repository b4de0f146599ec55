"""Superposition model, sparse-features task, lr schedules and weight-decay terms through the engine, and the
``superposition`` experiment at quick size."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dynsim as ds
import roundoff
from dynsim import train
from dynsim.engine import member_hyper
from dynsim.experiments import _base
from dynsim.experiments.superposition import TOLERANCE
from dynsim.models import MLP
from dynsim.spec import SpecError
from dynsim.superposition import SparseFeatures, Superposition
from dynsim.tasks import TeacherStudent

N = 64
MODEL = Superposition(n_features=N)
TASK = SparseFeatures(n_features=N, alpha=1.2, p_active=2.0, n_test=256, seed=1)
OBS = ("loss", "represented_fraction", "mean_sq_overlap", "dims_per_feature", "feature_loss")


def _run(sweep, **kw):
    kw.setdefault("steps", 60)
    kw.setdefault("record_every", 20)
    kw.setdefault("warmup_steps", 5)
    return ds.run(MODEL, TASK, sweep, batch_size=64, schedule="cosine", observables=OBS, progress=False, **kw)


def test_member_alone_equals_member_inside_a_bucket_of_other_m():
    # m = 12 alone at its exact size, then padded to 40 in one program with other m, decays, seeds and lrs.
    member = ds.Sweep(width=[12], lr=[0.02], seed=[3], optimizer=["adamw"], weight_decay=[-0.5])
    alone = _run(member, group=1).squeeze()
    nudged = _run(roundoff.perturbed(member), group=1).squeeze()
    crowd = _run(ds.Sweep(width=[8, 12, 40], lr=[0.01, 0.02], seed=[2, 3], optimizer=["adamw"],
                          weight_decay=[-0.5, 0.5]), buckets=[[8, 12, 40]], group=8)
    assert json.loads(crowd.attrs["buckets"]) == [["adamw", 40, 24, 8]]  # one padded program
    c = crowd.sel(width=12, lr=0.02, seed=3, weight_decay=-0.5).squeeze()
    # Round-off only (tests/roundoff.py): within what 60 AdamW steps do to a one-ulp perturbation.
    for name in ("loss", "mean_sq_overlap", "dims_per_feature", "represented_fraction", "feature_loss"):
        roundoff.assert_same_trajectory(c[name], alone[name], nudged[name], name)
    assert float(alone["loss"][-1]) < 0.7 * float(alone["loss"][0])  # it trained


def test_runs_differing_only_in_alpha_share_their_programs():
    # alpha, p_active and seed only set the arrays the programs take, so the run of a second alpha compiles nothing
    # (the experiment runs one alpha after another) and still trains on its own frequencies.
    sweep = ds.Sweep(width=[8, 12], lr=[0.02], seed=[0], optimizer=["adamw"], weight_decay=[-0.5])
    go = lambda alpha: ds.run(MODEL, dataclasses.replace(TASK, alpha=alpha), sweep, steps=20, record_every=10,
                              batch_size=32, schedule="cosine", warmup_steps=2, observables=("loss",), progress=False)
    compile_s = lambda res: json.loads(res.attrs["timing"])["compile_s"]
    jax.clear_caches()
    first, second = go(0.5), go(1.2)
    assert compile_s(first) > 0 and compile_s(second) == 0
    jax.clear_caches()
    fresh = go(1.2)  # compiled for alpha = 1.2 alone
    assert compile_s(fresh) > 0
    np.testing.assert_array_equal(second["loss"].values, fresh["loss"].values)
    assert not np.allclose(first["loss"].isel(step=-1).values, second["loss"].isel(step=-1).values)


def test_init_ignores_padding_and_padded_rows_stay_zero():
    key = jax.random.key(0)
    std = MODEL.scales(12, None, 1.0).std
    small, big = MODEL.init(key, 12, 12, std)[0], MODEL.init(key, 40, 12, std)[0]
    np.testing.assert_array_equal(np.asarray(big[:12]), np.asarray(small))
    assert np.all(np.asarray(big[12:]) == 0)
    # Feature directions start at norm about init_scale: entries N(0, 1/m), m = 12 rows. 64 columns: mean of a
    # chi^2_12 / 12 has standard error sqrt(2 / 12 / 64) = 0.05; 0.2 is 4 of them.
    assert np.mean(np.sum(np.asarray(small) ** 2, axis=0)) == pytest.approx(1.0, abs=0.2)
    prog = train.Program(model=MODEL, task=TASK, optimizer="adamw", n_pad=40, record_every=5, records_per_segment=2,
                         batch_size=32)
    sweep = ds.Sweep(width=[12], lr=[0.05], optimizer=["adamw"], weight_decay=[-1.0])
    hyper = member_hyper(sweep, np.arange(1))
    data = TASK.make()
    state, _ = train.init_group(prog, data, hyper)
    state, _ = train.run_segment(prog, data, state, hyper, 0)
    w = np.asarray(state.params[0][0])
    assert np.abs(w[:12]).sum() > 0 and np.all(w[12:] == 0)


def test_importances_weight_the_loss_per_feature():
    # Elhage et al. (2022): I_i = r^i. With r = 1 the loss is the plain mean squared error.
    out, y = jnp.arange(12.0).reshape(4, 3), jnp.zeros((4, 3))
    plain = Superposition(n_features=4)
    assert float(plain.loss(out, y)) == pytest.approx(0.5 * float(jnp.mean(out**2)))
    weighted = Superposition(n_features=4, importance_decay=0.5)
    expected = 0.5 * np.mean(np.asarray(out) ** 2 * (0.5 ** np.arange(4))[:, None])
    assert float(weighted.loss(out, y)) == pytest.approx(expected, rel=1e-6)  # float32 mean of 12 terms: round-off
    with pytest.raises(ValueError, match="importance_decay"):
        Superposition(n_features=4, importance_decay=1.5)


def test_sparse_features_follow_their_frequencies():
    probs = TASK.probabilities()
    assert probs.sum() == pytest.approx(TASK.p_active)  # normalised to p_active in float64 (default rel 1e-6)
    assert np.all(np.diff(probs) < 0)
    data = TASK.make()
    x, y = TASK.batch(data, 7, 4096)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(TASK.batch(data, 7, 4096)[0]))  # one stream
    assert not np.array_equal(np.asarray(x), np.asarray(TASK.batch(data, 8, 4096)[0]))  # fresh every step
    x = np.asarray(x)
    assert x.min() >= 0 and x.max() < 2
    # Active count per sample: mean p_active, Poisson-binomial standard error below sqrt(2 / 4096) = 0.022.
    assert np.mean(np.sum(x > 0, axis=0)) == pytest.approx(TASK.p_active, abs=0.1)
    # E[x_1] = p_1 E[v] = p_1; standard error sqrt(4/3 p_1 / 4096) = 0.008.
    assert x[0].mean() == pytest.approx(probs[0], abs=0.04)
    with pytest.raises(ValueError, match="p_active"):
        SparseFeatures(n_features=10, alpha=2.0, p_active=3.0)


def test_lr_schedules():
    prog = lambda **kw: train.Program(model=MODEL, task=TASK, optimizer="adamw", n_pad=8, record_every=1,
                                      records_per_segment=1, **kw)
    assert train.lr_schedule(prog()) is None  # constant: no transform, today's programs unchanged
    warm = train.lr_schedule(prog(warmup_steps=10))
    np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(500)], [0.0, 0.5, 1.0, 1.0], atol=1e-7)
    # Schedules are evaluated in float32: values in [0, 1] to round-off (eps 1.2e-7).
    cos = train.lr_schedule(prog(schedule="cosine", warmup_steps=10, decay_steps=110))
    np.testing.assert_allclose([cos(5), cos(10), cos(60), cos(110)], [0.5, 1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(ds.engine.InputError, match="warmup_steps"):
        _run(ds.Sweep(width=[8], lr=[0.01], optimizer=["adamw"]), warmup_steps=60)


def _decay_update(model, params, gamma, optimizer="adamw"):
    """The update of one optimizer step on zero gradients: the weight-decay term alone, times -lr."""
    task = TeacherStudent(d_in=4) if isinstance(model, MLP) else TASK
    prog = train.Program(model=model, task=task, optimizer=optimizer, n_pad=8, record_every=1,
                         records_per_segment=1)
    hyper = member_hyper(ds.Sweep(width=[8], lr=[0.1], optimizer=[optimizer], weight_decay=[gamma]), np.zeros(1, int))
    hyper = jax.tree.map(lambda a: a[0], hyper)
    opt = train.make_optimizer(prog, hyper, jnp.ones(len(params)))
    zeros = jax.tree.map(jnp.zeros_like, params)
    return opt.update(zeros, opt.init(params), params)[0]


def test_weight_decay_acts_on_w_only_and_negative_decay_pulls_norms_to_one():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, N)) * np.linspace(0.1, 3.0, N)[None, :], jnp.float32)
    b = jnp.ones(N)
    up_w, up_b = _decay_update(MODEL, (w, b), 0.5)
    np.testing.assert_allclose(up_w, -0.1 * 0.5 * w, rtol=1e-6)  # decoupled: -lr * gamma * W
    assert np.all(np.asarray(up_b) == 0)  # the bias is not decayed
    # gamma < 0: each direction moves toward w / |w| at rate lr |gamma|, so repeated decay-only steps reach unit
    # norms (a plain negative decay would grow them without bound).
    params = (w, b)
    for _ in range(200):
        params = optax.apply_updates(params, _decay_update(MODEL, params, -1.0))
    # |w| - 1 shrinks by 1 - lr |gamma| = 0.9 a step (0.9^200 ~ 7e-10); float32 steady state ~eps / 0.1 = 1e-6.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(params[0]), axis=0), 1.0, rtol=1e-4)
    mlp = MLP(d_in=4)
    mlp_params = (jnp.ones((8, 4)), jnp.ones((1, 8)))
    for u, p in zip(_decay_update(mlp, mlp_params, 0.5, "sgd"), mlp_params):  # MLPs decay every matrix
        np.testing.assert_allclose(u, -0.1 * 0.5 * p, rtol=1e-6)


def test_lr_exponent_scales_w_and_not_b():
    m = jnp.asarray([8.0, 128.0])
    lr = jax.vmap(lambda w: Superposition(n_features=16, lr_exponent=0.25).scales(w, None, 1.0).lr)(m)
    np.testing.assert_allclose(lr[:, 0], m**-0.25, rtol=1e-6)  # float32 m^-1/4: round-off (eps 1.2e-7)
    np.testing.assert_array_equal(lr[:, 1], 1.0)
    assert Superposition(n_features=16).scales(128.0, None, 1.0).lr.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="lr_exponent"):
        Superposition(n_features=16, lr_exponent=-0.5)


def test_spec_errors_are_one_sentence():
    with pytest.raises(SpecError, match="lr_exponent"):
        _base.resolve_spec("superposition", quick=True, sets=["model.lr_exponent=2"])
    with pytest.raises(SpecError, match="sweep.alpha"):
        _base.resolve_spec("lr-transfer", quick=True, sets=["sweep.alpha=[1.5]"])
    with pytest.raises(SpecError, match="batch_size"):
        _base.resolve_spec("superposition", quick=True, sets=["train.batch_size=0"])
    exp, spec = _base.resolve_spec("superposition", quick=True, sets=["task.teacher=mlp"])
    with pytest.raises(SpecError, match="task.teacher"):
        _base.build(spec)
    with pytest.raises(SpecError, match="p_active"):
        exp, spec = _base.resolve_spec("superposition", quick=True, sets=["task.p_active=5.0"])
        _base.task_variants(spec, _base.build(spec)[1])


@pytest.mark.slow
def test_quick_experiment_reproduces_both_regimes(tmp_path):
    out, summary = _base.run("superposition", quick=True, out=tmp_path, progress=False, log=lambda *a: None)
    checks = {c["name"]: c for c in summary["checks"]}
    # Quick size: alpha = 0, 0.5, 2, 2.5 and gamma = -1, 1. The band, 0.2, around 1 for the strong regime at
    # alpha = 0 and 0.5 and around alpha - 1 for the weak regime at alpha = 2 and 2.5, with the check's CI (residual
    # bootstrap over the five m). Strong superposition at alpha = 2 and 2.5 (skewed frequencies) against Liu et al.'s
    # range [1, 2(alpha - 1)] widened by the same band (theory.superposition.strong_exponent_bounds).
    for alpha in (0, 0.5):
        strong = checks[f"loss exponent (strong: 1), alpha={alpha:g}, gamma=-1"]
        assert strong["agrees"] and abs(strong["measured"] - 1.0) <= TOLERANCE, strong
        assert summary["regimes"][f"alpha={alpha:g}, gamma=-1"].startswith("strong")
    for alpha in (2, 2.5):
        weak = checks[f"loss exponent (weak: alpha - 1), alpha={alpha:g}, gamma=1"]
        assert weak["agrees"] and weak["predicted"] == alpha - 1, weak
        assert summary["regimes"][f"alpha={alpha:g}, gamma=1"].startswith("weak")
        assert summary["regimes"][f"alpha={alpha:g}, gamma=-1"].startswith("strong")
        skewed = checks[f"loss exponent (strong, skewed: between 1 and 2(alpha - 1)), alpha={alpha:g}, gamma=-1"]
        assert skewed["agrees"] and 1 - TOLERANCE <= skewed["measured"] <= 2 * (alpha - 1) + TOLERANCE, skewed
        assert skewed["predicted"] - skewed["tolerance"] == pytest.approx(1 - TOLERANCE)  # mid - half-width: round-off
    assert not any(n.startswith("m x mean squared overlap, alpha=2") for n in checks)  # reported only
    for name, c in checks.items():
        if name.startswith("m x mean squared overlap"):
            assert c["agrees"], c
    res = ds.io.load(out)
    assert {"m", "alpha", "weight_decay", "seed", "step"} <= set(res["loss"].dims)
    for f in ("summary.json", "report.md", "loss_vs_m.png", "exponent_vs_alpha.png"):
        assert (out / f).exists()
