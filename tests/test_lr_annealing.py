"""The learning-rate schedule as a sweep axis (its multipliers, one program for all schedules, the invariance of a
member, the bad inputs) and the lr-annealing experiment (its law, its checks on the quick run, and simulations that
must fail them)."""


import numpy as np
import pytest
import roundoff

import dynsim as ds
from dynsim import experiments
from dynsim import spec as _spec
from dynsim.experiments import lr_annealing
from dynsim.models import MLP
from dynsim.optim import lr_schedule, schedule_multipliers
from dynsim.tasks import TeacherStudent
from dynsim.theory import annealing as theory

TASK = TeacherStudent(d_in=8, n_train=0, n_test=64, noise=0.5, seed=1)
MODEL = MLP(d_in=8, depth=2)


def _run(sweep, **kw):
    kw.setdefault("steps", 40)
    kw.setdefault("record_every", 10)
    return ds.run(MODEL, TASK, sweep, batch_size=16, observables=("loss", "outputs"), progress=False, **kw)


def test_schedule_multipliers_by_name():
    T = 100
    t = np.arange(T)
    np.testing.assert_array_equal(schedule_multipliers("constant", T), np.ones(T))
    np.testing.assert_allclose(schedule_multipliers("linear", T), 1 - t / T, rtol=0, atol=1e-15)
    # step: x0.1 from step 50, x0.01 from step 75
    step = schedule_multipliers("step", T)
    assert set(step[:50]) == {1.0} and set(step[50:75]) == {0.1} and set(step[75:]) == {0.01}
    # wsd:0.2: flat for 80 steps, then linear to 0 at T (the step after the last): 1, 0.95, ..., 0.05
    wsd = schedule_multipliers("wsd:0.2", T)
    assert set(wsd[:80]) == {1.0}
    np.testing.assert_allclose(wsd[80:], (T - t[80:]) / 20, rtol=0, atol=1e-15)
    assert np.all(np.diff(wsd[80:]) < 0)
    # cosine is the run option's cosine, step for step (optax's, float32: 1e-6 is a few of its ulps)
    ref = lr_schedule("cosine", 10, T)
    np.testing.assert_allclose(schedule_multipliers("cosine", T, 10), [float(ref(i)) for i in t], atol=1e-6)
    # warmup: linear from 0 over the first 10 steps, for every schedule
    np.testing.assert_allclose(schedule_multipliers("wsd:0.5", T, 10)[:10], t[:10] / 10, atol=1e-15)
    assert schedule_multipliers("constant", T, 10)[10] == 1.0


@pytest.mark.parametrize("name", ["exponential", "wsd", "wsd:0", "wsd:1.5", "wsd:x", 3])
def test_bad_schedule_names_fail_in_one_sentence(name):
    words = "unknown schedule" if isinstance(name, str) else "takes names"
    with pytest.raises(ValueError, match=words) as info:
        ds.Sweep(width=[8], lr=[0.1], schedule=["constant", name])
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")
    with pytest.raises(ds.InputError, match=words):
        ds.run(MODEL, TASK, {"width": [8], "lr": [0.1], "schedule": [name]}, steps=10, batch_size=4, progress=False)


def test_hypergrad_refuses_a_schedule_sweep_before_training():
    with pytest.raises(ds.InputError, match="not a sweep over schedule"):
        ds.hypergrad(MODEL, TASK, ds.Sweep(width=[8], lr=[0.1], schedule=["constant", "cosine"]), steps=10,
                     batch_size=4)


