"""Hypergradients (:func:`dynsim.hypergrad`) against their oracles: central finite differences of :func:`dynsim.run`,
the closed form of GD on a model linear in its trained parameters (:mod:`dynsim.theory.linear_gd`), forward mode
against reverse mode, divergence, and the exponential growth of the derivative beyond the stability edge.

Comparisons that need float64 say so by running under the ``x64`` fixture; tolerances state their reason."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds
from dynsim.executor import member_hyper
from dynsim.models import MLP, random_feature_model
from dynsim.tasks import TeacherStudent
from dynsim.theory import linear_gd

TASK = TeacherStudent(d_in=4, n_train=16, n_test=16, teacher_width=8, seed=2)
MODEL = MLP(d_in=4, act="tanh")
STEPS = 20
ALL = ("log_lr", "log_init_scale", "weight_decay", "momentum")
# One SGD member with every hyperparameter away from 0, so that each derivative is exercised.
POINT = dict(width=8, lr=0.5, seed=0, init_scale=1.0, weight_decay=0.01, momentum=0.5)
H = 1e-6  # finite-difference step (relative for lr and init_scale, absolute for weight_decay and momentum)


def _sweep(**changes):
    kw = {k: [v] for k, v in POINT.items()}
    kw.update(changes)
    return ds.Sweep(**kw)


def _run_around(name):
    """``ds.run`` at the point and at the point with the hyperparameter behind ``name`` moved by -+ ``H``: records
    ``[3, steps + 1]`` of ``loss`` and ``test_loss`` (three members, one compiled program for every ``name``)."""
    base = POINT[name.removeprefix("log_")]
    # d/d log x = x d/dx: step x by the factors 1 -+ H; the others by -+ H.
    values = [base * (1 - H), base, base * (1 + H)] if name.startswith("log_") else [base - H, base, base + H]
    r = ds.run(MODEL, TASK, _sweep(**{name.removeprefix("log_"): values}), steps=STEPS, record_every=1,
               progress=False)
    return {v: r[v].squeeze().transpose(..., "step").values for v in ("loss", "test_loss")}


def _central(name, objective):
    """Central difference of ``objective`` of ``ds.run`` in ``name``, and the objective at the point."""
    r = _run_around(name)
    outcome = {"final_loss": r["loss"][:, -1], "final_test_loss": r["test_loss"][:, -1],
               "mean_loss": r["loss"][:, :-1].mean(axis=1)}[objective]
    return float((outcome[2] - outcome[0]) / (2 * H)), float(outcome[1])


@pytest.fixture(scope="module")
def forward_all():
    jax.config.update("jax_enable_x64", True)
    try:
        yield ds.hypergrad(MODEL, TASK, _sweep(), steps=STEPS, wrt=ALL + ("log_lr_layer",), mode="forward").squeeze()
    finally:
        jax.config.update("jax_enable_x64", False)


def test_every_derivative_matches_central_differences_of_run(forward_all, x64):
    for name in ALL:
        fd, at_point = _central(name, "final_loss")
        # float64: the difference's round-off, eps * loss / H ~ 1e-11, is at most 1e-8 of these derivatives
        # (0.001-0.33), its truncation H^2 ~ 1e-12 relative; 1e-7 leaves an order of magnitude for the run's
        # amplification over 20 steps (measured differences 1.3e-10 to 3.6e-9, the largest for momentum's 0.001).
        assert float(forward_all[f"d_final_loss_d_{name}"]) == pytest.approx(fd, rel=1e-7), name
        # The objective is run's final loss, up to the order of XLA's sums in two programs.
        assert float(forward_all["final_loss"]) == pytest.approx(at_point, rel=1e-12)


def _layer_rates_around():
    """``ds.run``'s final loss with one layer's learning rate multiplied by ``exp(-+H)``, through the public
    parametrization table: layer ``l``'s rate is ``lr * n^-c_role(l)``, so lowering ``c_role(l)`` by ``H / log n``
    multiplies it by ``exp(H)``. ``[layer, 3]`` (one run of ``3 * depth`` members, one compiled program)."""
    base, n = ds.param.get(_sweep().param[0]), POINT["width"]  # the point's own parametrization (muP)
    tables = []
    for layer, role in enumerate(MODEL.roles):  # the two layers of MODEL have distinct roles: input, output
        for k, sign in enumerate((-1, 0, 1)):
            c = list(base.c)
            c[role] -= sign * H / np.log(n)
            tables.append(ds.param.Parametrization(f"rate_{layer}_{k}", a=base.a, b=base.b, c=tuple(c),
                                                   c_adam=base.c_adam))
    r = ds.run(MODEL, TASK, _sweep(param=tables), steps=STEPS, record_every=STEPS, progress=False)
    return r["loss"].isel(step=-1).squeeze().values.reshape(len(MODEL.roles), 3)


def test_each_layers_rate_matches_central_differences_of_run(forward_all, x64):
    loss = _layer_rates_around()
    fd = (loss[:, 2] - loss[:, 0]) / (2 * H)
    d = forward_all["d_final_loss_d_log_lr_layer"]
    assert d.dims == ("layer",) and d.sizes["layer"] == MODEL.depth
    # As for the other names: float64 round-off of a central difference, 1e-9 relative, with room for 20 steps.
    np.testing.assert_allclose(d.values, fd, rtol=1e-7)
    assert np.abs(fd).min() > 1e-2 * np.abs(fd).max()  # each layer's rate matters here: not a vanishing entry
    # The rate enters training only as lr * n^-c_l * m_l, so the layers' derivatives sum to log lr's by the chain
    # rule; the two are separate tangents of one forward pass, equal up to float64 round-off over 20 steps
    # (measured 1e-16 relative), 1e-12 leaving room for another machine's order of sums.
    assert float(d.sum()) == pytest.approx(float(forward_all["d_final_loss_d_log_lr"]), rel=1e-12)


def test_forward_equals_reverse_to_round_off(forward_all, x64):
    rev = ds.hypergrad(MODEL, TASK, _sweep(), steps=STEPS, wrt=ALL + ("log_lr_layer",), mode="reverse",
                       remat_every=6).squeeze()
    assert rev.attrs["mode"] == "reverse" and rev.attrs["remat_every"] == 6  # 4 segments of 6 steps, 4 of them masked
    assert float(rev["final_loss"]) == float(forward_all["final_loss"])  # the same primal run
    for name in ALL + ("log_lr_layer",):
        v = f"d_final_loss_d_{name}"
        # Two orders of accumulating one chain rule over 20 steps: float64 round-off, measured up to 8e-15
        # relative (momentum's derivative, the smallest); 1e-13 (some 500 ulps) leaves room for another machine's
        # code generation.
        np.testing.assert_allclose(rev[v].values, forward_all[v].values, rtol=1e-13, atol=0, err_msg=name)


def test_reverse_segments_overhanging_the_run_agree_with_forward(x64):
    # 23 steps in reverse-mode segments of 5: the last one runs masked steps past the end, which must change
    # nothing; mean_loss sums every step's loss on the way, and the layers' rates are differentiated too.
    kw = dict(steps=23, wrt=("log_lr", "momentum", "log_lr_layer"), objective="mean_loss")
    fwd = ds.hypergrad(MODEL, TASK, _sweep(), mode="forward", **kw).squeeze()
    rev = ds.hypergrad(MODEL, TASK, _sweep(), mode="reverse", remat_every=5, **kw).squeeze()
    assert float(fwd["mean_loss"]) == pytest.approx(float(rev["mean_loss"]), rel=1e-14)  # one primal run each
    for name in kw["wrt"]:
        v = f"d_mean_loss_d_{name}"
        # As for forward against reverse above: float64 round-off over 23 steps.
        np.testing.assert_allclose(rev[v].values, fwd[v].values, rtol=1e-13, atol=0, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("objective, mode", [("final_test_loss", "forward"), ("mean_loss", "reverse")])
def test_other_objectives_match_central_differences(objective, mode, x64):
    g = ds.hypergrad(MODEL, TASK, _sweep(), steps=STEPS, wrt=("log_lr", "momentum"), objective=objective,
                     mode=mode, remat_every=6).squeeze()
    for name in ("log_lr", "momentum"):
        # As above: float64 round-off of a central difference, 1e-9 relative, with room for 20 steps.
        assert float(g[f"d_{objective}_d_{name}"]) == pytest.approx(_central(name, objective)[0], rel=1e-7), name


@pytest.mark.slow
def test_forward_equals_reverse_over_a_sweep_with_adam(x64):
    # Adam's update divides by sqrt(v), whose derivative dynsim.optim.scale_by_adam keeps finite at v = 0 (the
    # padded units of the width-8 members in the width-12 program).
    sweep = ds.Sweep(width=[8, 12], lr=[0.02, 0.1], seed=[0, 1], optimizer=["adam"], weight_decay=[0.01])
    names = ("log_lr", "log_init_scale", "weight_decay")
    fwd = ds.hypergrad(MODEL, TASK, sweep, steps=STEPS, wrt=names, mode="forward")
    rev = ds.hypergrad(MODEL, TASK, sweep, steps=STEPS, wrt=names, mode="reverse", remat_every=4)
    np.testing.assert_array_equal(fwd["final_loss"].values, rev["final_loss"].values)  # the same primal run
    for name in names:
        v = f"d_final_loss_d_{name}"
        assert np.isfinite(fwd[v].values).all()
        # As above, relative to the largest derivative of the sweep.
        scale = np.abs(fwd[v].values).max()
        np.testing.assert_allclose(rev[v].values, fwd[v].values, rtol=0, atol=1e-13 * scale, err_msg=name)
    assert int(fwd.attrs["steps"]) == STEPS and len(json.loads(fwd.attrs["buckets"])) == 1  # one padded program


@pytest.fixture(scope="module")
def rf_modes():
    """The closed-form modes of a random-feature member of width 16 in float64 (NTK parametrization: the readout's
    rate multiplier is 1), computed from its own features independently of the engine."""
    jax.config.update("jax_enable_x64", True)
    try:
        model = random_feature_model(4)
        sweep = ds.Sweep(width=[16], lr=[1.0], param=["ntk"])
        hyper = jax.tree.map(lambda a: a[0], member_hyper(sweep, np.arange(1)))
        scales = model.scales(hyper.width, hyper.abc, hyper.init_scale)
        w, v = jax.jit(model.init, static_argnums=1)(jax.random.wrap_key_data(hyper.key), 16, hyper.width, scales.std)
        data = TASK.make()
        a = np.asarray(scales.mult[1] * jax.nn.relu(scales.mult[0] * (w @ data.x_train))).T  # [P, n]
        residual = a @ np.asarray(v)[0] - np.asarray(data.y_train)[0]
        yield linear_gd.modes(a, residual, rate=float(scales.lr[1]))
    finally:
        jax.config.update("jax_enable_x64", False)


def test_random_features_match_the_closed_form_in_float64(rf_modes, x64):
    # The readout of random features is linear in its parameters, so the loss after T full-batch steps and its
    # derivative in lr are the eigenmode sums of dynsim.theory.linear_gd, computed here from the member's own
    # features independently of the engine.
    lam, w = rf_modes
    edge = 2.0 / lam.max()
    lrs = [0.3 * edge, 0.7 * edge, 0.95 * edge]
    g = ds.hypergrad(random_feature_model(4), TASK, ds.Sweep(width=[16], lr=lrs, param=["ntk"]), steps=STEPS,
                     wrt=("log_lr", "lr"), mode="forward").squeeze()
    loss = linear_gd.gd_loss(lam, w, lrs, STEPS)
    dloss = linear_gd.gd_loss_lr_derivative(lam, w, lrs, STEPS)
    # float64 round-off of 20 steps of matrix-vector products against an eigendecomposition: 1e-10 relative is
    # some 5e5 ulps, the bound of the engine's own linear-regression test over 200 steps.
    np.testing.assert_allclose(g["final_loss"].values, loss, rtol=1e-10)
    np.testing.assert_allclose(g["d_final_loss_d_lr"].values, dloss, rtol=1e-10)
    np.testing.assert_allclose(g["d_final_loss_d_log_lr"].values, np.asarray(lrs) * dloss, rtol=1e-10)
    assert dloss[0] < 0 and np.abs(dloss).min() > 1e-3  # a larger step trains further at first: not zeros


def test_a_diverging_member_gets_nan_and_leaves_the_others_alone(rf_modes, x64):
    lam, _ = rf_modes
    edge = 2.0 / lam.max()
    # Three members each, as in the closed-form test: the same compiled program.
    kw = dict(steps=STEPS, wrt=("log_lr", "lr"), mode="forward")
    model, calm = random_feature_model(4), [0.2 * edge, 0.5 * edge]
    alone = ds.hypergrad(model, TASK, ds.Sweep(width=[16], lr=calm + [0.8 * edge], param=["ntk"]), **kw).squeeze()
    # 3x the edge multiplies the top mode's residual by 2 per step: 4^20 ~ 1e12 times the loss, far past the
    # divergence test's 1e4, so the member diverges within a few steps.
    crowd = ds.hypergrad(model, TASK, ds.Sweep(width=[16], lr=calm + [3.0 * edge], param=["ntk"]), **kw).squeeze()
    bad = crowd.isel(lr=2)
    assert int(bad["diverged_at"]) >= 0
    for v in ("final_loss", "d_final_loss_d_log_lr", "d_final_loss_d_lr"):
        assert np.isnan(float(bad[v])), v
        # The same program and independent members: bit for bit.
        np.testing.assert_array_equal(crowd[v].isel(lr=[0, 1]).values, alone[v].isel(lr=[0, 1]).values)
    assert (alone["diverged_at"].values == -1).all()


@pytest.mark.parametrize("kwargs, words", [
    (dict(wrt=("momentum",), sweep=ds.Sweep(width=[8], lr=[0.1], optimizer=["adam"])), "adam does not have"),
    (dict(wrt=("beta1",)), "not a hyperparameter"),
    (dict(objective="accuracy"), "not one hypergrad computes"),
    (dict(mode="sideways"), "mode must be"),
    (dict(remat_every=0), "remat_every"),
    (dict(layout="packed"), "vmapped layout only"),
    (dict(steps=0), "steps"),
])
def test_bad_input_is_one_sentence_before_training(kwargs, words):
    args = dict(sweep=ds.Sweep(width=[8], lr=[0.1]), steps=STEPS)
    args.update(kwargs)
    with pytest.raises(ds.InputError, match=words) as e:
        ds.hypergrad(MODEL, TASK, **args)
    message = str(e.value)
    assert message.endswith(".") and message.count(". ") == 0, message


def test_reverse_mode_that_cannot_fit_memory_is_refused(monkeypatch):
    from dynsim.executor import _hypergrad

    monkeypatch.setattr(_hypergrad, "memory_limit", lambda: 2**20)  # a 1 MiB device
    with pytest.raises(ds.InputError, match="reverse mode .* use mode='forward'"):
        ds.hypergrad(MODEL, TASK, ds.Sweep(width=[256], lr=[0.1], seed=range(8)), steps=1000, mode="reverse")


@pytest.mark.slow
def test_derivative_grows_beyond_the_edge_at_the_rate_the_sharpness_gives(rf_modes, x64):
    # Beyond the stability edge the lr-derivative of a linear model's loss grows per step by
    # 2 log|1 - lr lambda_max| + log(T2 / T1) / (T2 - T1) (dynsim.theory.linear_gd.lr_derivative_growth), with
    # lambda_max the sharpness, measured here by the engine's own sharpness observable rather than taken from the
    # closed form.
    model, factor, (t1, t2) = random_feature_model(4), 1.1, (20, 40)
    lam, _ = rf_modes
    lr = factor * 2.0 / lam.max()
    sweep = ds.Sweep(width=[16], lr=[lr], param=["ntk"])
    sharp = ds.run(model, TASK, sweep, steps=1, record_every=1, observables=("sharpness",), progress=False)
    lam_max = float(sharp["sharpness"].isel(step=0).squeeze())
    kw = dict(wrt=("lr",), mode="forward", diverge_factor=1e30)  # let the loss grow: 1.2^80 is 2e6
    d1, d2 = (float(ds.hypergrad(model, TASK, sweep, steps=t, **kw)["d_final_loss_d_lr"].squeeze())
              for t in (t1, t2))
    measured = (np.log(abs(d2)) - np.log(abs(d1))) / (t2 - t1)
    predicted = linear_gd.lr_derivative_growth(lr, lam_max, t1, t2)
    # Tolerance: the other modes' share of the derivative at T1, (|1 - lr lambda_2| / |1 - lr lambda_max|)^(2 T1),
    # bounds how far the two-horizon slope can sit from the top mode's; the sharpness is a Rayleigh quotient
    # (docs/measurements.md) whose error on this 16-dimensional readout is at round-off after 5 products.
    second = np.sort(np.abs(1 - lr * lam))[-2] / abs(1 - lr * lam.max())
    tol = 2 * second ** (2 * t1) / (t2 - t1) + 1e-9
    assert measured == pytest.approx(predicted, abs=tol)
    # The competing law, no growth (a derivative bounded in T, as below the edge), is ruled out by far more.
    assert predicted > 0.1 > tol


def test_adam_is_optax_adam_with_a_finite_derivative_where_a_gradient_is_zero():
    import optax

    from dynsim import optim

    grads = [jnp.asarray(np.random.default_rng(i).normal(size=(4, 3)), jnp.float32) for i in range(3)]
    ours, theirs = optim.scale_by_adam(0.9, 0.999, 1e-8), optax.scale_by_adam(0.9, 0.999, 1e-8)
    s1, s2 = ours.init(grads[0]), theirs.init(grads[0])
    for g in grads:  # the same arithmetic: bit for bit
        (u1, s1), (u2, s2) = jax.jit(ours.update)(g, s1), jax.jit(theirs.update)(g, s2)
        np.testing.assert_array_equal(u1, u2)
    # A parameter whose gradient is exactly 0 (a padded unit, a frozen layer) has v = 0; its update m / (sqrt(v) +
    # eps) moves by dm / eps to first order, where sqrt's own derivative would give 0 * inf = NaN.
    zero = jnp.zeros(3)
    update = lambda g: ours.update(g, ours.init(zero))[0]
    _, tangent = jax.jvp(update, (zero,), (jnp.ones(3),))
    np.testing.assert_allclose(tangent, (1 - 0.9) / (1 - 0.9) / 1e-8, rtol=1e-6)  # m_hat = g: dm_hat = 1; float32
