"""Batch size as a sweep axis: one program per batch size, the invariance of the other axes, and the bad inputs."""

import json

import numpy as np
import pytest
import roundoff

import dynsim as ds
from dynsim import spec as _spec
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent

TASK = TeacherStudent(d_in=8, n_train=64, n_test=64, seed=1)
MODEL = MLP(d_in=8, depth=2)


def _run(sweep, **kw):
    kw.setdefault("steps", 60)
    kw.setdefault("record_every", 20)
    return ds.run(MODEL, TASK, sweep, observables=("loss", "test_loss", "outputs"), progress=False, **kw)


def test_member_alone_equals_member_in_a_batch_size_sweep():
    # The member (width 24, batch 16) runs alone, then inside a sweep over two batch sizes, two widths, two rates
    # and two seeds, padded to width 40 in a group of 8. Its program holds only batch-16 members; the others run in
    # programs of their own. In float32 the two runs differ only by the order of sums, within what the dynamics do to
    # a one-ulp perturbation of the member's initial weights (tests/roundoff.py).
    member = ds.Sweep(width=[24], batch_size=[16], lr=[0.1], seed=[3])
    alone = _run(member, group=1).squeeze()
    nudged = _run(roundoff.perturbed(member), group=1).squeeze()
    crowd = _run(ds.Sweep(width=[24, 40], batch_size=[8, 16], lr=[0.05, 0.1], seed=[2, 3]), buckets=[[24, 40]],
                 group=8)
    buckets = json.loads(crowd.attrs["buckets"])
    assert sorted(b[4] for b in buckets) == [8, 16]  # one program per batch size, each with both widths
    assert all(b[1] == 40 and b[2] == 8 for b in buckets)
    c = crowd.sel(width=24, batch_size=16, lr=0.1, seed=3).squeeze()
    for name in ("loss", "test_loss", "outputs"):
        roundoff.assert_same_trajectory(c[name], alone[name], nudged[name], name)
    # The batch size is felt: the same member with another batch size trains to another loss.
    other = crowd["loss"].sel(width=24, lr=0.1, seed=3, batch_size=8).squeeze().isel(step=-1)
    assert abs(float(other) - float(alone["loss"][-1])) > 1e-3 * float(alone["loss"][-1])


def test_run_batch_size_is_a_one_value_axis():
    # The member of the test above, alone: its program is compiled once for both runs.
    by_run = _run(ds.Sweep(width=[24], lr=[0.1], seed=[3]), batch_size=16, group=1)
    by_sweep = _run(ds.Sweep(width=[24], lr=[0.1], seed=[3], batch_size=[16]), group=1)
    # The same program on the same numbers: identical records, and no batch_size dimension for one value.
    np.testing.assert_array_equal(by_run["loss"].values, by_sweep["loss"].values)
    assert "batch_size" not in by_run.dims and "batch_size" not in by_sweep.dims
    assert by_run.attrs["key"] == by_sweep.attrs["key"]
    with pytest.raises(ds.InputError, match="give it in one place"):
        _run(ds.Sweep(width=[16], lr=[0.1], batch_size=[8, 16]), batch_size=16)


def test_a_batch_size_larger_than_the_data_fails_before_training():
    with pytest.raises(ds.InputError, match=r"^sweep batch_size 128 exceeds the training set \(n_train = 64\)[^.]*\.$"):
        _run(ds.Sweep(width=[16], lr=[0.1], batch_size=[8, 128]))
    with pytest.raises(ValueError, match="batch_size must be >= 0"):
        ds.Sweep(width=[16], lr=[0.1], batch_size=[-1])
    online = TeacherStudent(d_in=8, n_train=0, n_test=64)
    with pytest.raises(ds.InputError, match="online"):
        ds.run(MODEL, online, ds.Sweep(width=[16], lr=[0.1], batch_size=[0, 8]), steps=10, record_every=10,
               progress=False)