@pytest.mark.slow
def test_member_alone_equals_member_in_a_schedule_sweep():
    # The member (width 24, wsd:0.5) alone, then inside a sweep over three schedules, two widths and two seeds in
    # one program: float32 differs only by the order of sums, within what the dynamics do to a one-ulp
    # perturbation of its initial weights (tests/roundoff.py).
    member = ds.Sweep(width=[24], schedule=["wsd:0.5"], lr=[0.2], seed=[3])
    alone = _run(member, group=1, layout="vmap").squeeze()
    nudged = _run(roundoff.perturbed(member), group=1, layout="vmap").squeeze()
    crowd = _run(ds.Sweep(width=[24, 40], schedule=["constant", "wsd:0.5", "step"], lr=[0.2], seed=[2, 3]),
                 buckets=[[24, 40]], group=12, layout="vmap")
    assert len(crowd.attrs["buckets"].split("],")) == 1  # every schedule in one program
    assert list(crowd["schedule"].values) == ["constant", "wsd:0.5", "step"]
    c = crowd.sel(width=24, schedule="wsd:0.5", seed=3).squeeze()
    for name in ("loss", "outputs"):
        roundoff.assert_same_trajectory(c[name], alone[name], nudged[name], name)
    # The packed layout gives each unit its member's multiplier: the same member there as well.
    packed = _run(ds.Sweep(width=[24, 40], schedule=["constant", "wsd:0.5"], lr=[0.2], seed=[2, 3]),
                  layout="packed")
    roundoff.assert_same_trajectory(packed["loss"].sel(width=24, schedule="wsd:0.5", seed=3).squeeze(),
                                    alone["loss"], nudged["loss"], "loss (packed)")
    # The schedule is felt, and only after it departs from constant: wsd:0.5 of 40 steps decays from step 20.
    const = crowd["loss"].sel(width=24, seed=3, schedule="constant").squeeze()
    # records at 0, 10, 20: the same updates in two slots of one program; only a slot-dependent order of sums could
    # differ, a few float32 ulps per step over 20 steps of a stable run (1e-5 is about 80 ulps)
    np.testing.assert_allclose(const.values[:3], c["loss"].values[:3], rtol=1e-5)
    assert abs(float(const[-1]) - float(c["loss"][-1])) > 1e-3 * float(const[-1])


@pytest.mark.slow
def test_a_traced_schedule_equals_the_run_option():
    # Cosine as the run's static schedule and as the swept one: the same multipliers (to float32 rounding of the
    # schedule, within the round-off bound), and the default axis keeps a constant run's dimensions and key.
    member = ds.Sweep(width=[16], lr=[0.2], seed=[1])
    static = _run(member, schedule="cosine", warmup_steps=5).squeeze()
    nudged = _run(roundoff.perturbed(member), schedule="cosine", warmup_steps=5).squeeze()
    swept = _run(ds.Sweep(width=[16], lr=[0.2], seed=[1], schedule=["cosine"]), warmup_steps=5).squeeze()
    roundoff.assert_same_trajectory(swept["loss"], static["loss"], nudged["loss"], "loss")
    plain = _run(member)
    default = _run(ds.Sweep(width=[16], lr=[0.2], seed=[1], schedule=["constant"]))
    assert "schedule" not in plain.dims and plain.attrs["key"] == default.attrs["key"]
    np.testing.assert_array_equal(plain["loss"].values, default["loss"].values)


def test_a_schedule_given_twice_fails_before_training():
    with pytest.raises(ds.InputError, match="give it in one place"):
        _run(ds.Sweep(width=[16], lr=[0.2], schedule=["constant", "linear"]), schedule="cosine")


def test_spec_sweeps_schedules_and_refuses_bad_ones():
    base = {"task": {"d_in": 8, "n_train": 0}, "train": {"steps": 10, "batch_size": 4},
            "sweep": {"width": [16], "lr": [0.1]}}
    ok = _spec.validate(_spec.merge(base, {"sweep": {"schedule": ["constant", "wsd:0.2"]}}))
    assert ok["sweep"]["schedule"] == ["constant", "wsd:0.2"]
    with pytest.raises(_spec.SpecError, match=r"'sweep.schedule' takes schedule names .*, got 'wsd:2'\.$"):
        _spec.validate(_spec.merge(base, {"sweep": {"schedule": ["wsd:2"]}}))
    with pytest.raises(_spec.SpecError, match="both set the learning-rate schedule"):
        _spec.validate(_spec.merge(base, {"train": {"schedule": "cosine"}, "sweep": {"schedule": ["linear",
                                                                                              "constant"]}}))


def test_the_law_and_its_best_decay_fraction():
    # The areas of a constant schedule: S1 = eta s, S2 = 0; a single drop of d decays as lambda^k: S2 = d (1 -
    # lambda^k) / (1 - lambda) after k steps (the geometric sum).
    s1, s2 = theory.annealing_areas(np.full(10, 0.5), 0.9)
    np.testing.assert_allclose(s1, 0.5 * np.arange(1, 11))
    assert np.all(s2 == 0)
    _, s2 = theory.annealing_areas(np.r_[np.ones(5), 0.4 * np.ones(5)], 0.9)
    np.testing.assert_allclose(s2[-1], 0.6 * (1 - 0.9**5) / 0.1, rtol=1e-12)
    # With C = 0 the best WSD fraction is the shortest decay (most forward area); a strong annealing term moves it
    # to longer decays.
    fr = np.linspace(0.1, 0.9, 9)
    p = {"L0": 0.1, "A": 1.0, "alpha": 0.5, "C": 0.0}
    assert np.argmin(theory.wsd_final_loss(fr, 1000, 0.1, p, 0.95)) == 0
    assert np.argmin(theory.wsd_final_loss(fr, 1000, 0.1, p | {"C": 0.05}, 0.95)) > 0


