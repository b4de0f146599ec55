"""The kernel limit: the empirical NTK of wide members tends to the analytic kernel, and wide networks trained by GD
follow the infinite-width prediction (dynsim.theory.ntk_regime)."""

import jax
import numpy as np
import pytest

import dynsim as ds
from dynsim import executor
from dynsim.executor import member_hyper
from dynsim.models import MLP
from dynsim.observables import Context, empirical_ntk
from dynsim.padding import width_mask
from dynsim.tasks import TeacherStudent
from dynsim.theory import ntk_regime

pytestmark = pytest.mark.slow  # law tests at small size: `pytest -m slow` runs them

TASK = TeacherStudent(d_in=8, n_train=32, n_test=64, teacher="mlp", teacher_width=16, seed=2)
# The analytic ReLU kernels as one compiled program per pair of input shapes (eagerly, each of their operations
# compiles on its own: seconds per shape); the same arithmetic.
_kernels = jax.jit(ntk_regime.two_layer_kernels)


def _at_init(model, width, seeds, x, init_scale, what):
    """``what(ctx, params, scales, mask)`` of members of one width, one per seed, at init (NTK parametrization)."""
    prog = executor.Program(model=model, task=TASK, optimizer="sgd", n_pad=width, record_every=1,
                            records_per_segment=1)
    sweep = ds.Sweep(width=[width], lr=[1.0], seed=list(seeds), param=["ntk"], init_scale=[init_scale])
    hyper = member_hyper(sweep, np.arange(len(seeds)))

    def one(h):
        scales = model.scales(h.width, h.abc, h.init_scale)
        mask = width_mask(h.width, width)
        params = model.init(jax.random.wrap_key_data(h.key), width, h.width, scales.std)
        return what(Context(prog, None, h, scales, mask), params, scales, mask)

    return np.asarray(jax.jit(jax.vmap(one))(hyper))


def _empirical_kernels(model, width, seeds, x, init_scale=1.0):
    """Empirical NTK ``[S, k, k]`` of members of one width, one per seed, at init (NTK parametrization)."""
    return _at_init(model, width, seeds, x, init_scale, lambda ctx, params, *_: empirical_ntk(ctx, params, x))


def _initial_outputs(model, width, seeds, x, init_scale=1.0):
    """Outputs ``[S, k]`` (first component) of members of one width at init."""
    return _at_init(model, width, seeds, x, init_scale,
                    lambda ctx, params, scales, mask: model.apply(params, x, scales.mult, mask)[0])


@pytest.mark.parametrize("act,init_scale", [("relu", 1.0), ("erf", 1.0), ("linear", 0.7)])
def test_empirical_ntk_tends_to_the_analytic_kernel(act, init_scale):
    # A two-layer network's empirical NTK is a mean over its n i.i.d. hidden units, so at every width it is an
    # unbiased estimate of the analytic kernel with O(n^-1/2) noise. Over S = 16 seeds at n = 4096 each entry's
    # seed-mean is compared with the analytic value in units of its standard error (estimated from the seeds):
    # the Student-t(15) quantile for a 1e-3 family-wise error over the k(k+1)/2 = 36 distinct entries (Bonferroni)
    # is 5.93. At these sizes one standard error is at most about 1.5% of the kernel's largest entry (0.3% for ReLU),
    # so a mis-scaled layer term (the d-fold input-layer factor, an activation gain) fails by tens of them.
    # float32 suffices: its round-off (~1e-6 relative) is far below that statistical resolution.
    seeds, k = range(16), 8
    x = TASK.make().x_test[:, :k]
    emp = _empirical_kernels(MLP(d_in=8, depth=2, act=act), 4096, seeds, x, init_scale)
    theory = np.asarray(ntk_regime.two_layer_kernels(x.T, x.T, act, init_scale).ntk)
    iu = np.triu_indices(k)
    mean, se = emp.mean(0)[iu], emp.std(0, ddof=1)[iu] / np.sqrt(len(seeds))
    z = (mean - theory[iu]) / se
    assert np.abs(z).max() < 5.93, z
    assert np.all(se < 0.02 * np.abs(theory[iu]).max())  # the check has resolution: errors are small


def test_gd_outputs_reach_kernel_regression(x64):
    # t -> inf of the GD filter is Theta^-1: the interpolating kernel-regression predictor.
    data = TASK.make()
    x, xt, y = np.asarray(data.x_train).T, np.asarray(data.x_test).T, np.asarray(data.y_train)[0]
    train_k, cross = (_kernels(a, x).ntk for a in (x, xt))
    f = ntk_regime.gd_outputs(np.asarray(train_k), np.asarray(cross), y, lr=1.0, steps=[0, 10**7])
    np.testing.assert_allclose(f[0], 0.0)
    # float64 solve of a kernel with condition number ~1e3: 1e-9 relative.
    np.testing.assert_allclose(f[1], np.asarray(cross) @ np.linalg.solve(np.asarray(train_k), y), rtol=1e-9)