def test_spec_sweeps_batch_size_and_refuses_bad_values():
    base = {"task": {"d_in": 8, "n_train": 64}, "train": {"steps": 10}, "sweep": {"width": [16], "lr": [0.1]}}
    ok = _spec.validate(_spec.merge(base, {"sweep": {"batch_size": {"geomspace": [4, 64, 5]}}}))
    assert ok["sweep"]["batch_size"] == [4, 8, 16, 32, 64]
    with pytest.raises(_spec.SpecError, match="'sweep.batch_size' holds 128, more than 'task.n_train' \\(64\\)"):
        _spec.validate(_spec.merge(base, {"sweep": {"batch_size": [8, 128]}}))
    with pytest.raises(_spec.SpecError, match="both set the batch size"):
        _spec.validate(_spec.merge(base, {"train": {"batch_size": 8}, "sweep": {"batch_size": [8, 16]}}))
    # A bare `batch_size` in --set keeps meaning the run's batch size.
    assert _spec.apply_sets(base, ["batch_size=8"])["train"]["batch_size"] == 8


def test_batch_size_laws_hold_their_limits():
    from dynsim.theory import batch_size as law

    b = np.geomspace(1, 1e4, 9)
    s, e = law.steps_to_target(b, 100.0, 30.0), law.examples_to_target(b, 3000.0, 30.0)
    np.testing.assert_allclose(e, b * s, rtol=1e-12)  # E = B S with E_min = S_min B_noise
    np.testing.assert_allclose((s / 100.0 - 1) * (e / 3000.0 - 1), 1.0, rtol=1e-12)  # McCandlish's hyperbola
    for opt, k in (("sgd", 1.0), ("adam", 0.5)):
        lr = law.optimal_lr(np.array([1e-3, 2e-3, 1e6, 2e6]), 1.0, 1.0, opt)
        # far below B_noise the slope is k to O(B / B_noise); far above, lr* is lr_max to O(B_noise / B)
        assert abs(np.log2(lr[1] / lr[0]) - k) < 2e-3 and abs(lr[3] - 1) < 1e-6
    sizes = np.array([1, 16, 256])
    for top in (law.batch_hessian_top, law.bulk_edge_hessian_top):
        lam = top(sizes, 2.0, 50.0, n_train=256)
        np.testing.assert_allclose(lam[[0, 2]], [50.0, 2.0], rtol=1e-12)  # pinned at one sample and the full batch
    assert law.batch_hessian_top(16, 2.0, 50.0, 256) < law.bulk_edge_hessian_top(16, 2.0, 50.0, 256)


def test_steps_to_target_and_critical_batch_fit_recover_known_values():
    from dynsim.experiments import batch_size as exp
    from dynsim.theory import batch_size as law

    steps = np.arange(0, 101, 10)
    loss = np.exp(-np.array([[0.05], [0.02]]) * steps)  # log-linear: the interpolation is exact
    np.testing.assert_allclose(exp.steps_to(loss, steps, np.exp(-3.3)), [66.0, np.inf])
    # A dip below the target (step 10) that training leaves again does not count: the crossing to stay is at step 25.
    noisy = np.array([[1.0, 0.5, 0.05, 0.5, 0.2, 0.1, 0.05, 0.05]])
    np.testing.assert_allclose(exp.steps_to(noisy, np.arange(0, 40, 5), 0.1), [25.0])
    batch = np.array([1.0, 4, 16, 64, 256])
    s = law.steps_to_target(batch, 40.0, 25.0, n_train=256)
    np.testing.assert_allclose(exp.fit_critical_batch(batch, s, n_train=256), (40.0, 25.0), rtol=1e-9)