def _synthetic(params, decay, schedules, n_seed=3, noise=0.003, drop_scale=1.0, seed=0):
    """Curves ``[width=1, schedule, seed, record]`` that follow the law exactly up to independent noise, with the
    annealing term multiplied by ``drop_scale`` (1: the law holds; 0 or 2: a simulation without or with twice the
    annealing gain)."""
    steps, rec = 1000, np.arange(10, 1001, 10)
    s1, s2 = lr_annealing.areas(schedules, steps, 0.1, decay, rec)
    L = params["L0"] + params["A"] * s1 ** (-params["alpha"]) - drop_scale * params["C"] * s2
    rng = np.random.default_rng(seed)
    return (L[None, :, None, :] * (1 + noise * rng.standard_normal((1, len(schedules), n_seed, len(rec))))), rec


SCHEDULES = ["constant", "cosine", "linear", "step", "wsd:0.1", "wsd:0.2", "wsd:0.4", "wsd:0.6", "wsd:0.8"]
LAW = {"L0": 0.02, "A": 0.3, "alpha": 0.6, "C": 0.004}  # C S2 <= 0.008: twice it stays below L0


def _checks(loss, rec):
    import xarray as xr

    ds_ = xr.Dataset({"loss": (("width", "schedule", "seed", "step"),
                               np.concatenate([np.full(loss.shape[:-1] + (1,), 1.0), loss], -1))},
                     coords={"width": [64], "schedule": SCHEDULES, "seed": list(range(loss.shape[2])),
                             "step": np.r_[0, rec], "lr": [0.1]})
    spec = {"train": {"steps": 1000}, "analysis": {"fit": ["constant", "cosine"], "decay": [0.9, 0.95, 0.99],
                                                   "skip": 0.1}}
    m = lr_annealing.measure(loss, rec, SCHEDULES, steps=1000, lr=0.1, decays=[0.9, 0.95, 0.99],
                             fit_names=["constant", "cosine"], skip=0.1)
    return m, ds_, spec


def _second_moments(beta, eta_h):
    """The map of ``(E x_t^2, E x_t x_{t-1}, E x_{t-1}^2)`` under heavy ball on a quadratic of curvature ``h``,
    ``x_{t+1} = p x_t - beta x_{t-1} + noise`` with ``p = 1 + beta - eta h`` (the noise adds a constant)."""
    p = 1 + beta - eta_h
    return np.array([[p * p, -2 * p * beta, beta * beta], [p, -beta, 0.0], [1.0, 0.0, 0.0]])


def test_heavy_ball_momentum_sets_the_annealing_decay():
    # The excess second moment left by a drop of the rate relaxes by the spectral radius of the second-moment map:
    # beta for every underdamped mode ((1 - sqrt beta)^2 < eta h < (1 + sqrt beta)^2), whatever the rate, and more
    # slowly (closer to 1) for an overdamped one, where no constant lambda holds.
    beta = 0.98
    for eta_h in (2e-4, 0.01, 0.5, 3.0):
        radius = np.abs(np.linalg.eigvals(_second_moments(beta, eta_h))).max()
        assert radius == pytest.approx(beta, rel=1e-9)
    assert np.abs(np.linalg.eigvals(_second_moments(beta, 2e-5))).max() > beta + 1e-3  # below the band
    # and the iterated excess after a drop from eta h = 0.5 to 0.05 shrinks as beta^t (a slope fitted to its log
    # envelope over 600 steps; the oscillation of the complex pair is the tolerance)
    sigma2, m_hi, m_lo = 1.0, _second_moments(beta, 0.5), _second_moments(beta, 0.05)
    noise = np.array([sigma2, 0.0, 0.0])
    steady = lambda m: np.linalg.solve(np.eye(3) - m, noise)
    v, target, excess = steady(m_hi), steady(m_lo), []
    for _ in range(600):
        v = m_lo @ v + noise
        excess.append(np.abs(v - target).max())
    t = np.arange(600)
    env = np.maximum.accumulate(np.log(excess)[::-1])[::-1]  # the upper envelope through the oscillation's zeros
    slope = np.polyfit(t[100:], env[100:], 1)[0]
    assert np.exp(slope) == pytest.approx(beta, abs=2e-3)
    assert theory.heavy_ball_decay(beta) == beta
    with pytest.raises(ValueError, match="momentum must lie in"):
        theory.heavy_ball_decay(0.0)


