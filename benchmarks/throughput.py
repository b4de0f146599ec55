"""Ensemble throughput of the dynsim executor versus the loop a researcher writes (docs/measurements.md).

Everything is measured in one process, as ratios:

* **engine**: ``dynsim.run(MLP(d_in=d, depth=2), TeacherStudent(...), Sweep(...), steps=S, record_every=S)``,
  full-batch SGD, standard parametrization;
* **loop**: one ``jax.jit`` per width of a function that initialises a two-layer ReLU net in the usual layout
  (``X`` is ``[P, d]``, ``h = X @ W1.T``, fan-in init) and runs ``lax.scan`` over ``S`` steps of full-batch SGD on
  the same MSE loss, called in a Python loop over learning rate and seed (both traced arguments, so one compile per
  width), blocking on the result;
* **peak**: the best time of a jitted square float32 matmul, as FLOP/s.

Useful FLOPs are ``model.flops(width, P) * steps`` summed over members (padding is not counted), the same count for
the engine and the loop. Wall times include compilation; compile time is also reported on its own, both as JAX
reports it (trace + lowering + backend compile, from :mod:`jax.monitoring`) and, for the engine, as
``ds.attrs["timing"]["compile_s"]``.

Wall time is the headline (best of ``--repeat`` alternating runs); process CPU time is reported beside it because
other processes sharing the cores inflate wall time but hardly CPU time. The peak is measured before, between and
after the shapes and the best is kept.

Usage::

    python -m benchmarks.throughput                       # all three shapes, full size (a few minutes on 2 cores)
    python -m benchmarks.throughput --shapes ii --steps 50 --repeat 3
    python -m benchmarks.throughput --smoke --json /tmp/b.json
    python -m benchmarks.throughput --shapes i --variants "default;slab=16e6;slab=16e6+compile=1.0+rate=1.5e11"

``--variants`` runs the engine with several settings against one loop measurement; the first gives the headline
``speedup`` and ``peak_fraction``. Keys, joined by ``+``: ``group=G``, ``slab=BYTES`` (``slab_bytes=``),
``buckets=each|one|16,32/64,128`` (forced buckets), ``chunk=C`` (``sample_chunk=``, 0: whole batch),
``compile=S`` / ``rate=FLOP_PER_S`` (buckets chosen by
:func:`dynsim.executor.plan` with those cost-model constants).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import dynsim
import dynsim.executor
from dynsim.executor import CompileClock
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent

__all__ = ["main", "SHAPES", "SMOKE_SHAPES", "matmul_peak", "run_engine", "run_loop"]


def _widths(lo, hi, k):
    return tuple(sorted({int(round(w)) for w in np.geomspace(lo, hi, k)}))


def _lrs(lo, hi, k):
    return tuple(float(f"{v:.4g}") for v in np.geomspace(lo, hi, k)) if k > 1 else (float(lo),)


# Learning rates: standard parametrization under full-batch SGD is stable for lr below about 10 / width on this task
# (top NTK eigenvalue ~ 0.16 n), so each range stays under that bound at the widest width; the run checks that no
# member diverged and reports it.
SHAPES = {
    "i": dict(desc="FLOP-bound: 16 widths 16..1024 x 16 lrs x 4 seeds, P=1024, d=64",
              widths=_widths(16, 1024, 16), lrs=_lrs(1e-4, 5e-3, 16), seeds=4, P=1024, d=64, steps=100),
    "ii": dict(desc="overhead-bound: 8 widths 8..128 x 16 lrs x 4 seeds, P=128, d=16",
               widths=_widths(8, 128, 8), lrs=_lrs(1e-3, 3e-2, 16), seeds=4, P=128, d=16, steps=200),
    "iii": dict(desc="wide spread: 8 widths 16..4096, 1 lr, 1 seed, P=1024, d=64",
                widths=_widths(16, 4096, 8), lrs=(1e-3,), seeds=1, P=1024, d=64, steps=100),
}
# Smoke sizes share one task (P, d), so its arrays compile once; a few seconds in all, dominated by compilation.
SMOKE_SHAPES = {
    "i": dict(desc="smoke (i)", widths=(16, 32), lrs=(1e-3, 3e-3), seeds=1, P=64, d=8, steps=5),
    "ii": dict(desc="smoke (ii)", widths=(8, 16), lrs=(1e-3, 3e-3), seeds=1, P=64, d=8, steps=5),
    "iii": dict(desc="smoke (iii)", widths=(16, 128), lrs=(1e-3,), seeds=1, P=64, d=8, steps=5),
}
N_TEST = 256


# ----------------------------------------------------------------------------------------------------- the peak
def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of a jitted ``n x n`` matmul (compiled and warmed up first)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


# ------------------------------------------------------------------------------------------------------ engine
def _cpu_s() -> float:
    """CPU seconds used by this process (all threads): less sensitive than wall time to other processes."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _parse_variant(text: str) -> tuple[str, dict]:
    """``"default"``, ``"group=4"``, ``"slab=4e6"``, ``"buckets=each"|"one"|"16,32/64"``, joined by ``+``.

    ``compile=SECONDS`` and ``rate=FLOP_PER_S`` re-run :func:`dynsim.executor.plan`'s bucketing with those cost-model
    constants and force the buckets it picks (so a proposed default can be measured without editing the engine).
    """
    text = text.strip()
    kw: dict = {}
    if text in ("", "default"):
        return "default", kw
    for part in text.split("+"):
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "group":
            kw["group"] = int(value)
        elif key in ("slab", "slab_bytes"):
            kw["slab_bytes"] = float(value)
        elif key == "buckets":
            kw["buckets"] = value.strip()
        elif key in ("compile", "rate"):
            kw.setdefault("buckets", {})[key] = float(value)
        elif key == "chunk":
            kw["sample_chunk"] = int(value)
        else:
            raise ValueError(f"unknown variant key {key!r} in {text!r}; use group=, slab=, buckets=, compile=, rate=, "
                             f"chunk=.")
    return text, kw


