"""Cost of recording sharpness: the ``edge-of-stability`` quick sweep with and without it (DESIGN.md section 9).

Both runs train the same members for the same steps in one process, recording every ``train.record_every`` steps
(10 in the experiment's spec):

* **plain**: ``observables=("loss",)``;
* **sharpness**: the experiment's own observables (``loss`` and ``sharpness``, plus ``preconditioned_sharpness``
  where the sweep has Adam members).

Each configuration runs once to compile, then ``--repeat`` times alternately; the headline is the ratio of the
best wall times (compilation excluded: the compiled programs are reused). Other processes sharing the cores
inflate wall times, so the best of several runs is the figure to quote, and the ratio of process CPU times is
printed beside it (sharing inflates it much less). The goal of issue 5 is a ratio of at most
1.5.

Usage::

    python -m benchmarks.sharpness                       # quick sweep, 3 repeats
    python -m benchmarks.sharpness --smoke --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import dynsim
from dynsim import experiments
from dynsim.engine import CompileClock

__all__ = ["main", "time_run"]

GOAL = 1.5


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_run(model, task, sweep, opts, observables) -> tuple[float, float, float]:
    """Wall time, process CPU time and compile time of one engine run recording ``observables``."""
    kw = {k: v for k, v in opts.items() if k not in ("observables", "chunk_members")}
    with CompileClock() as clock:
        t0, c0 = time.perf_counter(), _cpu_s()
        dynsim.run(model, task, sweep, observables=observables, progress=False, **kw)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return wall, cpu, clock.total


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="one member, 100 steps (a few seconds)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (best is kept)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the edge-of-stability quick spec (repeatable)")
    args = p.parse_args(argv)
    sets = list(args.sets)
    if args.smoke:
        sets = ["steps=100", "lr=[0.3]", "seed=[0]", "momentum=[0.0]", *sets]
    _, spec = experiments.resolve_spec("edge-of-stability", quick=True, sets=sets)
    model, task, sweep, opts = experiments.build(spec)
    configs = {"plain": ("loss",), "sharpness": opts["observables"]}
    compile_s = {name: time_run(model, task, sweep, opts, obs)[2] for name, obs in configs.items()}
    walls, cpus = {name: [] for name in configs}, {name: [] for name in configs}
    for _ in range(max(1, args.repeat)):
        for name, obs in configs.items():
            wall, cpu, _ = time_run(model, task, sweep, opts, obs)
            walls[name].append(wall)
            cpus[name].append(cpu)
    best = {name: min(w) for name, w in walls.items()}
    best_cpu = {name: min(c) for name, c in cpus.items()}
    out = {"members": sweep.size, "steps": opts["steps"], "record_every": opts["record_every"],
           "observables": list(opts["observables"]), "wall_s": walls, "best_s": best, "cpu_s": cpus,
           "best_cpu_s": best_cpu, "compile_s": compile_s, "ratio": best["sharpness"] / best["plain"],
           "ratio_cpu": best_cpu["sharpness"] / best_cpu["plain"], "goal": GOAL}
    print(f"edge-of-stability quick sweep: {sweep.size} members, {opts['steps']} steps, recording "
          f"{', '.join(opts['observables'])} every {opts['record_every']} steps")
    for name in configs:
        print(f"  {name:>9}: best {best[name]:.3f} s of {', '.join(f'{w:.3f}' for w in walls[name])} "
              f"(CPU {best_cpu[name]:.3f} s; compile {compile_s[name]:.2f} s, not included)")
    print(f"  ratio sharpness / plain: {out['ratio']:.2f} wall, {out['ratio_cpu']:.2f} CPU (goal <= {GOAL:g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
