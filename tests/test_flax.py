"""FlaxModel: a Flax network (nnx or linen) as a dynsim model. Roles from shapes at two widths, the MLP's trajectory
from the same weights, observables against explicit references, the lr-transfer sweep, and refused factories."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx
from jax.flatten_util import ravel_pytree

import dynsim as ds
from dynsim.experiments import lr_transfer
from dynsim.models import ACTIVATIONS, MLP, FlaxModel
from dynsim.tasks import TeacherStudent

D_IN = 8
TASK = TeacherStudent(d_in=D_IN, n_train=64, n_test=64, seed=1)
RELU_GAIN = ACTIVATIONS["relu"][1]  # He init, as MLP's ReLU layers that read an activation


X = np.random.default_rng(0).standard_normal((D_IN, 16), np.float32)  # inputs [d_in, P] for tests that do not train


class LinenTwoLayer(linen.Module):
    width: int

    @linen.compact
    def __call__(self, x):
        h = linen.relu(linen.Dense(self.width, use_bias=False, name="hidden")(x))
        return linen.Dense(1, use_bias=False, name="readout")(h)


class NnxTwoLayer(nnx.Module):
    def __init__(self, width, rngs):
        self.hidden = nnx.Linear(D_IN, width, use_bias=False, rngs=rngs)
        self.readout = nnx.Linear(width, 1, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.readout(nnx.relu(self.hidden(x)))


class LinenDeep(linen.Module):
    """Biases, a hidden layer and a normalisation: every role and both kinds of vector-like parameters."""

    width: int
    act: str = "tanh"

    @linen.compact
    def __call__(self, x):
        phi = getattr(linen, self.act)
        h = phi(linen.Dense(self.width, name="a_in")(x))
        h = linen.LayerNorm(name="b_norm")(h)
        h = phi(linen.Dense(self.width, name="c_hidden")(h))
        return linen.Dense(1, name="d_out")(h)


class LinenBiased(linen.Module):
    """A two-layer tanh network with biases: the observables' directions must cover the biases too."""

    width: int

    @linen.compact
    def __call__(self, x):
        return linen.Dense(1, name="readout")(linen.tanh(linen.Dense(self.width, name="hidden")(x)))


def linen_two_layer(width):
    return LinenTwoLayer(width=width)


def linen_biased(width):
    return LinenBiased(width=width)


def nnx_two_layer(width):
    return NnxTwoLayer(width, nnx.Rngs(0))


def linen_deep(width):
    return LinenDeep(width=width)


def linen_deep_relu(width):
    return LinenDeep(width=width, act="relu")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FromMLPWeights(FlaxModel):
    """A two-layer FlaxModel that starts from MLP's initial weights: MLP's ``[fan_out, fan_in]`` matrices,
    transposed to Flax's ``[fan_in, fan_out]`` kernels."""

    def init(self, key, n_pad, width, std):
        return tuple(w.T for w in MLP(d_in=self.d_in).init(key, n_pad, width, std))


def _run(model, sweep, observables=("loss", "test_loss", "outputs"), **kw):
    kw.setdefault("steps", 60)
    kw.setdefault("record_every", 10)
    return ds.run(model, TASK, sweep, observables=observables, progress=False, **kw)


def test_roles_are_inferred_from_shapes_at_two_widths():
    deep = FlaxModel(factory=linen_deep, d_in=D_IN)
    assert deep.paths() == ("a_in.bias", "a_in.kernel", "b_norm.bias", "b_norm.scale", "c_hidden.bias",
                            "c_hidden.kernel", "d_out.bias", "d_out.kernel")
    # Biases and norm parameters follow their fan-out: input-like (role 0), the readout's bias included.
    assert deep.roles == (0, 0, 0, 0, 0, 1, 0, 2)
    assert deep.decayed == (False, True, False, False, False, True, False, True)
    assert deep.shapes(24)[5] == (24, 24)
    assert deep.activation_units(24) == 48  # the two layers of 24 units; the readout's fan-out does not grow
    assert deep.width_of([jax.ShapeDtypeStruct(s, jnp.float32) for s in deep.shapes(40)]) == 40
    # The parametrization's factors are MLP's, bit for bit, for every built-in table.
    tables = np.stack([ds.param.get(name).table(opt) for name in ds.param.NAMES for opt in ("sgd", "adam")])
    want = jax.jit(jax.vmap(lambda abc: MLP(d_in=D_IN).scales(24, abc, 0.7)))(tables)
    for factory in (linen_two_layer, nnx_two_layer):
        model = FlaxModel(factory=factory, d_in=D_IN, gain=RELU_GAIN)
        assert model.roles == MLP(d_in=D_IN).roles == (0, 2)
        got = jax.jit(jax.vmap(lambda abc, m=model: m.scales(24, abc, 0.7)))(tables)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_vector_like_parameters_start_at_the_modules_values():
    # dynsim draws the kernels; biases and the norm start where Flax's initializers put them (zeros, ones), and the
    # module sees n^-a times the trained tensor (plus that start).
    model = FlaxModel(factory=linen_deep, d_in=D_IN)
    start = {"a_in.bias": 0.0, "b_norm.bias": 0.0, "b_norm.scale": 1.0, "c_hidden.bias": 0.0, "d_out.bias": 0.0}

    @jax.jit
    def both(x):
        scales = model.scales(24, ds.param.mup().table(), 1.0)
        params = model.init(jax.random.key(0), 24, 24, scales.std)
        nudged = tuple(p + 0.1 * (i + 1) for i, p in enumerate(params))  # every tensor moved, vectors too
        flat = {}
        for i, (path, w) in enumerate(zip(model.paths(), nudged)):
            layer, name = path.split(".")
            flat.setdefault(layer, {})[name] = start.get(path, 0.0) + scales.mult[i] * w
        want = LinenDeep(width=24).apply({"params": flat}, x.T).T
        return params, model.apply(nudged, x, scales.mult, jnp.ones(24)), want

    params, got, want = both(X)
    assert all(float(jnp.abs(p).max()) == 0 for p, w in zip(params, model.decayed) if not w)
    assert all(float(jnp.abs(p).max()) > 0 for p, w in zip(params, model.decayed) if w)
    np.testing.assert_array_equal(got, want)