def _buckets(spec, widths, sweep=None, model=None, steps=None, batch=None):
    if spec is None or isinstance(spec, list):
        return spec
    if isinstance(spec, dict):  # cost-model constants: let dynsim.executor.plan choose with them
        plan = dynsim.executor.plan(sweep, model, steps=steps, batch=batch, group=1,
                                 compile_seconds=spec.get("compile"), flop_rate=spec.get("rate"))
        return [sorted({int(w) for w in sweep.members()["width"][b.members]}) for b in plan]
    if spec == "each":
        return [[w] for w in widths]
    if spec == "one":
        return [list(widths)]
    return [[int(w) for w in b.split(",")] for b in spec.split("/")]


def run_engine(shape: dict, steps: int, fresh: bool = False, **kw) -> dict:
    """Run the shape through ``dynsim.run``; wall time, compile time, divergence check.

    ``fresh`` clears JAX's caches first, so that a repeated or varied run compiles from scratch as a new process would.
    """
    model = MLP(d_in=shape["d"], depth=2)
    task = TeacherStudent(d_in=shape["d"], n_train=shape["P"], n_test=N_TEST)
    sweep = dynsim.Sweep(width=shape["widths"], lr=shape["lrs"], seed=tuple(range(shape["seeds"])), param=("sp",))
    kw = dict(kw)
    kw["buckets"] = _buckets(kw.get("buckets"), shape["widths"], sweep, model, steps, shape["P"])
    if fresh:
        jax.clear_caches()
    task.make()  # the task's arrays are built outside the timing (their eager ops compile once for both sides)
    with CompileClock() as clock:
        t0, c0 = time.perf_counter(), _cpu_s()
        res = dynsim.run(model, task, sweep, steps=steps, record_every=steps, progress=False, **kw)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    timing = json.loads(res.attrs.get("timing", "{}"))
    loss = res["loss"].values
    first, last = loss[..., 0], loss[..., -1]
    diverged = int(np.sum(res["diverged_at"].values >= 0))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "compile_s": float(timing.get("compile_s", math.nan)),
        "jax_compile_s": clock.total,
        "buckets": json.loads(res.attrs.get("buckets", "null")),
        "diverged": diverged,
        "grew": int(np.sum(~(last <= first))),  # members whose final loss is not below the initial one
        "mean_final_loss": float(np.nanmean(last)),
    }


