"""Superposition laws: overlap geometry (random 1/m, the Welch bound), the weak-regime tail loss and its exponent,
and the overlaps of a trained strong-superposition model."""

import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds
from dynsim.models import Superposition
from dynsim.observables import mean_sq_overlap
from dynsim.tasks import SparseFeatures, feature_probabilities
from dynsim.theory import superposition as theory


@pytest.mark.parametrize("m", [4, 16, 64])
def test_random_unit_vectors_overlap_as_one_over_m(m):
    rng = np.random.default_rng(m)
    pairs = 20_000
    u, v = rng.normal(size=(2, pairs, m))
    cos2 = np.sum(u * v, -1) ** 2 / (np.sum(u * u, -1) * np.sum(v * v, -1))
    sigma = np.sqrt(2 * (m - 1) / (m**2 * (m + 2)) / pairs)  # exact variance of (u.v)^2 over the sample size
    assert abs(cos2.mean() - theory.random_overlap(m)) < 4 * sigma  # 4 sigma: fails by chance 1 in 16000


@pytest.mark.parametrize("n,m", [(64, 8), (300, 20)])
def test_tight_frame_attains_the_welch_bound_and_random_frames_exceed_it(n, m):
    # A union of n/m random orthonormal bases is a tight frame (S = (n/m) I): the bound holds with equality, here to
    # float32 round-off of the observable (1e-5 relative); any other frame lies above it.
    rng = np.random.default_rng(0)
    bases = [np.linalg.qr(rng.normal(size=(m, m)))[0] for _ in range(n // m)]
    tight = np.concatenate(bases, axis=1)  # [m, n], unit columns
    welch = theory.welch_bound(n, m)
    assert float(mean_sq_overlap(jnp.asarray(tight, jnp.float32))) == pytest.approx(welch, rel=1e-5)
    random = rng.normal(size=(m, n))
    random /= np.linalg.norm(random, axis=0)
    assert float(mean_sq_overlap(jnp.asarray(random, jnp.float32))) > welch
    assert theory.welch_bound(n, m) < theory.random_overlap(m)
    assert theory.welch_bound(m, m) == 0.0


def test_unrepresented_tail_loss_has_the_derived_prefactor():
    # Weak superposition built by hand: the m most frequent features on orthonormal directions, the others at w = 0
    # with the optimal constant output b_i = p_i. The model's loss on fresh data must equal the tail formula.
    n, m, alpha = 200, 16, 1.5
    task = SparseFeatures(n_features=n, alpha=alpha, p_active=1.0, n_test=200_000, seed=3)
    probs = task.probabilities()
    w = jnp.zeros((m, n)).at[jnp.arange(m), jnp.arange(m)].set(1.0)
    b = jnp.where(jnp.arange(n) < m, 0.0, jnp.asarray(probs, jnp.float32))
    model = Superposition(n_features=n)
    x = task.make().x_test
    measured = float(model.loss(model.apply((w, b), x, None, jnp.ones(m)), x))
    predicted = float(theory.weak_loss(m, probs))
    # One tail sum in two summation orders (cumsum, np.sum): float64 round-off of ~200 terms.
    assert predicted == pytest.approx(theory.unrepresented_loss(probs, np.arange(n) < m), rel=1e-12)
    # Monte Carlo error: the loss is a mean over 200k samples of sum_i (x_i - p_i)^2 / 2n, whose relative standard
    # error is sqrt(Var / N) / mean ~ 1/sqrt(N * sum_tail p_i) ~ 0.6% here; 4% is several sigma.
    assert measured == pytest.approx(predicted, rel=0.04)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 2.5])
def test_weak_loss_exponent_tends_to_alpha_minus_one(alpha):
    # With m << n the tail sum is m^(1-alpha) / (alpha - 1) up to O(1/m) (Euler-Maclaurin) and (m/n)^(alpha-1)
    # corrections; over m = 100..1000 with n = 10^6 both are below 0.02 on the exponent.
    probs = feature_probabilities(1_000_000, alpha, 1.0)
    m = np.geomspace(100, 1000, 6).astype(int)
    fitted = ds.fit.power_law(m, theory.weak_loss(m, probs), n_boot=0).exponent
    assert fitted == pytest.approx(theory.weak_exponent(alpha), abs=0.02)  # the O(1/m) and (m/n)^(alpha-1) bound above
    assert np.isnan(theory.weak_exponent(0.8))  # no power law without a decaying tail


def test_trained_strong_superposition_overlaps_scale_as_one_over_m():
    # Smallest simulation: n = 256 features at m = 8 and 32 under negative weight decay (every direction pulled to
    # unit norm). The frame's mean squared overlap lies between the Welch bound (tight frame) and 1/m (random
    # directions) up to training noise: measured m * overlap was 1.00-1.10 at these sizes, so [Welch m, 1.2] holds.
    n = 256
    res = ds.run(Superposition(n_features=n), SparseFeatures(n_features=n, alpha=1.0, n_test=256),
                 ds.Sweep(width=[8, 32], lr=[0.02], optimizer=["adamw"], weight_decay=[-1.0], param=["sp"]),
                 steps=300, record_every=300, batch_size=128, schedule="cosine", warmup_steps=15,
                 observables=("loss", "represented_fraction", "mean_sq_overlap"), progress=False)
    final = res.isel(step=-1).squeeze()
    assert (final["represented_fraction"].values == 1.0).all()  # strong superposition: every feature
    m = final["width"].values
    ratio = final["mean_sq_overlap"].values * m
    assert np.all(ratio >= theory.welch_bound(n, m) * m - 1e-3)
    assert np.all(ratio <= 1.2)


