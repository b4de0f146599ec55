"""The observable registry: shared computations run once per record and carry one state."""

import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds
from dynsim import obs


@pytest.fixture
def counted(monkeypatch):
    """Two observables reading one shared computation that counts its calls and carries a counter state."""
    monkeypatch.setattr(obs, "_REGISTRY", dict(obs._REGISTRY))
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
