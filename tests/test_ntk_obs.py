"""Empirical-NTK observables: the kernel's eigenvalues against an explicit Jacobian, padding invariance, and zero
kernel movement for the models whose kernel cannot move (linearized networks, random features)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import roundoff

import dynsim as ds
from dynsim.executor import member_hyper
from dynsim.models import MLP, Linearized, random_feature_model
from dynsim.observables._ntk import PROBES
from dynsim.tasks import TeacherStudent

TASK = TeacherStudent(d_in=8, n_train=64, n_test=48, teacher="mlp", teacher_width=16, seed=1)
OBS = ("loss", "ntk_eigs", "ntk_distance", "output_distance")


def _run(model, sweep, **kw):
    return ds.run(model, TASK, sweep, steps=40, record_every=20, observables=OBS, progress=False, **kw)


@pytest.mark.slow
def test_ntk_eigs_match_an_explicit_jacobian(x64):
    model = MLP(d_in=8, depth=3, act="tanh")
    sweep = ds.Sweep(width=[24], lr=[0.1], param=["mup"], seed=[5])
    res = _run(model, sweep).squeeze()
    hyper = jax.tree.map(lambda a: a[0], member_hyper(sweep, np.arange(1)))
    scales = model.scales(hyper.width, hyper.abc, hyper.init_scale)
    params = model.init(jax.random.wrap_key_data(hyper.key), 24, hyper.width, scales.std)
    x = TASK.make().x_test[:, :PROBES]
    jac = jax.jacobian(lambda p: model.apply(p, x, scales.mult, jnp.ones(24))[0])(params)
    jac = jnp.concatenate([j.reshape(PROBES, -1) for j in jac], axis=1)
    expected = np.sort(np.linalg.eigvalsh(np.asarray(jac @ jac.T)))[::-1]
    # float64: the VJP-JVP columns and the explicit Jacobian agree to round-off.
    np.testing.assert_allclose(res["ntk_eigs"].isel(step=0).values, expected, rtol=1e-9, atol=1e-9 * expected[0])
    assert res["ntk_eigs"].sizes["ntk_eig"] == PROBES
    assert float(res["ntk_distance"][0]) == 0.0 and float(res["output_distance"][0]) == 0.0
    assert float(res["ntk_distance"][-1]) > 1e-3 and float(res["output_distance"][-1]) > 1e-2  # muP moves both


def test_ntk_observables_do_not_depend_on_padding():
    model = MLP(d_in=8, depth=3)
    member = ds.Sweep(width=[24], lr=[0.3], seed=[3], param=["ntk"])
    alone = _run(model, member, group=1).squeeze()
    nudged = _run(model, roundoff.perturbed(member), group=1).squeeze()
    crowd = _run(model, ds.Sweep(width=[24, 64], lr=[0.3], seed=[2, 3], param=["ntk", "mup"]),
                 buckets=[[24, 64]], group=8).sel(width=24, seed=3, param="ntk").squeeze()
    # Round-off only (tests/roundoff.py): within what the dynamics do to a one-ulp perturbation.
    for name in ("ntk_eigs", "ntk_distance", "output_distance"):
        roundoff.assert_same_trajectory(crowd[name], alone[name], nudged[name], name)


@pytest.mark.parametrize("model", [Linearized(base=MLP(d_in=8, depth=2)), random_feature_model(8)],
                         ids=["linearized", "random_features"])
def test_fixed_kernel_models_have_a_fixed_kernel(model):
    # The Jacobian of a linearized network is J(theta_0) and that of random features is the frozen features: their
    # kernels do not move, while their outputs do.
    res = _run(model, ds.Sweep(width=[32], lr=[0.5], param=["ntk"])).squeeze()
    assert float(res["ntk_distance"].max()) < 1e-6  # float32 round-off of an identical computation
    assert float(res["output_distance"][-1]) > 0.05
