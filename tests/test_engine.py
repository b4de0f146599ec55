"""Engine correctness: padding invariance, no retracing, divergence isolation, parametrization identities."""

import dataclasses
import json
import math

import chex
import jax
import numpy as np
import programs
import pytest
import roundoff

import dynsim as ds
from dynsim import executor
from dynsim.executor import _vmap
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent

TASK = TeacherStudent(d_in=8, n_train=64, n_test=64, seed=1)
MODEL = MLP(d_in=8, depth=3)


def _run(sweep, **kw):
    kw.setdefault("steps", 200)
    kw.setdefault("record_every", 20)
    return ds.run(MODEL, TASK, sweep, observables=("loss", "test_loss", "outputs"), progress=False, **kw)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 3e-3)])
def test_member_alone_equals_member_padded_in_bucket(optimizer, lr):
    # The member of width 24 runs alone at its exact width, then padded to 64 inside one bucket and one group
    # with members of other widths, learning rates and seeds. In float32 the two differ only by round-off, within
    # what the dynamics do to a one-ulp perturbation of the member's initial weights (tests/roundoff.py).
    member = ds.Sweep(width=[24], lr=[lr], seed=[3], param=["mup"], optimizer=[optimizer])
    alone = _run(member, group=1).squeeze()
    nudged = _run(roundoff.perturbed(member), group=1).squeeze()
    crowd = _run(ds.Sweep(width=[24, 40, 64], lr=[lr / 2, lr], seed=[2, 3], param=["sp", "mup"],
                          optimizer=[optimizer]), buckets=[[24, 40, 64]], group=8)
    assert crowd.attrs["buckets"].count(optimizer) == 1  # everything in one padded program
    c = crowd.sel(width=24, lr=lr, seed=3, param="mup").squeeze()
    for name in ("loss", "test_loss", "outputs"):
        roundoff.assert_same_trajectory(c[name], alone[name], nudged[name], name)
    assert float(alone["loss"][-1]) < 0.5 * float(alone["loss"][0])  # it trained


def test_padding_invariance_float64(x64):
    # In float64 the arithmetic is the same and only the order of sums over exact zeros differs: round-off of
    # 1e-16 per step. Over 200 stable steps (the float32 test above measures the growth of a one-ulp perturbation
    # at a few ulps) it stays below 200 * 8 ulps = 3.6e-13; 1e-12 is that bound.
    alone = _run(ds.Sweep(width=[24], lr=[0.1], seed=[3]), group=1)
    crowd = _run(ds.Sweep(width=[24, 64], lr=[0.1], seed=[3]), buckets=[[24, 64]], group=2)
    assert alone["loss"].dtype == np.float64
    np.testing.assert_allclose(crowd["loss"].sel(width=24).values, alone["loss"].squeeze("width").values,
                               rtol=1e-12)


def test_second_call_with_new_numbers_does_not_retrace(monkeypatch):
    # The engine's two programs (a group's init and segment), jitted as the engine jits them, around functions that
    # chex lets trace once: one bucket is one program, and a second trace raises.
    chex.clear_trace_counter()
    init = jax.jit(chex.assert_max_traces(_vmap._init_group, n=1), static_argnums=0)
    segment = jax.jit(chex.assert_max_traces(_vmap.run_segment.__wrapped__, n=1), static_argnums=0,
                      donate_argnums=2)
    monkeypatch.setattr(_vmap, "_init_jit", init)
    monkeypatch.setattr(_vmap, "_init_jit_cpu", init)
    monkeypatch.setattr(_vmap, "run_segment", segment)
    one = dict(steps=20, record_every=10, buckets=[[16, 32]])
    _run(ds.Sweep(width=[16, 32], lr=[0.1, 0.2], seed=[0, 1], weight_decay=[1e-4], momentum=[0.9]), **one)
    other = ds.Sweep(width=[16, 32], lr=[0.05, 0.3], seed=[5, 6], init_scale=[0.5], weight_decay=[1e-3],
                     momentum=[0.5])
    res = _run(other, **one)  # new numbers, same shapes: no trace
    assert np.isfinite(res["loss"].values).all()
    # Switching weight decay or momentum off altogether is a different (leaner) program, which traces anew.
    with pytest.raises(AssertionError, match="traced > 1 times"):
        _run(ds.Sweep(width=[16, 32], lr=[0.1, 0.2], seed=[0, 1]), **one)
    chex.clear_trace_counter()