# -------------------------------------------------------------------------------------------------------- loop
def _loop_program(n: int, d: int, steps: int):
    """The researcher's program for width ``n``: init a two-layer ReLU net and scan ``steps`` of full-batch SGD."""

    def loss_fn(params, x, y):
        w1, w2 = params
        h = jax.nn.relu(x @ w1.T)  # [P, n]
        out = (h @ w2.T)[:, 0]  # [P]
        return 0.5 * jnp.mean((out - y) ** 2)

    def train(x, y, lr, key):
        k1, k2 = jax.random.split(key)
        w1 = jax.random.normal(k1, (n, d), x.dtype) / math.sqrt(d)  # fan-in init
        w2 = jax.random.normal(k2, (1, n), x.dtype) * math.sqrt(2.0 / n)  # He init for the ReLU read-out

        def step(params, _):
            grads = jax.grad(loss_fn)(params, x, y)
            return jax.tree.map(lambda p, g: p - lr * g, params, grads), None

        params, _ = jax.lax.scan(step, (w1, w2), None, length=steps)
        return loss_fn(params, x, y)

    return jax.jit(train)


def run_loop(shape: dict, steps: int) -> dict:
    """One jit per width, Python loop over lr and seed, blocking on each result."""
    task = TeacherStudent(d_in=shape["d"], n_train=shape["P"], n_test=N_TEST)
    task.make()  # as in run_engine (each call of _loop_program is a new function, so jit always compiles afresh)
    with CompileClock() as clock:
        t0, c0 = time.perf_counter(), _cpu_s()
        data = task.make()
        x = jnp.asarray(data.x_train.T)  # usual layout: [P, d]
        y = jnp.asarray(data.y_train[0])  # [P]
        first_call_s = 0.0
        finals = []
        for n in shape["widths"]:
            f = _loop_program(n, shape["d"], steps)
            first = True
            for lr in shape["lrs"]:
                for seed in range(shape["seeds"]):
                    t1 = time.perf_counter()
                    val = float(f(x, y, jnp.float32(lr), jax.random.key(seed)))  # float() blocks
                    dt = time.perf_counter() - t1
                    if first:  # includes the compile
                        first_call_s += dt
                        first = False
                    finals.append(val)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"wall_s": wall, "cpu_s": cpu, "jax_compile_s": clock.total, "first_calls_s": first_call_s,
            "mean_final_loss": float(np.mean(finals)), "nonfinite": int(np.sum(~np.isfinite(finals)))}


# ------------------------------------------------------------------------------------------------------- driver
def useful_flops(shape: dict, steps: int) -> float:
    model = MLP(d_in=shape["d"], depth=2)
    per_width = len(shape["lrs"]) * shape["seeds"]
    return float(sum(model.flops(n, shape["P"]) for n in shape["widths"]) * steps * per_width)


def _rates(r: dict, flops: float, peak: float) -> dict:
    r["gflops"] = flops / r["wall_s"] / 1e9
    r["gflops_excl_compile"] = flops / max(r["wall_s"] - r["jax_compile_s"], 1e-9) / 1e9
    r["peak_fraction"] = r["gflops"] * 1e9 / peak
    return r


