"""Models, parametrization tables, sweeps and the planner."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds
from dynsim import param
from dynsim.executor import group_size, plan
from dynsim.executor._plan import _bucket_widths
from dynsim.models import MLP, uv


def test_init_does_not_depend_on_padding():
    model = MLP(d_in=5, depth=3)
    key = jax.random.key(7)
    std = model.scales(20, param.mup().table(), 1.0).std
    exact = model.init(key, 20, 20, std)
    padded = model.init(key, 64, 20, std)
    chex.assert_trees_all_equal(tuple(p[:e.shape[0], :e.shape[1]] for e, p in zip(exact, padded)), exact)
    for e, p in zip(exact, padded):
        rows, cols = e.shape
        assert np.all(np.asarray(p)[rows:, :] == 0) and np.all(np.asarray(p)[:, cols:] == 0)


@pytest.mark.parametrize("name", ["sp", "ntk", "mup", "mean_field"])
def test_init_and_forward_scales_follow_the_table(name):
    # Empirical std of each layer's weights at true width n = 2048 matches init_scale * gain * n^-b (d^-1/2 for
    # the input layer), within 4 relative standard errors of a std estimated from N draws, 1/sqrt(2N).
    n, d = 2048, 8
    model = MLP(d_in=d, depth=3)
    p = param.get(name)
    sc = model.scales(n, p.table("sgd"), 1.5)
    ws = model.init(jax.random.key(0), n, n, sc.std)
    a, b, c = p.a, p.b, p.c
    expected = [1.5 / np.sqrt(d) * n ** -b[0], 1.5 * np.sqrt(2) * n ** -b[1], 1.5 * np.sqrt(2) * n ** -b[2]]
    for w, e in zip(ws, expected):  # 4 s.e.: 2.2% input, 0.14% hidden, 6.2% readout (N = 2048)
        assert abs(float(jnp.std(w)) / e - 1) < 4 / np.sqrt(2 * w.size), (w.shape, float(jnp.std(w)) / e)
    # float32 rounding of n^-a and n^-c, one or two roundings (eps 1.2e-7).
    np.testing.assert_allclose(np.asarray(sc.mult), [n ** -a[0], n ** -a[1], n ** -a[2]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sc.lr), [n ** -c[0], n ** -c[1], n ** -c[2]], rtol=1e-6)


def test_adam_tables_differ_from_sgd_where_theory_says():
    assert param.mup().table("adam")[2].tolist() == [0.5, 1.0, 0.5]
    assert param.sp().table("adam")[2].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown parametrization"):
        param.get("xavier")


def test_model_specs_hash_by_value_and_validate():
    assert hash(MLP(d_in=3, depth=4)) == hash(MLP(d_in=3, depth=4))
    assert uv(2) == MLP(d_in=2, depth=2, act="linear")
    with pytest.raises(ValueError, match="depth"):
        MLP(d_in=3, depth=1)
    with pytest.raises(ValueError, match="act"):
        MLP(d_in=3, act="gelu")


def test_uv_model_is_v_dot_u_x_over_sqrt_n():
    model, n = uv(1), 50
    sc = model.scales(n, param.ntk().table(), 1.0)
    u, v = model.init(jax.random.key(1), n, n, sc.std)
    x = jnp.asarray([[0.3, -1.2]])
    expected = (v @ (u @ x)) / np.sqrt(n)
    # float32, the same products; n^-1/2 against / sqrt(n) differ by an ulp or two (eps 1.2e-7).
    np.testing.assert_allclose(model.apply((u, v), x, sc.mult, jnp.ones(n)), expected, rtol=1e-6)


def test_bucketing_cost_model():
    flops = lambda n: float(n)
    # Free compiles: every width alone. Expensive compiles: one bucket.
    assert _bucket_widths([1, 2, 4, 8], [1, 1, 1, 1], flops, 0.0) == [[1], [2], [4], [8]]
    assert _bucket_widths([1, 2, 4, 8], [1, 1, 1, 1], flops, 1e9) == [[1, 2, 4, 8]]
    # A moderate compile cost merges the cheap small widths but keeps the expensive large one apart.
    assert _bucket_widths([1, 2, 4, 64], [1, 1, 1, 1], flops, 5.0) == [[1, 2, 4], [64]]


def test_plan_covers_every_member_once_and_skips_done():
    sweep = ds.Sweep(width=[8, 16, 300], lr=[0.1, 0.2, 0.3], seed=[0, 1], optimizer=["sgd", "adam"])
    model = MLP(d_in=4)
    buckets = plan(sweep, model, steps=10, batch=32)
    members = np.concatenate([b.members for b in buckets])
    assert sorted(members.tolist()) == list(range(sweep.size))
    for b in buckets:
        table = sweep.members()
        assert set(table["optimizer"][b.members]) == {b.optimizer}
        assert table["width"][b.members].max() == b.n_pad
        assert 1 <= b.group <= len(b.members)
    done = np.zeros(sweep.size, bool)
    done[:5] = True
    rest = np.concatenate([b.members for b in plan(sweep, model, steps=10, batch=32, done=done)])
    assert sorted(rest.tolist()) == list(range(5, sweep.size))


def test_group_size_rules():
    assert group_size(4096, 1024, 64, backend="cpu") == 1  # a 16 MB member runs alone
    # 16 MB slabs hold 30 members of 0.5 MB; 64 members then split into 3 balanced groups of 22, not 30+30+4.
    assert group_size(128, 1024, 64, backend="cpu") == 22
    assert group_size(16, 128, 64, backend="cpu") == 64  # small members: the whole bucket
    assert group_size(1024, 1024, 64, backend="gpu") == 64  # accelerators: the whole bucket
    assert group_size(128, 1024, 5, backend="cpu", slab_bytes=4 * 128 * 1024 * 4) == 3  # 5 -> 3 + 2, not 4 + 1