def _final(alpha, gamma, ms=(8, 16, 32, 64, 128), n=1000, init_scale=1.0):
    """Final loss and represented count at each m in the experiment's quick setup (AdamW 0.02, 700 steps of batch 128
    with warmup + cosine, p_active = 1.3, one seed)."""
    res = ds.run(Superposition(n_features=n), SparseFeatures(n_features=n, alpha=alpha, p_active=1.3, n_test=4096),
                 ds.Sweep(width=list(ms), lr=[0.02], optimizer=["adamw"], weight_decay=[gamma], param=["sp"],
                          init_scale=[init_scale]),
                 steps=700, record_every=700, batch_size=128, schedule="cosine", warmup_steps=35,
                 observables=("loss", "represented_fraction"), progress=False)
    final = res.isel(step=-1).squeeze()
    return np.asarray(ms, float), final["loss"].values, final["represented_fraction"].values * n


def _exponent(m, law):
    return ds.fit.power_law(m, law, n_boot=0).exponent


@pytest.mark.slow
def test_strong_superposition_loss_follows_a_tight_frames_interference_where_it_reconstructs():
    # alpha = 0 (every feature equally frequent), directions from norm 0.1. From m = 32 on the loss is below half
    # that of representing nothing (below m = 32 the bias cannot filter the interference and the loss stays near
    # it); there the exponent is the Welch bound's over these m (1.07 at n = 1000; 1 for n >> m), not the
    # unrepresented tail's (0.07). Measured 1.23 [1.05, 1.40]: the local slopes run 1.30, 1.43, 1.18, 0.91, the
    # crossover from the capped losses below.
    n, probs = 1000, feature_probabilities(1000, 0.0, 1.3)
    m, loss, k = _final(0.0, -1.0, ms=(32, 45, 64, 90, 128), init_scale=0.1)
    assert np.all(k >= 0.9 * n) and np.all(loss <= 0.5 * theory.weak_loss(0, probs))  # the premise holds
    lo, hi = ds.fit.power_law(m, loss).exponent_ci  # 95% residual bootstrap over the five m
    welch, tail = _exponent(m, theory.welch_bound(n, m)), _exponent(m, theory.weak_loss(m.astype(int), probs))
    assert lo <= welch <= hi and tail < lo


@pytest.mark.slow
def test_weak_superposition_loss_follows_the_unrepresented_tail():
    # alpha = 1.5, directions from norm 0.1 (from norm 1, gamma = 1 decays every direction to 0 at m <= 8). Between m
    # and 3m features are represented at m = 4..64 (about 2m, antipodal pairs, then capped near 80 by the decay);
    # there the exponent is the tail's over these m (0.56 at n = 1000; alpha - 1 = 0.5 for m << n), not the Welch
    # bound's (1.02). Measured 0.49 [0.36, 0.62], k = 8, 17, 37, 50, 77.
    n, probs = 1000, feature_probabilities(1000, 1.5, 1.3)
    m, loss, k = _final(1.5, 1.0, ms=(4, 8, 16, 32, 64), init_scale=0.1)
    assert np.all((m <= k) & (k <= 3 * m))  # the premise holds
    lo, hi = ds.fit.power_law(m, loss).exponent_ci  # 95% residual bootstrap over the five m
    tail, welch = _exponent(m, theory.weak_loss(m.astype(int), probs)), _exponent(m, theory.welch_bound(n, m))
    # The tail at the measured counts (k/m falls from 2 to 1.2) differs from the tail at m by the premise's error.
    premise = abs(_exponent(m, theory.weak_loss(np.round(k).astype(int), probs)) - tail)
    assert lo - premise <= tail <= hi + premise and hi + premise < welch


def test_strong_exponent_bounds_meet_at_the_crossover():
    lo, hi = theory.strong_exponent_bounds([0.0, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_array_equal(lo, 1.0)
    np.testing.assert_allclose(hi, [1.0, 1.0, 1.0, 2.0, 3.0])
    assert np.isnan(theory.skewed_strong_exponent(1.0)) and float(theory.skewed_strong_exponent(2.0)) == 2.0


# Exponent band for the skewed-frequency range below: training that stops before the frame has converged, and
# finite n/m, over m = 8..128 at n = 1000 from norm 1 (measured 1.67 against the range [1, 2]).
EXPONENT_BAND = 0.2


@pytest.mark.slow
def test_strong_superposition_with_skewed_frequencies_decays_between_one_and_two_alpha_minus_one():
    # alpha = 2: Liu et al.'s range [1, 2(alpha - 1)] = [1, 2] (their Fig. 5e); measured 1.67 at this size (four
    # times the steps leave 1.65). EXPONENT_BAND: unconverged training and finite n/m.
    m, loss, _ = _final(2.0, -1.0)
    exponent = ds.fit.power_law(m, loss, n_boot=0).exponent
    lo, hi = theory.strong_exponent_bounds(2.0)
    assert lo - EXPONENT_BAND <= exponent <= hi + EXPONENT_BAND
    assert exponent > float(theory.strong_exponent(2.0)) + EXPONENT_BAND  # steeper than 1/m: the skew shows
