"""The observable registry: shared computations run once per record and carry one state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds
from dynsim import observables as obs
from dynsim.observables import _registry


@pytest.fixture
def counted(monkeypatch):
    """Two observables reading one shared computation that counts its calls and carries a counter state."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    calls = []

    def compute(ctx, params, extra):
        calls.append(extra)
        return {"a": params + extra, "b": 2 * params}, extra + 1

    shared = obs.Shared("test:counted", compute, init_extra=lambda ctx, params: jnp.asarray(10.0))
    obs.register(obs.Observable("test_a", None, "a", shared=shared, part="a"))
    obs.register(obs.Observable("test_b", None, "b", shared=shared, part="b"))
    return calls


def test_shared_computation_runs_once_for_all_its_observables(counted):
    names = ("test_a", "test_b")
    extra = obs.init_extras(names, None, jnp.asarray(1.0))
    assert set(extra) == {"test:counted"}
    values, extra = obs.record(names, None, jnp.asarray(1.0), extra)
    assert len(counted) == 1
    assert float(values["test_a"]) == 11.0 and float(values["test_b"]) == 2.0
    assert float(extra["test:counted"]) == 11.0  # advanced once, not once per observable
    values, _ = obs.record(("test_b",), None, jnp.asarray(1.0), extra)
    assert len(counted) == 2 and float(values["test_b"]) == 2.0


def test_observable_reading_a_shared_computation_alone_still_computes(counted):
    value, new = obs.get("test_a").compute(None, jnp.asarray(1.0), jnp.asarray(3.0))
    assert float(value) == 4.0 and float(new) == 4.0


def test_shared_key_may_not_be_an_observable_name(counted):
    with pytest.raises(ValueError, match="key equals"):
        obs.register(obs.Observable("test:counted", lambda ctx, p, e: (p, None), "clash"))
    with pytest.raises(ValueError, match="exactly one"):
        obs.Observable("test_c", None, "neither")


def test_sharpness_and_its_error_read_one_iteration():
    """Recording ``sharpness_err`` beside ``sharpness`` leaves ``sharpness`` bit-for-bit unchanged: one iterate."""
    model = ds.models.MLP(d_in=3, depth=2, act="tanh")
    task = ds.tasks.TeacherStudent(d_in=3, n_train=10, n_test=10, seed=0)
    sweep = ds.Sweep(width=[8], lr=[0.05])
    kw = dict(steps=20, record_every=5, progress=False)
    alone = ds.run(model, task, sweep, observables=("sharpness",), **kw)
    both = ds.run(model, task, sweep, observables=("sharpness", "sharpness_err"), **kw)
    np.testing.assert_array_equal(alone["sharpness"].values, both["sharpness"].values)
    assert np.all(both["sharpness_err"].values >= 0)


def test_an_observable_registered_anew_takes_effect_in_the_next_run(monkeypatch, tmp_path):
    """Compiled programs are keyed by the observables' definitions: a notebook's edited observable is not served
    from the program compiled for its earlier version."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    model, task = ds.models.MLP(d_in=3, depth=2), ds.tasks.TeacherStudent(d_in=3, n_train=8, n_test=8)
    sweep = ds.Sweep(width=[4], lr=[0.1])
    kw = dict(steps=2, record_every=1, progress=False, observables=("test_norm",))
    sq = lambda ctx, p, e: (sum(jnp.sum(w**2) for w in jax.tree.leaves(p)), None)
    obs.register(obs.Observable("test_norm", sq, "squared norm"))
    squared = ds.run(model, task, sweep, out=tmp_path / "run", **kw)["test_norm"].values
    obs.register(obs.Observable("test_norm", lambda ctx, p, e: (jnp.sqrt(sq(ctx, p, e)[0]), None), "norm"))
    with pytest.raises(ds.io.MetaMismatch):  # the stored squared norms are not served as norms
        ds.run(model, task, sweep, out=tmp_path / "run", **kw)
    norm = ds.run(model, task, sweep, **kw)["test_norm"].values
    np.testing.assert_allclose(norm**2, squared, rtol=1e-6)  # float32 round-off of a square root
    assert not np.allclose(norm, squared)


def test_observables_of_dynsim_cannot_be_replaced():
    with pytest.raises(ValueError, match="defined by dynsim"):
        obs.register(obs.Observable("loss", lambda ctx, p, e: (0.0, None), "not the loss"))
    assert obs.register(obs.get("loss")) is obs.get("loss")  # registering the same object again is harmless


def test_observables_refuse_models_they_do_not_apply_to():
    sweep = ds.Sweep(width=[4], lr=[0.1])
    mlp, task = ds.models.MLP(d_in=3, depth=2), ds.tasks.TeacherStudent(d_in=3, n_train=8, n_test=8)
    with pytest.raises(ds.InputError, match="'represented_fraction' applies to models with one direction per "
                                            "feature \\(superposition\\), not to MLP"):
        ds.run(mlp, task, sweep, steps=2, record_every=1, observables=["represented_fraction"])
    linear = ds.models.Linearized(base=ds.models.MLP(d_in=3, depth=2))
    with pytest.raises(ds.InputError, match="'preact_rms' applies to models whose apply returns pre-activations"):
        ds.run(linear, task, sweep, steps=2, record_every=1, observables=["preact_rms"])