def test_diverging_member_leaves_neighbours_unchanged():
    calm = ds.Sweep(width=[32], lr=[0.05, 0.1], seed=[0])
    wild = ds.Sweep(width=[32], lr=[0.05, 0.1, 1e3], seed=[0])
    a = _run(calm, group=2)
    nudged = _run(roundoff.perturbed(calm), group=2)
    b = _run(wild, group=4)
    div = b["diverged_at"].sel(lr=1e3).item()
    assert 0 <= div < 5
    assert np.isnan(b["loss"].sel(lr=1e3).isel(step=-1)).all()
    assert (b["diverged_at"].sel(lr=[0.05, 0.1]) == -1).all()
    # Same width, same per-member arithmetic, only the group size differs: round-off (tests/roundoff.py).
    roundoff.assert_same_trajectory(b["loss"].sel(lr=[0.05, 0.1]), a["loss"], nudged["loss"], "neighbours")


def test_mean_field_equals_mup_under_sgd():
    # MF is muP shifted by the abc symmetry (t = 1/2 on every layer): identical functions under SGD for all time.
    sweep = ds.Sweep(width=[16, 128], lr=[0.2], seed=[0], param=["mup", "mean_field"])
    res, nudged = _run(sweep, steps=60), _run(roundoff.perturbed(sweep), steps=60)
    mup, mf = res["loss"].sel(param="mup"), res["loss"].sel(param="mean_field")
    # The same function computed through other scale factors: each product rounds differently, a round-off
    # difference like a reordering (tests/roundoff.py).
    roundoff.assert_same_trajectory(mf, mup, nudged["loss"].sel(param="mup"), "mean field vs muP")


def test_padded_units_stay_zero():
    prog = executor.Program(model=MODEL, task=TASK, optimizer="adam", n_pad=32, record_every=5,
                            records_per_segment=2)
    from dynsim.executor import member_hyper

    sweep = ds.Sweep(width=[12], lr=[0.01], optimizer=["adam"], weight_decay=[0.1])
    hyper = member_hyper(sweep, np.arange(1))
    data = TASK.make()
    state, _ = executor.init_group(prog, data, hyper)
    state, _ = executor.run_segment(prog, data, state, hyper, 0)
    w_in, w_hidden, w_out = (np.asarray(p[0]) for p in state.params)
    assert np.abs(w_in[:12]).sum() > 0 and np.all(w_in[12:] == 0)
    assert np.all(w_hidden[12:] == 0) and np.all(w_hidden[:, 12:] == 0)
    assert np.all(w_out[:, 12:] == 0)


def test_sweep_validation_messages():
    with pytest.raises(ValueError, match="lr"):
        ds.Sweep(width=[8], lr=[-1.0])
    with pytest.raises(ValueError, match="optimizer"):
        ds.Sweep(width=[8], lr=[0.1], optimizer=["rmsprop"])
    with pytest.raises(ValueError, match="multiple"):
        _run(ds.Sweep(width=[8], lr=[0.1]), steps=25, record_every=10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(group=-2), "group must be an integer >= 1"),
    (dict(steps=20.0), "steps must be an integer"),
    (dict(batch_size=32.0), "batch_size must be an integer"),
    (dict(batch_size=128), "batch_size \\(128\\) exceeds the training set"),
    (dict(diverge_factor=-1), "diverge_factor must exceed 1"),
    (dict(betas=(0.9,)), "betas must be two numbers"),
    (dict(observables=["loss", "nope"]), "unknown observable 'nope'"),
    (dict(sweep={"width": [8], "lr": []}), "'lr' is empty"),
    (dict(sweep=[8]), "sweep must be a dynsim.Sweep"),
    (dict(model=TASK), "model must be a model spec"),
    (dict(task=MODEL), "task must be a task spec"),
])
def test_bad_arguments_fail_before_training_with_one_sentence(kwargs, match):
    args = dict(model=MODEL, task=TASK, sweep=ds.Sweep(width=[8], lr=[0.1]), steps=20, record_every=10,
                progress=False)
    args.update(kwargs)
    with pytest.raises(ds.InputError, match=match) as info:
        ds.run(args.pop("model"), args.pop("task"), args.pop("sweep"), **args)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")  # one sentence


def test_convenient_arguments_are_accepted():
    """A dict sweep, a bare observable name and repeated names mean what they say."""
    kw = dict(steps=10, record_every=10, progress=False)
    res = ds.run(MODEL, TASK, {"width": [8], "lr": [0.1]}, observables="loss", **kw)
    assert list(res.data_vars) == ["loss", "diverged_at"]
    again = ds.run(MODEL, TASK, ds.Sweep(width=[8], lr=[0.1]), observables=["loss", "loss"], **kw)
    np.testing.assert_array_equal(again["loss"].values, res["loss"].values)