def bench_shape(name: str, shape: dict, steps: int, peak: float, variants, log=print, repeat: int = 1) -> dict:
    """Engine (each variant) and loop on one shape. With ``repeat > 1`` they alternate and the best wall time of
    each is kept (``walls_s`` lists them all), which rejects interference from other processes."""
    flops = useful_flops(shape, steps)
    members = len(shape["widths"]) * len(shape["lrs"]) * shape["seeds"]
    log(f"[{name}] {shape['desc']}; {members} members, {steps} steps, {flops / 1e9:.3g} useful GFLOP")
    engines, loop = {}, None
    best = lambda old, new: new if old is None or new["wall_s"] < old["wall_s"] else old
    for rep in range(repeat):
        for label, kw in variants:
            fresh = rep > 0 or label != variants[0][0]
            e = _rates(run_engine(shape, steps, fresh=fresh, **kw), flops, peak)
            log(f"[{name}] engine[{label}]: {e['wall_s']:.2f} s, {e['cpu_s']:.1f} CPU s ({e['gflops']:.3g} GFLOP/s, "
                f"{100 * e['peak_fraction']:.3g}% of peak; {e['gflops_excl_compile']:.3g} without compile), "
                f"compile {e['compile_s']:.2f} s (attrs) / {e['jax_compile_s']:.2f} s (jax), "
                f"buckets [optimizer, n_pad, members, group] {e['buckets']}, diverged {e['diverged']}, "
                f"loss not decreased {e['grew']}")
            walls = engines.get(label, {}).get("walls_s", []) + [e["wall_s"]]
            engines[label] = best(engines.get(label), e)
            engines[label]["walls_s"] = walls
        lp = _rates(run_loop(shape, steps), flops, peak)
        log(f"[{name}] loop: {lp['wall_s']:.2f} s, {lp['cpu_s']:.1f} CPU s ({lp['gflops']:.3g} GFLOP/s; "
            f"{lp['gflops_excl_compile']:.3g} without compile), compile {lp['jax_compile_s']:.2f} s (jax), "
            f"non-finite {lp['nonfinite']}")
        walls = (loop or {}).get("walls_s", []) + [lp["wall_s"]]
        loop = best(loop, lp)
        loop["walls_s"] = walls
    for label, e in engines.items():
        e["speedup"] = loop["wall_s"] / e["wall_s"]
        e["speedup_cpu"] = loop["cpu_s"] / e["cpu_s"]
        log(f"[{name}] speedup[{label}] (loop/engine, best of {repeat}) = {e['speedup']:.2f} wall, "
            f"{e['speedup_cpu']:.2f} CPU time")
    head = engines[variants[0][0]]
    return {
        "desc": shape["desc"], "widths": list(shape["widths"]), "lrs": list(shape["lrs"]), "seeds": shape["seeds"],
        "P": shape["P"], "d": shape["d"], "steps": steps, "members": members, "useful_gflop": flops / 1e9,
        "repeat": repeat, "engine_s": head["wall_s"], "loop_s": loop["wall_s"], "speedup": head["speedup"],
        "speedup_cpu": head["speedup_cpu"], "engine_cpu_s": head["cpu_s"], "loop_cpu_s": loop["cpu_s"],
        "engine_gflops": head["gflops"], "loop_gflops": loop["gflops"], "peak_fraction": head["peak_fraction"],
        "loop_peak_fraction": loop["peak_fraction"], "engine_compile_s": head["compile_s"],
        "engine_jax_compile_s": head["jax_compile_s"], "loop_compile_s": loop["jax_compile_s"],
        "diverged": head["diverged"], "engine": engines, "loop": loop,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny versions of every shape (a few seconds)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--shapes", default="i,ii,iii", help="comma-separated subset of i,ii,iii")
    p.add_argument("--steps", type=int, default=None, help="override the steps of every shape")
    p.add_argument("--variants", default="default",
                   help="';'-separated engine settings, e.g. "
                        "'default;group=1;slab=4e6;buckets=each;group=4+buckets=one'")
    p.add_argument("--repeat", type=int, default=1,
                   help="alternate engine and loop this many times per shape and keep the best wall time of each")
    p.add_argument("--peak-size", type=int, default=None,
                   help="matrix size of the peak matmul (default 2048 on CPU, 8192 on GPU and TPU)")
    args = p.parse_args(argv)

    table = SMOKE_SHAPES if args.smoke else SHAPES
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in names:
        if s not in table:
            p.error(f"unknown shape {s!r}; choose from {', '.join(table)}.")
    variants = []
    for v in args.variants.split(";"):
        label, kw = _parse_variant(v)
        if label in dict(variants):
            label = f"{label}#{len(variants)}"
        variants.append((label, kw))
    # The peak is the device's own: a 2048 matmul keeps 2 CPU cores busy, but an accelerator needs 8192 to hide its
    # launch latency (2048 takes tens of microseconds there, so the peak would read low and the fractions high).
    peak_n = args.peak_size or (256 if args.smoke else 2048 if jax.default_backend() == "cpu" else 8192)

    log = lambda msg: print(msg, flush=True)
    info = dynsim.executor.versions()
    log(f"dynsim {info['dynsim']}, jax {info['jax']}, backend {info['backend']} ({info['devices']}), "
        f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}")
    # The peak is measured before, between and after the shapes, and the best is kept: another process sharing the
    # cores depresses single measurements.
    reps = 5 if args.smoke else 10
    peaks = [matmul_peak(peak_n, repeats=reps)]
    log(f"float32 matmul peak ({peak_n}x{peak_n}): {peaks[0] / 1e9:.1f} GFLOP/s")
    out = {"versions": info, "cpus": os.cpu_count(), "peak_gflops": peaks[0] / 1e9, "peak_matmul_n": peak_n,
           "smoke": args.smoke, "load_avg_start": os.getloadavg()[0], "shapes": {}}
    t0 = time.perf_counter()
    for name in names:
        shape = table[name]
        steps = args.steps or shape["steps"]
        out["shapes"][name] = bench_shape(name, shape, steps, max(peaks), variants, log, args.repeat)
        out["shapes"][name]["load_avg"] = os.getloadavg()[0]
        peaks.append(matmul_peak(peak_n, repeats=reps))
        log(f"float32 matmul peak again: {peaks[-1] / 1e9:.1f} GFLOP/s; load avg {os.getloadavg()[0]:.2f}")
        _set_peak(out, max(peaks))
        if args.json:  # write as we go, so a long run leaves partial results
            _write(args.json, out)
    out["peak_samples_gflops"] = [p / 1e9 for p in peaks]
    out["total_s"] = time.perf_counter() - t0
    out["load_avg_end"] = os.getloadavg()[0]

    log("")
    log(f"peak {out['peak_gflops']:.1f} GFLOP/s; load avg {out['load_avg_start']:.2f} -> {out['load_avg_end']:.2f}")
    log(f"{'shape':5} {'engine s':>9} {'loop s':>9} {'speedup':>8} {'eng GF/s':>9} {'loop GF/s':>9} {'peak%':>6} "
        f"{'eng comp s':>10} {'loop comp s':>11}")
    for name, r in out["shapes"].items():
        log(f"{name:5} {r['engine_s']:9.2f} {r['loop_s']:9.2f} {r['speedup']:8.2f} {r['engine_gflops']:9.1f} "
            f"{r['loop_gflops']:9.1f} {100 * r['peak_fraction']:6.1f} "
            f"{r['engine_compile_s']:5.2f}/{r['engine_jax_compile_s']:<4.2f} {r['loop_compile_s']:11.2f}")
    log("(engine compile: timing attrs / jax compile events; the attrs figure includes the first group's run)")
    if args.json:
        _write(args.json, out)
    return out


def _set_peak(out, peak):
    out["peak_gflops"] = peak / 1e9
    for r in out["shapes"].values():
        r["peak_fraction"] = r["engine_gflops"] * 1e9 / peak
        r["loop_peak_fraction"] = r["loop_gflops"] * 1e9 / peak
        for e in r["engine"].values():
            e["peak_fraction"] = e["gflops"] * 1e9 / peak


def _write(path, out):
    with open(path, "w") as fh:
        json.dump(out, fh, indent=2, default=float)


if __name__ == "__main__":
    main()
