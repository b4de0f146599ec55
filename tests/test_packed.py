"""The packed layout (two-layer members of any widths side by side) against the vmapped layout."""

import numpy as np
import pytest
import roundoff

import dynsim as ds
from dynsim.executor import pack_members
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent

TASK = TeacherStudent(d_in=8, n_train=64, n_test=64, seed=1)


@pytest.mark.parametrize("optimizer,lr,extra,act", [
    ("sgd", 0.1, {}, "relu"),
    # With momentum a ReLU unit whose pre-activation sits at the kink can flip on a 1e-7 round-off difference and
    # the velocity carries the jump (seen: 7e-5 on one member in 24); a smooth activation isolates the layouts.
    ("sgd", 0.02, {"weight_decay": [1e-3], "momentum": [0.9]}, "tanh"),
    ("adam", 3e-3, {}, "relu"),
    ("adamw", 3e-3, {"weight_decay": [1e-2]}, "relu"),
])
def test_packed_equals_vmapped(optimizer, lr, extra, act):
    # Members of three widths, two parametrizations and a diverging learning rate share packs; each member's
    # trajectory must match the vmapped layout to round-off: the layouts sum the readout in different orders
    # (tests/roundoff.py bounds that by what the dynamics do to a one-ulp perturbation).
    sweep = ds.Sweep(width=[8, 24, 40], lr=[lr, 1e4], seed=[2, 3], param=["sp", "mup"], optimizer=[optimizer],
                     **extra)
    kw = dict(steps=200, record_every=20, observables=("loss", "test_loss", "outputs"), progress=False)
    a = ds.run(MLP(d_in=8, act=act), TASK, sweep, layout="vmap", **kw)
    nudged = ds.run(MLP(d_in=8, act=act), TASK, roundoff.perturbed(sweep), layout="vmap", **kw)
    b = ds.run(MLP(d_in=8, act=act), TASK, sweep, layout="packed", **kw)
    assert b.attrs["layout"] == "packed" and a.attrs["layout"] == "vmap"
    np.testing.assert_array_equal(b["diverged_at"].values, a["diverged_at"].values)
    assert (b["diverged_at"].sel(lr=1e4) >= 0).all() and (b["diverged_at"].sel(lr=lr) == -1).all()
    for name in ("loss", "test_loss", "outputs"):
        roundoff.assert_same_trajectory(b[name].sel(lr=lr), a[name].sel(lr=lr), nudged[name].sel(lr=lr), name)



def test_packed_follows_the_lr_schedule():
    # Warmup + cosine decay must act in the packed layout as in the vmapped one (to round-off, as above),
    # and must matter: the constant-lr run ends elsewhere.
    sweep = ds.Sweep(width=[8, 24, 40], lr=[3e-3], seed=[2], optimizer=["adam"])
    kw = dict(steps=200, record_every=20, observables=("loss",), progress=False)
    sched = dict(schedule="cosine", warmup_steps=20)
    a = ds.run(MLP(d_in=8), TASK, sweep, layout="vmap", **sched, **kw)
    nudged = ds.run(MLP(d_in=8), TASK, roundoff.perturbed(sweep), layout="vmap", **sched, **kw)
    b = ds.run(MLP(d_in=8), TASK, sweep, layout="packed", **sched, **kw)
    flat = ds.run(MLP(d_in=8), TASK, sweep, layout="packed", **kw)
    # Round-off as above; 1e-3 sees the schedule's ~2x change, and is far above the round-off bound.
    roundoff.assert_same_trajectory(b["loss"], a["loss"], nudged["loss"], "loss")
    assert not np.allclose(flat["loss"].isel(step=-1).values, b["loss"].isel(step=-1).values, rtol=1e-3)

def test_first_fit_decreasing_packs():
    widths = np.array([5, 100, 30, 70, 5, 60])
    packs = pack_members(widths, units=100, slots=3)
    assert sorted(np.concatenate(packs).tolist()) == list(range(6))
    for p in packs:
        assert widths[p].sum() <= 100 and len(p) <= 3
    assert [widths[p].tolist() for p in packs] == [[100], [70, 30], [60, 5, 5]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_members(widths, units=50, slots=3)


def test_auto_layout_falls_back_to_vmap():
    sweep = ds.Sweep(width=[8], lr=[0.1])
    deep = ds.run(MLP(d_in=8, depth=3), TASK, sweep, steps=10, record_every=5, progress=False)
    assert deep.attrs["layout"] == "vmap"
    shallow = ds.run(MLP(d_in=8), TASK, sweep, steps=10, record_every=5, progress=False)
    assert shallow.attrs["layout"] == "packed"  # small members: one program beats a compile per width
    from dynsim.executor import choose_layout

    flop_bound = ds.Sweep(width=[16, 64, 256, 1024], lr=[0.1] * 1 + [0.2], seed=range(8))
    assert choose_layout("auto", MLP(d_in=64), ("loss",), flop_bound, 1024) == "vmap"  # readout would double FLOPs
    with pytest.raises(ValueError, match="packed layout"):
        ds.run(MLP(d_in=8, depth=3), TASK, sweep, steps=10, record_every=5, layout="packed", progress=False)


def test_overflow_in_one_member_does_not_reach_its_pack_mates():
    # lr = 1e30 overflows one member's units to inf; the readout must not turn that into NaN elsewhere.
    task = TeacherStudent(d_in=8, d_out=2, n_train=32, n_test=32)
    sweep = ds.Sweep(width=[4, 8], lr=[0.05, 1e30])
    res = ds.run(MLP(d_in=8, d_out=2), task, sweep, steps=6, record_every=2, layout="packed", progress=False)
    assert (res["diverged_at"].sel(lr=1e30) >= 0).all() and (res["diverged_at"].sel(lr=0.05) == -1).all()
    assert np.isfinite(res["loss"].sel(lr=0.05)).all()
