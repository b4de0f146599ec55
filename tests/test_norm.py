"""The MLP's normalisation option (``MLP(norm=...)``), its per-layer decay, and the ``top_singular_value``
observable: scale invariance, statistics over true units only, padding invariance, the packed layout's refusal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import roundoff

import dynsim as ds
from dynsim.models import MLP
from dynsim.observables._weights import frobenius_norms, top_singular_values
from dynsim.padding import width_mask
from dynsim.tasks import TeacherStudent

TASK = TeacherStudent(d_in=8, n_train=64, n_test=64, seed=1)


def _member(model, width, n_pad, seed=0):
    scales = model.scales(width, ds.param.mup().table("adam"), 1.0)
    params = model.init(jax.random.key(seed), n_pad, width, scales.std)
    return params, scales, width_mask(width, n_pad)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_norm_statistics_use_the_true_width(norm):
    # The same member's pre-activations at its own width and padded to 3x: the normalised true units must agree to
    # float32 round-off of a 24-term sum (a few ulps; 1e-6 relative is ~8 ulps), and padded units stay exactly 0.
    # Statistics over n_pad units would rescale by sqrt(64 / 24) = 1.6, far outside the tolerance.
    model = MLP(d_in=8, depth=3, norm=norm)
    x = TASK.make().x_test
    outs, pres = [], []
    apply = jax.jit(model.apply, static_argnames="return_preacts")  # one program per n_pad, not one per operation
    for n_pad in (24, 64):
        params, scales, mask = _member(model, 24, n_pad)
        out, pre = apply(params, x, scales.mult, mask, return_preacts=True)
        outs.append(np.asarray(out))
        pres.append([np.asarray(h) for h in pre])
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for alone, padded in zip(pres[0], pres[1]):
        np.testing.assert_allclose(padded[:24], alone, rtol=1e-5, atol=1e-6)
        assert np.all(padded[24:] == 0)
        # Normalised over the 24 true units: unit mean square (and zero mean for LayerNorm) at every sample.
        np.testing.assert_allclose(np.mean(alone**2, axis=0), 1.0, rtol=1e-5)
        if norm == "layer":
            np.testing.assert_allclose(np.mean(alone, axis=0), 0.0, atol=1e-6)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_each_normalised_matrix_is_scale_invariant(norm):
    # Multiplying a matrix that feeds a norm by 7 leaves the output unchanged (to float32 round-off: the norm divides
    # the factor back out, ~1e-7 relative per product); without the norm the output changes by O(1).
    x = TASK.make().x_test
    for kind, invariant in ((norm, True), ("none", False)):
        model = MLP(d_in=8, depth=3, norm=kind)
        params, scales, mask = _member(model, 16, 16)
        out = model.apply(params, x, scales.mult, mask)
        for layer in (0, 1):
            scaled = tuple(7.0 * w if i == layer else w for i, w in enumerate(params))
            moved = float(jnp.max(jnp.abs(model.apply(scaled, x, scales.mult, mask) - out)))
            scale = float(jnp.max(jnp.abs(out)))
            assert (moved < 1e-5 * scale) if invariant else (moved > 0.1 * scale)


def test_default_model_is_the_model_without_norm():
    # The defaults are the fields' values: same hash, so the same compiled programs and results as before the option.
    assert MLP(d_in=8, depth=3) == MLP(d_in=8, depth=3, norm="none", decay="all")
    assert hash(MLP(d_in=8, depth=3)) == hash(MLP(d_in=8, depth=3, norm="none", decay="all"))
    assert MLP(d_in=8, depth=4, decay="hidden").decayed == (False, True, True, False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(norm="batch"), "model norm must be one of none, rms, layer"),
    (dict(decay="matrices"), "model decay must be 'all' or 'hidden'"),
    (dict(depth=2, decay="hidden"), "depth >= 3"),
])
def test_bad_norm_options_are_one_sentence(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        MLP(d_in=8, **kwargs)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_packed_layout_refuses_a_norm():
    assert MLP(d_in=8).packable and not MLP(d_in=8, norm="rms").packable
    with pytest.raises(ds.InputError, match="packed layout"):
        ds.run(MLP(d_in=8, norm="rms"), TASK, ds.Sweep(width=[8], lr=[0.1]), steps=10, record_every=10,
               layout="packed", progress=False)


def test_padding_invariance_with_norm_float64(x64):
    # AdamW with decay on the hidden matrix only, RMSNorm, a member alone and padded beside a wider one (LayerNorm's
    # padding is the float32 test below). In float64 only the order of sums over exact zeros differs (the norm's
    # statistics included): as tests/test_engine.py's float64 test, 100 steps x 8 ulps = 1.8e-13, rounded up to
    # 1e-12. The singular-value observable's padding is test_top_singular_value_matches_svd's.
    kw = dict(steps=100, record_every=50, observables=("loss", "outputs"), progress=False)
    for norm in ("rms",):
        model = MLP(d_in=8, depth=3, norm=norm, decay="hidden")
        member = dict(lr=[3e-2], seed=[3], optimizer=["adamw"], weight_decay=[2.0])
        alone = ds.run(model, TASK, ds.Sweep(width=[24], **member), group=1, **kw)
        crowd = ds.run(model, TASK, ds.Sweep(width=[24, 64], **member), buckets=[[24, 64]], group=2, **kw)
        assert alone["loss"].dtype == np.float64
        for name in ("loss", "outputs"):
            np.testing.assert_allclose(crowd[name].sel(width=24).values, alone[name].squeeze("width").values,
                                       rtol=1e-12, err_msg=f"{norm}: {name}")
        assert float(alone["loss"].isel(step=-1).max()) < 0.5 * float(alone["loss"].isel(step=0).max())  # trained


@pytest.mark.slow
def test_padding_invariance_with_layer_norm_float32():
    # As tests/test_engine.py's padded-member test, with LayerNorm (its centring must not leak into padded units):
    # float32 differences within what the dynamics do to a one-ulp perturbation (tests/roundoff.py). Slow (three
    # compiled programs); the default suite checks LayerNorm's padding on the forward pass
    # (test_norm_statistics_use_the_true_width) and a trained member's in float64 with RMSNorm.
    model = MLP(d_in=8, depth=3, norm="layer", decay="hidden")
    kw = dict(steps=60, record_every=20, observables=("loss", "outputs"), progress=False)
    member = ds.Sweep(width=[24], lr=[3e-2], seed=[3], optimizer=["adamw"], weight_decay=[2.0])
    alone = ds.run(model, TASK, member, group=1, **kw).squeeze()
    nudged = ds.run(model, TASK, roundoff.perturbed(member), group=1, **kw).squeeze()
    crowd = ds.run(model, TASK, ds.Sweep(width=[24, 40, 64], lr=[3e-2], seed=[2, 3], optimizer=["adamw"],
                                         weight_decay=[2.0]), buckets=[[24, 40, 64]], group=6, **kw)
    c = crowd.sel(width=24, seed=3).squeeze()
    for name in ("loss", "outputs"):
        roundoff.assert_same_trajectory(c[name], alone[name], nudged[name], name)


def test_top_singular_value_matches_svd(x64):
    # A trained-looking matrix: random plus a rank-one spike (separated top: Lanczos converges geometrically, to
    # round-off in 32 steps), and a purely random one (top at the Marchenko-Pastur edge: the Ritz value converges
    # as 1/steps^2 relative to the spectrum's width, ~1e-3 at 32 steps; 1e-2 leaves margin). Padded to 80.
    rng = np.random.default_rng(0)
    n, n_pad = 60, 80
    u, v = rng.normal(size=n), rng.normal(size=n)
    for w, rtol in ((rng.normal(size=(n, n)) / np.sqrt(n) + np.outer(u, v) / n, 1e-10),
                    (rng.normal(size=(n, n)) / np.sqrt(n), 1e-2)):
        padded = np.zeros((n_pad, n_pad))
        padded[:n, :n] = w
        got = top_singular_values((jnp.asarray(padded),), width_mask(n, n_pad), (0,))
        exact = np.linalg.svd(w, compute_uv=False)[0]
        assert float(got[0]) <= exact * (1 + 1e-12)  # a Ritz value never exceeds the top eigenvalue
        np.testing.assert_allclose(float(got[0]), exact, rtol=rtol)


def test_frobenius_norm_matches_numpy_and_ignores_padding(x64):
    rng = np.random.default_rng(1)
    n, n_pad = 60, 80
    w = rng.normal(size=(n, n)) / np.sqrt(n)
    padded = np.zeros((n_pad, n_pad))
    padded[:n, :n] = w
    got = frobenius_norms((jnp.asarray(padded), jnp.asarray(2 * padded)), (0, 1))
    np.testing.assert_allclose(np.asarray(got), [np.linalg.norm(w), 2 * np.linalg.norm(w)], rtol=1e-12)