def test_wide_network_test_loss_follows_the_infinite_width_prediction():
    # Lee et al. (2019): in NTK parametrization a wide network trained by full-batch GD has, averaged over its
    # init, the test loss of kernel GD with the analytic NTK from a Gaussian-process init (gd_test_loss). The
    # finite-width seed-mean differs by O(1/n) (the kernel's O(n^-1/2) fluctuation and movement enter the mean loss
    # at second order), about 1% at n = 1024 here; seed noise adds its standard error over 16 seeds, and 4 of them
    # plus 2% of the loss bound the difference. float32 suffices: round-off is far below both.
    data = TASK.make()
    lr, steps = 1.0, 100
    sweep = ds.Sweep(width=[1024], lr=[lr], seed=list(range(16)), param=["ntk"])
    res = ds.run(MLP(d_in=8, depth=2), TASK, sweep, steps=steps, record_every=25, observables=("test_loss",),
                 progress=False)
    measured = res["test_loss"].squeeze().transpose("seed", "step").values
    x, xt = np.asarray(data.x_train).T, np.asarray(data.x_test).T
    k_tr, k_x = _kernels(x, x), _kernels(xt, x)
    diag = np.diag(np.asarray(_kernels(xt, xt).nngp))
    theory = ntk_regime.gd_test_loss(k_tr.ntk, k_x.ntk, k_tr.nngp, k_x.nngp, diag, np.asarray(data.y_train)[0],
                                     np.asarray(data.y_test)[0], lr, res["step"].values)
    mean, se = measured.mean(0), measured.std(0, ddof=1) / np.sqrt(len(sweep.seed))
    assert np.all(np.abs(mean - theory) < 4 * se + 0.02 * theory), (mean, theory, se)
    assert theory[-1] < 0.5 * theory[0]  # the prediction is a learning curve, not a constant


@pytest.mark.parametrize("act", ["relu", "linear"])
def test_kernel_change_exponent(act):
    # The smallest sweep showing the law: two-layer networks in NTK parametrization, 4 seeds, widths 64-1024,
    # 50 GD steps. The fitted exponent of ||K_T - K_0|| / ||K_0|| must lie within 0.15 of the prediction (3/4 for
    # ReLU, 1 for linear): the tolerance of the kernel-regime experiment, which covers next-order finite-width terms
    # bending the slope (local slopes between neighbouring widths scatter by about 0.1); the CI covers seed noise.
    sweep = ds.Sweep(width=[64, 128, 256, 512, 1024], lr=[0.5], seed=[0, 1, 2, 3], param=["ntk"])
    res = ds.run(MLP(d_in=8, depth=2, act=act), TASK, sweep, steps=50, record_every=50,
                 observables=("ntk_distance",), progress=False)
    moved = res["ntk_distance"].isel(step=-1).squeeze().transpose("seed", "width").values
    fit = ds.fit.power_law(sweep.width, moved, n_boot=500)
    predicted = ntk_regime.kernel_change_exponent("ntk", act)
    assert ds.fit.agrees(fit.exponent_ci, predicted, 0.15), (fit.exponent, fit.exponent_ci, predicted)
    assert ntk_regime.kernel_change_exponent("mup", act) == 0.0


def test_wide_network_outputs_follow_linearized_gd_with_their_own_kernel():
    # Lee et al. (2019): a wide network in NTK parametrization trained by full-batch GD stays close to its
    # linearization, whose outputs gd_outputs gives from the member's own empirical NTK and initial outputs. The
    # deviation, relative to how far the outputs move, shrinks like the kernel's movement: measured 2.7-4.1% at
    # n = 1024 and 1.6-1.7% at n = 4096 (two seeds, 50 steps at lr = 1), i.e. about n^-1/2. Asserted: under 3% at
    # 4096, and at least 1.5x smaller than at 1024 (n^-1/2 gives 2x). float32: round-off ~1e-6, far below.
    model, data, lr, seeds = MLP(d_in=8, depth=2), TASK.make(), 1.0, [0, 1]
    x = np.concatenate([np.asarray(data.x_train), np.asarray(data.x_test)], axis=1)
    p = TASK.n_train
    errors = {}
    for width in (1024, 4096):
        sweep = ds.Sweep(width=[width], lr=[lr], seed=seeds, param=["ntk"])
        res = ds.run(model, TASK, sweep, steps=50, record_every=25, observables=("outputs",), progress=False)
        net = res["outputs"].squeeze().transpose("seed", "step", "sample").values
        kernels = _empirical_kernels(model, width, seeds, x)
        f0 = _initial_outputs(model, width, seeds, x)
        errors[width] = []
        for outputs, k, f in zip(net, kernels, f0):
            linear = ntk_regime.gd_outputs(k[:p, :p], k[p:, :p], np.asarray(data.y_train)[0], lr, res["step"].values,
                                           f[:p], f[p:])
            np.testing.assert_allclose(outputs[0], linear[0], atol=1e-5)  # the same init; float32 round-off
            moved = np.linalg.norm(linear[-1] - linear[0])
            errors[width].append(np.linalg.norm(outputs[-1] - linear[-1]) / moved)
    assert max(errors[4096]) < 0.03, errors
    assert np.mean(errors[4096]) < np.mean(errors[1024]) / 1.5, errors