def test_sweep_coordinates_are_the_numbers_typed():
    """float32 arrays (``jnp.logspace``) become the shortest decimals that round to them, so ``sel`` finds them."""
    import jax.numpy as jnp

    sweep = ds.Sweep(width=np.array([8, 16]), lr=jnp.logspace(-2, 0, 3), param=np.array(["sp", "mup"]))
    assert sweep.lr == (0.01, 0.1, 1.0) and sweep.width == (8, 16) and sweep.param == ("sp", "mup")
    assert ds.Sweep(width=[8], lr=list(jnp.logspace(-2, 0, 3))).lr == (0.01, 0.1, 1.0)  # JAX scalars too
    with pytest.raises(ValueError, match="2\\*\\*32"):
        ds.Sweep(width=[8], lr=[0.1], seed=[2**32])  # its key would equal seed 0's


def test_a_custom_parametrization_is_swept_under_its_name():
    """A table that equals muP's under another name trains muP's numbers; its exponents key the store."""
    mine = dataclasses.replace(ds.param.mup(), name="my_mup")
    kw = dict(steps=10, record_every=10, progress=False)
    custom = ds.run(MODEL, TASK, ds.Sweep(width=[8, 16], lr=[0.1], param=[mine, "sp"]), **kw)
    assert list(custom["param"].values) == ["my_mup", "sp"]
    mup = ds.run(MODEL, TASK, ds.Sweep(width=[8, 16], lr=[0.1], param="mup"), **kw)
    np.testing.assert_array_equal(custom["loss"].sel(param="my_mup").values, mup["loss"].sel(param="mup").values)
    assert json.loads(custom.attrs["spec"])["parametrizations"]["my_mup"]["a"] == list(mine.a)
    with pytest.raises(ValueError, match="built in with other exponents"):
        ds.Sweep(width=[8], lr=[0.1], param=[dataclasses.replace(mine, name="mup", a=(0.0, 0.0, 0.0))])


def test_superposition_refuses_a_param_sweep():
    model = ds.models.Superposition(n_features=8)
    task = ds.tasks.SparseFeatures(n_features=8)
    with pytest.raises(ds.InputError, match="does not use a parametrization"):
        ds.run(model, task, ds.Sweep(width=[4], lr=[0.1], param=["sp", "mup"], optimizer=["adamw"]), steps=10,
               record_every=10, batch_size=16)


def test_minibatch_and_online_run():
    online = TeacherStudent(d_in=8, n_train=0, n_test=64)
    res = ds.run(MODEL, online, ds.Sweep(width=[16], lr=[0.1]), steps=40, record_every=20, batch_size=16,
                 progress=False)
    assert np.isfinite(res["loss"].values).all()
    np.testing.assert_array_equal(res["loss"].values, res["test_loss"].values)  # population loss
    mini = ds.run(MODEL, TASK, ds.Sweep(width=[16], lr=[0.1]), steps=40, record_every=20, batch_size=16,
                  progress=False)
    assert mini["loss"].isel(step=-1).item() < mini["loss"].isel(step=0).item()


def test_runs_differing_only_in_the_task_seed_share_their_programs():
    # The task seed only draws the arrays the programs take (teacher, data, the key of the batch stream), so a run
    # on a second draw of the task compiles nothing (lr-annealing runs one draw per seed) and still trains on it.
    online = TeacherStudent(d_in=8, n_train=0, n_test=64, noise=0.5)
    go = lambda seed: ds.run(MODEL, dataclasses.replace(online, seed=seed), ds.Sweep(width=[16], lr=[0.1]), steps=20,
                             record_every=10, batch_size=16, progress=False)
    first, second = programs.second_run_compiles_nothing(go, 0, 1)
    assert not np.allclose(first["loss"].values, second["loss"].values)


SHARDED = """
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np, jax, dynsim as ds
from dynsim import executor
from dynsim.executor import _vmap
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent
task = TeacherStudent(d_in=8, n_train=64, n_test=64, seed=1)
sweep = ds.Sweep(width=[16, 24], lr=[0.05, 0.1, 1e4], seed=[0, 1, 2])
res = ds.run(MLP(d_in=8, depth=3), task, sweep, steps=40, record_every=20, progress=False)
two_layer = ds.run(MLP(d_in=8, depth=2), task, sweep, steps=20, record_every=20, dry_run=True)  # the layout a run uses
prog = executor.Program(model=MLP(d_in=8, depth=3), task=task, optimizer="sgd", n_pad=24, record_every=20,
                        records_per_segment=1)
hyper = _vmap.shard(executor.member_hyper(sweep, np.arange(4), 4))
state, _ = executor.init_group(prog, task.make(), hyper)
print(json.dumps({"devices": jax.device_count(), "shards": len(state.params[0].sharding.device_set),
                  "two_layer_layout": two_layer.layout,
                  "loss": np.nan_to_num(res["loss"].values, nan=-1.0).tolist()}))
"""