def test_gradient_noise_is_the_moments_of_per_sample_gradients(x64):
    # float64: the moments are compared with a sample-by-sample computation, which sums in another order.
    import jax
    import jax.numpy as jnp

    from dynsim.executor import member_hyper
    from dynsim.padding import width_mask

    model, task = MLP(d_in=8, depth=2), TeacherStudent(d_in=8, n_train=32, n_test=32, seed=2)
    sweep = ds.Sweep(width=[16], lr=[0.1], seed=[1])
    res = ds.run(model, task, sweep, steps=1, record_every=1, observables=("gradient_noise",), progress=False)
    h = jax.tree.map(lambda a: a[0], member_hyper(sweep, np.arange(1)))
    scales = model.scales(h.width, h.abc, h.init_scale)
    params = model.init(jax.random.wrap_key_data(h.key), 16, h.width, scales.std)
    data, mask = task.make(), width_mask(h.width, 16)
    # Per-sample gradients as the rows of the Jacobian of the per-sample losses (reverse mode, one row per sample),
    # not as the observable computes them (a vmap of the gradient of one sample's loss).
    losses = lambda p: 0.5 * jnp.mean((model.apply(p, data.x_train, scales.mult, mask) - data.y_train) ** 2, axis=0)
    rows = jax.jit(jax.jacrev(losses))(params)  # each leaf [P, ...]
    norm = lambda g: sum(float(scales.lr[k]) * float(jnp.sum(w**2)) for k, w in enumerate(g))
    per_sample = [norm([leaf[i] for leaf in rows]) for i in range(32)]
    mean = [leaf.mean(axis=0) for leaf in rows]
    expected = [np.mean(per_sample) - norm(mean), norm(mean)]
    np.testing.assert_allclose(res["gradient_noise"].isel(step=0).squeeze().values, expected, rtol=1e-10)


# The slow tests run the quick experiment shrunk further to keep them within a minute on 2 cores: SGD alone, on the
# quick grid's rates from 0.01 up (Adam's optima lie below), 2 Hessian draws per size; every check still agrees.
SHRUNK = ["sweep.optimizer=['sgd']", "sweep.lr={logspace=[-2,1.25,14]}", "analysis.hessian_batches=2"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from dynsim import experiments

    out = tmp_path_factory.mktemp("batch-size")
    return experiments.run("batch-size", quick=True, out=out, sets=SHRUNK, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_batch_size_quick(quick):
    out, summary = quick
    for name in ("report.md", "lr_vs_batch.png", "hessian_vs_batch.png", "steps_examples.png", "results.nc"):
        assert (out / name).exists(), name
    checks = summary["checks"]
    assert len(checks) == 5  # lr* below and above B_crit, the largest stable lr, B_crit / B_simple, the Hessian
    for c in checks:
        assert c["verdict"] == "agrees", c
        assert c["competing"] != c["predicted"], c
    regimes = summary["regimes"]
    assert list(regimes) == ["sgd: critical batch"]


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_checks(quick, tmp_path):
    """Results filed under the wrong batch sizes, or mini-batch Hessians that do not depend on the batch, cannot
    agree with the laws."""
    from dynsim import io
    from dynsim.experiments import batch_size as exp

    out, summary = quick
    ds, spec = io.load(out), summary["spec"]
    # Batch sizes in reverse: lr* then falls with B where the laws say it rises.
    sizes = ds["batch_size"].values
    reversed_ = ds.drop_vars("hessian_top").assign_coords(batch_size=sizes[::-1]).sortby("batch_size")
    reversed_ = reversed_.assign(hessian_top=ds["hessian_top"])
    verdicts = {c.name: c.verdict for c in exp.analyse(reversed_, spec, tmp_path)["checks"]}
    assert verdicts["lr* vs batch size below B_crit, sgd"] != "agrees", verdicts
    assert verdicts["largest stable lr vs batch size, sgd"] == "disagrees", verdicts
    # A mini-batch Hessian equal to the full one at every batch size (the batch ignored) lands on the competitor.
    flat = ds.assign(hessian_top=ds["hessian_top"] * 0 + ds["hessian_top"].isel(hessian_batch=-1))
    flat["hessian_top"].loc[{"hessian_batch": 1}] = ds["hessian_top"].sel(hessian_batch=1)  # the one-sample end kept
    check = exp.hessian_check(flat)[0]
    assert check.verdict == "disagrees", check


def test_the_experiment_is_listed_and_refuses_a_batch_larger_than_the_data(capsys):
    from dynsim import cli, experiments

    assert cli.main(["list"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("batch-size"))
    assert "McCandlish" in line and "Granziol" in line
    with pytest.raises(_spec.SpecError, match=r"'sweep\.batch_size' holds 512, more than 'task\.n_train' \(256\)\.$"):
        experiments.resolve_spec("batch-size", quick=True, sets=["sweep.batch_size=[1,64,512]"])
    with pytest.raises(_spec.SpecError, match="sweep.batch_size"):  # one batch size gives no law against it
        experiments.resolve_spec("batch-size", quick=True, sets=["sweep.batch_size=[16]"])