def test_c_ratio_fails_a_fitted_c_that_is_not_positive():
    assert lr_annealing.c_ratio(0.9, 1.0) == pytest.approx(0.9)
    assert lr_annealing.c_ratio(1.0, -1.0) == -1.0  # the other schedule's C positive, the fitted one negative
    assert lr_annealing.c_ratio(-1.0, -1.0) == -1.0
    assert lr_annealing.c_ratio(1.0, 0.0) == -np.inf


def test_best_fraction_and_regret_read_a_grid():
    fr = np.array([0.1, 0.2, 0.3, 0.5, 0.8])
    final = np.exp((fr - 0.27) ** 2)  # log loss a parabola in F (what the vertex is drawn through), off the grid
    assert lr_annealing.best_fraction(fr, final) == pytest.approx(0.27, abs=1e-12)
    assert np.isnan(lr_annealing.best_fraction(fr, fr))  # the minimum at the grid's end is not bracketed
    assert lr_annealing.regret(fr, final, 0.3) == 0.0
    # halfway between 0.1 and 0.2: the linear interpolation of the two final losses, over the grid's lowest
    assert lr_annealing.regret(fr, final, 0.15) == pytest.approx((final[0] + final[1]) / 2 / final[2] - 1, rel=1e-12)
    assert np.isnan(lr_annealing.regret(fr, final, 0.9))
    assert lr_annealing.best_fraction(fr, final, log=True) == pytest.approx(0.27, abs=0.02)  # log F: near, not exact
    assert np.isnan(lr_annealing.best_fraction(fr[:2], final[:2]))  # two fractions bracket nothing
    diverged = final.copy()
    diverged[-1] = np.nan  # a seed mean that diverged at 0.8 leaves the regret of 0.3 defined
    assert lr_annealing.regret(fr, diverged, 0.3) == 0.0 and lr_annealing.best_fraction(fr, diverged) == pytest.approx(
        0.27, abs=1e-12)


def test_the_law_recovers_its_parameters_and_predicts_held_out_curves():
    # Curves that follow the law (lambda 0.95, 0.3% noise per record): the fit recovers C and alpha, chooses the
    # true lambda, and predicts the held-out curves within a few times the noise (0.3% per record and seed, 0.17% on
    # a 3-seed mean: a mean |relative error| of about 0.8 of that, plus the fitted parameters' own error).
    loss, rec = _synthetic(LAW, 0.95, SCHEDULES)
    m, _, _ = _checks(loss, rec)
    assert m["lam"] == 0.95
    assert m["fit"].params["C"] == pytest.approx(LAW["C"], rel=0.2)
    assert m["fit"].params["alpha"] == pytest.approx(LAW["alpha"], rel=0.2)
    assert m["mare"] < 0.005
    assert m["mare0"] > 3 * m["mare"]  # the law without its annealing term cannot follow the annealed curves


@pytest.mark.parametrize("scale", [1.0, 0.0, 2.0])
def test_a_wrong_simulation_fails_its_checks(scale, tmp_path, monkeypatch):
    # The constant and cosine curves follow the law; the held-out schedules anneal with the law's gain (scale 1),
    # no gain (0) or twice the gain (2). Only the first may pass the held-out prediction and the annealing drop.
    right, rec = _synthetic(LAW, 0.95, SCHEDULES)
    other, _ = _synthetic(LAW, 0.95, SCHEDULES, drop_scale=scale, seed=1)
    loss = right.copy()
    loss[:, 2:] = other[:, 2:]
    _, ds_, spec = _checks(loss, rec)
    # 20 bootstrap replicates (the experiment's 40) keep the test short: the verdicts here are decided by margins
    # much larger than the bootstrap's Monte-Carlo error (wrong curves miss by the whole annealing gain, up to 20%
    # of the final loss, against 0.3% noise per record).
    monkeypatch.setattr(lr_annealing, "N_BOOT", 20)
    checks = lr_annealing.analyse(ds_, spec, tmp_path)["checks"]
    held = next(c for c in checks if c.name.startswith("mean |relative error|"))
    drop = next(c for c in checks if c.name.startswith("final-loss drop"))
    if scale == 1.0:
        assert held.verdict == "agrees" and drop.verdict == "agrees", (held, drop)
    else:
        assert held.verdict != "agrees" and drop.verdict != "agrees", (held, drop)