def test_nnx_and_linen_factories_are_the_same_model():
    a = FlaxModel(factory=linen_two_layer, d_in=D_IN, gain=RELU_GAIN)
    b = FlaxModel(factory=nnx_two_layer, d_in=D_IN, gain=RELU_GAIN)

    @jax.jit
    def outputs(x):
        scales = a.scales(32, ds.param.ntk().table(), 1.0)
        params = a.init(jax.random.key(1), 32, 32, scales.std)
        return a.apply(params, x, scales.mult, None), b.apply(params, x, scales.mult, None)

    np.testing.assert_array_equal(*outputs(X))


@pytest.mark.parametrize("factory,optimizer,lrs", [
    (linen_two_layer, "sgd", [0.05, 0.2]),
    pytest.param(nnx_two_layer, "adam", [1e-2, 3e-2], marks=pytest.mark.slow),
])
def test_same_trajectory_as_mlp_from_the_same_weights(x64, factory, optimizer, lrs):
    # Every built-in parametrization (the param axis is traced: one program per model). MLP multiplies the product,
    # n^-a (W x); the Flax model multiplies the weight, (n^-a W) x, and sums in Flax's [batch, features] layout: the
    # same arithmetic up to the rounding of each multiply and the order of sums, 1e-16 relative in float64 (float32
    # would need the one-ulp dynamics bound of tests/roundoff.py instead). Over 60 stable steps the round-off grows
    # by a few ulps per step at most, so 1e-12 of the record's scale (the padding test's float64 bound) holds with
    # margin (measured: 3e-16), while a wrong role, multiplier, init std or learning rate moves the trajectory at
    # the 1e-2 level within a few steps.
    sweep = ds.Sweep(width=[24], lr=lrs, seed=[3], param=list(ds.param.NAMES), optimizer=[optimizer])
    flax_run = _run(FromMLPWeights(factory=factory, d_in=D_IN, gain=RELU_GAIN), sweep)
    mlp_run = _run(MLP(d_in=D_IN), sweep)
    assert flax_run["loss"].dtype == np.float64
    assert (mlp_run["diverged_at"] == -1).all()
    assert float((mlp_run["loss"].isel(step=-1) / mlp_run["loss"].isel(step=0)).max()) < 0.5  # it trained
    for name in ("loss", "test_loss", "outputs"):
        want = mlp_run[name].values
        np.testing.assert_allclose(flax_run[name].values, want, rtol=0, atol=1e-12 * np.abs(want).max(),
                                   err_msg=name)


@pytest.mark.slow
def test_sharpness_and_ntk_match_explicit_references(x64):
    # The observables at init against references computed densely: the Hessian's top eigenvalue from eigvalsh of
    # jax.hessian, the NTK's eigenvalues from the explicit Jacobian (J J^T), on a network with biases (161
    # parameters: dense is cheap).
    model = FlaxModel(factory=linen_biased, d_in=D_IN, smooth=True)
    width, seed, lr = 16, 2, 0.05
    sweep = ds.Sweep(width=[width], lr=[lr], seed=[seed], param=["mup"])
    res = _run(model, sweep, observables=("loss", "sharpness", "sharpness_err", "ntk_eigs"), steps=20)
    for name in ("loss", "sharpness", "ntk_eigs"):
        assert np.isfinite(res[name].values).all(), name
    scales = model.scales(width, ds.param.mup().table(), 1.0)
    params = model.init(jax.random.key(seed), width, width, scales.std)
    data = TASK.make()
    flat, unravel = ravel_pytree(params)
    loss = lambda v: model.loss(model.apply(unravel(v), data.x_train, scales.mult, None), data.y_train)
    top = float(jnp.linalg.eigvalsh(jax.jit(jax.hessian(loss))(flat))[-1])
    got, err = (float(res[n].isel(step=0).squeeze()) for n in ("sharpness", "sharpness_err"))
    # A Ritz value lies within its residual norm of an eigenvalue of the (symmetric) Hessian; the estimate converged
    # to the top one, so |got - top| <= err, with float64 round-off (1e-12 relative) on top.
    assert abs(got - top) <= err + 1e-12 * abs(top), (got, top, err)
    assert err < 1e-3 * abs(top)  # and it converged
    k = min(32, TASK.n_test)
    jac = jax.jit(jax.jacrev(lambda v: model.apply(unravel(v), data.x_test[:, :k], scales.mult, None)[0]))(flat)
    want = np.linalg.eigvalsh(np.asarray(jac @ jac.T))[::-1]
    # Two float64 routes to one k x k Gram matrix (VJP-JVP columns against J J^T): round-off of the largest
    # eigenvalue, 1e-12 of it, bounds every eigenvalue's error.
    np.testing.assert_allclose(res["ntk_eigs"].isel(step=0).squeeze().values, want, rtol=0, atol=1e-12 * want[0])