@pytest.mark.slow
def test_member_axis_is_sharded_over_devices_without_changing_results(tmp_path):
    import json
    import subprocess
    import sys

    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    out = json.loads(subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["shards"] == 2
    assert out["two_layer_layout"] == "vmap"  # auto packs small two-layer sweeps on one device, vmaps to shard
    sweep = ds.Sweep(width=[16, 24], lr=[0.05, 0.1, 1e4], seed=[0, 1, 2])
    single = ds.run(MLP(d_in=8, depth=3), TASK, sweep, steps=40, record_every=20, progress=False)
    nudged = ds.run(MLP(d_in=8, depth=3), TASK, roundoff.perturbed(sweep), steps=40, record_every=20,
                    progress=False)
    # Each member runs the same arithmetic on one or two devices, in groups split differently: round-off.
    sharded = single["loss"].copy(data=np.where(np.asarray(out["loss"]) == -1.0, np.nan, out["loss"]))
    roundoff.assert_same_trajectory(sharded, single["loss"], nudged["loss"], "sharded")


def test_memory_estimate_and_refusal():
    from dynsim.executor import Bucket, check_memory

    prog = executor.Program(model=MODEL, task=TASK, optimizer="adam", n_pad=1024, record_every=1,
                            records_per_segment=1)
    one, many = executor.memory_estimate(prog, 1), executor.memory_estimate(prog, 64)
    assert 0 < one < many and many > 60 * (one - executor.memory_estimate(prog, 0))  # grows with the group
    packed = dataclasses.replace(prog, layout="packed", model=MLP(d_in=8))
    assert executor.memory_estimate(packed, 64) == executor.memory_estimate(packed, 1)  # the pack is the group
    with pytest.raises(MemoryError, match="pass a smaller group"):
        check_memory(10**16, Bucket("sgd", 1024, np.arange(64), 64))


def test_groups_shrink_to_fit_the_device(monkeypatch):
    """Where a default group would not fit (here a pretend device with room for about 3 members), the engine plans
    smaller balanced groups instead of refusing; a group the caller forces is still refused."""
    from dynsim.executor import _plan

    sweep = ds.Sweep(width=[16], lr=[0.05, 0.1], seed=[0, 1, 2, 3, 4])
    kw = dict(steps=20, record_every=10, progress=False, layout="vmap")
    whole = ds.run(MODEL, TASK, sweep, **kw)
    nudged = ds.run(MODEL, TASK, roundoff.perturbed(sweep), **kw)
    assert json.loads(whole.attrs["buckets"])[0][3] == 10
    prog = executor.Program(model=MODEL, task=TASK, optimizer="sgd", n_pad=16, record_every=10,
                            records_per_segment=2)
    monkeypatch.setattr(_plan, "memory_limit", lambda: math.ceil(executor.memory_estimate(prog, 3) / 0.8))
    small = ds.run(MODEL, TASK, sweep, **kw)
    assert json.loads(small.attrs["buckets"])[0][3] == 3  # 10 -> 5 -> 3 members per group
    # Only the group size differs, the per-member arithmetic is the same: round-off (tests/roundoff.py).
    roundoff.assert_same_trajectory(small["loss"], whole["loss"], nudged["loss"], "smaller groups")
    with pytest.raises(MemoryError, match="pass a smaller group"):
        ds.run(MODEL, TASK, sweep, group=10, **kw)
    # Over two devices each holds half a group: a group of 6 fits (3 per device) and stays a multiple of 2.
    bucket = executor.Bucket("sgd", 16, np.arange(10), 10)
    fitted = executor.fit_groups([bucket], lambda b: prog, n_dev=2)[0]
    assert fitted.group == 6 and fitted.group % 2 == 0
    monkeypatch.setattr(_plan, "memory_limit", lambda: 1)  # nothing fits: the group stops at one per device
    assert executor.fit_groups([bucket], lambda b: prog, n_dev=2)[0].group == 2
    with pytest.raises(MemoryError, match="a group of 1 member at width 16 .* use a smaller width or batch"):
        executor.check_memory(10**16, executor.Bucket("sgd", 16, np.arange(1), 1))


def test_auto_layout_leaves_packs_that_would_not_fit(monkeypatch):
    from dynsim.executor import _plan

    model, sweep = MLP(d_in=8), ds.Sweep(width=[16, 24], lr=[0.1], seed=[0, 1])
    kw = dict(steps=20, record_every=10, progress=False)
    packed = ds.run(model, TASK, sweep, **kw)
    nudged = ds.run(model, TASK, roundoff.perturbed(sweep), **kw)
    assert packed.attrs["layout"] == "packed"
    one = executor.Program(model=model, task=TASK, optimizer="sgd", n_pad=24, record_every=10,
                           records_per_segment=2)
    monkeypatch.setattr(_plan, "memory_limit", lambda: math.ceil(executor.memory_estimate(one, 1) / 0.8))
    vmapped = ds.run(model, TASK, sweep, **kw)  # a pack (both widths' units side by side) no longer fits
    assert vmapped.attrs["layout"] == "vmap" and all(b[3] == 1 for b in json.loads(vmapped.attrs["buckets"]))
    # Layouts differ in summation order only (tests/test_packed.py): round-off (tests/roundoff.py).
    roundoff.assert_same_trajectory(vmapped["loss"], packed["loss"], nudged["loss"], "vmap vs packed")


def _chunked_vs_whole(optimizer, lr):
    sweep = ds.Sweep(width=[24, 40], lr=[lr], seed=[3], param=["mup"], optimizer=[optimizer])
    whole = _run(sweep, layout="vmap", sample_chunk=0)
    chunked = _run(sweep, layout="vmap", sample_chunk=16)
    assert float(whole["loss"].isel(step=-1).max()) < 0.5 * float(whole["loss"].isel(step=0).min())  # it trained
    return whole, chunked, sweep


def test_sample_chunked_gradient_equals_whole_batch_sgd():
    # Accumulating a step's gradient over 4 chunks of 16 samples changes only a summation order: round-off
    # (tests/roundoff.py).
    whole, chunked, sweep = _chunked_vs_whole("sgd", 0.1)
    nudged = _run(roundoff.perturbed(sweep), layout="vmap", sample_chunk=0)
    for name in ("loss", "test_loss"):
        roundoff.assert_same_trajectory(chunked[name], whole[name], nudged[name], name)


def test_sample_chunked_gradient_equals_whole_batch_adam_float64(x64):
    # Adam divides each gradient entry by its own running RMS, so a weight whose gradient is pure round-off gets an
    # O(lr) step whatever the summation order: in float32 a reordered sum moves the loss by ~3e-4 relative. In
    # float64 the round-off is 1e-16, and 200 steps keep it far below 1e-10.
    whole, chunked, _ = _chunked_vs_whole("adam", 3e-3)
    for name in ("loss", "test_loss"):
        np.testing.assert_allclose(chunked[name].values, whole[name].values, rtol=1e-10)


def test_sample_chunk_must_divide_the_batch():
    with pytest.raises(ds.InputError, match="sample_chunk"):
        _run(ds.Sweep(width=[16], lr=[0.1]), sample_chunk=48)


def test_adam_members_differing_only_in_momentum_train_once(tmp_path):
    # Adam has no heavy-ball coefficient: its momentum = 0 and 0.5 members are one training, stored under both.
    sweep = ds.Sweep(width=[16], lr=[3e-3], seed=[0, 1], optimizer=["sgd", "adam"], momentum=[0.0, 0.5])
    np.testing.assert_array_equal(sweep.sources().reshape(2, 2, 2), [[[0, 1], [2, 3]], [[4, 4], [6, 6]]])
    res = _run(sweep, steps=20, out=tmp_path)
    assert json.loads(res.attrs["timing"])["members"] == 6
    adam, sgd = res.sel(optimizer="adam").squeeze(), res.sel(optimizer="sgd").squeeze()
    np.testing.assert_array_equal(adam["loss"].sel(momentum=0.5).values, adam["loss"].sel(momentum=0.0).values)
    assert np.isfinite(adam["loss"].values).all()
    assert not np.array_equal(sgd["loss"].sel(momentum=0.5).values, sgd["loss"].sel(momentum=0.0).values)
    # The copies are stored with their source: resuming the complete store trains nothing.
    again = _run(sweep, steps=20, out=tmp_path)
    assert json.loads(again.attrs["timing"])["members"] == 0
    np.testing.assert_array_equal(again["loss"].values, res["loss"].values)