def test_an_annealing_that_raises_the_loss_fails_the_sign_of_c(tmp_path, monkeypatch):
    # Every curve with the annealing term's sign flipped (annealing costs loss): C comes out negative from either
    # annealed schedule, and the check of C must not agree (the ratio over |C| is -1, not 1).
    loss, rec = _synthetic(LAW, 0.95, SCHEDULES, drop_scale=-1.0)
    _, ds_, spec = _checks(loss, rec)
    monkeypatch.setattr(lr_annealing, "N_BOOT", 20)
    checks = lr_annealing.analyse(ds_, spec, tmp_path)["checks"]
    c = next(c for c in checks if c.name.startswith("annealing coefficient C"))
    assert c.measured == pytest.approx(-1, abs=0.2) and c.verdict == "disagrees", c


def test_quick_spec_is_valid_and_bad_specs_fail_before_training():
    exp, spec = experiments.resolve_spec("lr-annealing", quick=True)
    assert spec["sweep"]["schedule"][:2] == ["constant", "cosine"]
    assert spec["analysis"]["decay"] == "momentum" and spec["sweep"]["optimizer"] == ["sgd"]
    cases = [
        (["sweep.optimizer=['adam']"], "heavy-ball momentum"),
        (["sweep.momentum=[0.0]"], "heavy-ball momentum"),
        (["analysis.fit=['constant', 'exponential']"], "analysis.fit"),
        (["analysis.fit=['constant', 'wsd:0.7']"], "not in 'sweep.schedule'"),
        (["sweep.lr=[0.1, 0.2]"], "sweep.lr"),
        (["sweep.schedule=['constant', 'cosine']"], "sweep.schedule"),
        (["analysis.decay=[1.0]"], "analysis.decay"),
        (["sweep.schedule=['constant', 'cosine', 'wsd:3']"], "sweep.schedule"),
    ]
    for sets, words in cases:
        with pytest.raises(_spec.SpecError, match=words.replace(".", r"\.")) as info:
            experiments.resolve_spec("lr-annealing", quick=True, sets=sets)
        assert str(info.value).endswith(".") or str(info.value).endswith("'.")


@pytest.fixture(scope="module")
def quick_summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr-annealing")
    return out, experiments.run("lr-annealing", quick=True, out=out, progress=False, log=lambda *a: None)[1]


@pytest.mark.slow
def test_quick_run_predicts_held_out_schedules(quick_summary):
    out, summary = quick_summary
    checks = {c["name"].split(" (")[0].split(",")[0]: c for c in summary["checks"]}
    # The law fitted on constant and wsd:0.3 predicts the held-out curves better than the law without its annealing
    # term, with a C that another WSD curve reproduces, and a best WSD decay fraction that ends near the grid's best.
    held = next(c for n, c in checks.items() if n.startswith("mean |relative error|"))
    assert held["measured"] < held["competing"]
    assert next(c for n, c in checks.items() if n.startswith("annealing coefficient C"))["verdict"] == "agrees"
    assert next(c for n, c in checks.items() if n.startswith("final loss of the law's best"))["verdict"] == "agrees"
    assert "lambda = 0.98" in summary["regimes"]["fitted law"]  # the heavy-ball momentum's, not a fitted one
    assert (out / "curves.png").exists() and (out / "best_decay.png").exists()
    assert "width extrapolation" in summary["regimes"] and "intermediate checkpoints" in summary["regimes"]


@pytest.mark.slow
def test_quick_run_every_check_agrees(quick_summary):
    # Heavy-ball SGD on a noisy linear teacher (the noise floor a quarter of the loss): every check agrees at the
    # quick size. Measured with other draws of the task (docs/measurements.md): task.seed 7 agrees too; task.seed 3
    # misses the C ratio (1.06 against 1 +- 0.04) and the regret (3.4% against 2.3%).
    _, summary = quick_summary
    assert all(c["verdict"] == "agrees" for c in summary["checks"]), [c["verdict"] for c in summary["checks"]]