@pytest.mark.slow
def test_lr_transfer_sweep_runs_on_a_flax_model():
    # lr-transfer's sweep (every parametrization, SGD and Adam, a learning-rate grid) at two small widths, then its
    # analysis' optimum per curve. A Flax model is never padded: each width is its own bucket at its exact size.
    axes = lr_transfer.DEFAULTS["sweep"]
    sweep = ds.Sweep(width=[16, 32], lr=np.logspace(-2, 0, 3), seed=[0, 1], param=axes["param"],
                     optimizer=axes["optimizer"])
    model = FlaxModel(factory=nnx_two_layer, d_in=D_IN, gain=RELU_GAIN)
    res = _run(model, sweep, observables=("loss", "test_loss"), steps=20)
    assert sorted((o, n) for o, n, *_ in json.loads(res.attrs["buckets"])) == [
        ("adam", 16), ("adam", 32), ("sgd", 16), ("sgd", 32)]
    smallest = res["loss"].sel(lr=0.01)
    assert np.isfinite(smallest.values).all()
    assert bool((smallest.isel(step=-1) < smallest.isel(step=0)).all())  # every member at the smallest rate trains
    point, _ = lr_transfer.optimal_lr(res, n_boot=10)
    assert point.shape == (2, 4, 2)


def test_plan_gives_each_width_its_own_program():
    model = FlaxModel(factory=linen_two_layer, d_in=D_IN, gain=RELU_GAIN)
    sweep = ds.Sweep(width=[16, 24, 32], lr=[0.1, 0.2])
    buckets = ds.executor.plan(sweep, model, steps=100, batch=64)
    assert [(b.n_pad, sorted(set(sweep.members()["width"][b.members]))) for b in buckets] == [
        (16, [16]), (24, [24]), (32, [32])]
    with pytest.raises(ValueError, match="cannot be padded"):
        ds.executor.plan(sweep, model, steps=100, batch=64, buckets=[[16, 24], [32]])
    assert ds.executor.choose_layout("auto", model, ("loss",), sweep, 64) == "vmap"


def test_model_identity_is_stable_and_names_the_computation():
    a = FlaxModel(factory=linen_deep, d_in=D_IN)
    assert a == FlaxModel(factory=linen_deep, d_in=D_IN) and hash(a) == hash(FlaxModel(factory=linen_deep, d_in=D_IN))
    # A results directory keys on dataclasses.asdict(model) printed as JSON: no memory address, and the digest of
    # the module's computation changes with what it computes (ReLU for tanh here), so a factory of the same name that
    # builds another network gets another key.
    key = json.dumps(dataclasses.asdict(a), default=str)
    assert "0x" not in key and "linen_deep" in key
    other = FlaxModel(factory=linen_deep_relu, d_in=D_IN)
    assert str(other.factory).split()[1] != str(a.factory).split()[1]


class Frozen(nnx.Module):
    def __init__(self, width, rngs):
        self.layer = nnx.Linear(D_IN, 1, rngs=rngs)

    def __call__(self, x):
        return self.layer(x)


class WithBatchNorm(linen.Module):
    width: int

    @linen.compact
    def __call__(self, x):
        h = linen.BatchNorm(use_running_average=True)(linen.Dense(self.width)(x))
        return linen.Dense(1)(h)


@pytest.mark.parametrize("factory,d_out,match", [
    (lambda n: Frozen(n, nnx.Rngs(0)), 1, "same parameter shapes at widths 8 and 16"),
    (lambda n: WithBatchNorm(width=n), 1, "holds state"),
    (linen_two_layer, 2, r"must return one array \[batch, d_out\] = \[3, 2\]"),
    (lambda n: n, 1, "must return a flax.nnx.Module or a flax.linen.Module"),
])
def test_bad_factories_are_refused_with_a_sentence(factory, d_out, match):
    with pytest.raises(ValueError, match=match):
        FlaxModel(factory=factory, d_in=D_IN, d_out=d_out)
