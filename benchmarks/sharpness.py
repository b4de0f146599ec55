"""Cost of recording sharpness: the ``edge-of-stability`` quick sweep with and without it (docs/measurements.md).

Both runs train the same members for the same steps in one process, recording every ``train.record_every`` steps
(10 in the experiment's spec):

* **plain**: ``observables=("loss",)``;
* **sharpness**: the experiment's own observables (``loss`` and ``sharpness``, plus ``preconditioned_sharpness``
  where the sweep has Adam members).

With ``--breakdown`` a third run records the same sharpness observables from a one-product Krylov space (the
bare Rayleigh quotient of the previous eigenvector), which splits the cost of a record into a fixed part (the
linearisation's primal pass, the Ritz step, the loss) and a cost per Hessian-vector product, both in training
steps: ``per_product = (T_sharpness - T_one) / ((PRODUCTS - 1) R) / (T_plain / S)`` for ``R`` records and ``S``
steps.

Each configuration runs once to compile, then ``--repeat`` times alternately; the headline is the ratio of the
best wall times (compilation excluded: the compiled programs are reused). Other processes sharing the cores
inflate wall times, so the best of several runs is the figure to quote, and the ratio of process CPU times is
printed beside it (sharing inflates it much less). The goal of issue 5 is a ratio of at most
1.5. Measured on 2 shared CPU cores with the experiment's forward-difference products (``train.hvp = "fd"``):
1.8-1.9x, a product costing 1.4-1.6 training steps and the fixed part 0.8-1.2; with exact tangent products
(``--set train.hvp=tangent``) 2.2x, 2.1-2.3 steps per product. Forward-difference records of 2 / 3 / 4 products
cost 1.44x / 1.58x / 1.71x, so 1.5x leaves room for two.

Usage::

    python -m benchmarks.sharpness                       # quick sweep, 3 repeats
    python -m benchmarks.sharpness --breakdown           # and the cost of one product, in training steps
    python -m benchmarks.sharpness --smoke --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import dynsim
from dynsim import experiments, observables
from dynsim.executor import CompileClock
from dynsim.observables import _sharpness

from .throughput import _cpu_s

__all__ = ["main", "time_run"]

GOAL = 1.5


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
    p.add_argument("--breakdown", action="store_true",
                   help="also time one product per record: cost per product and fixed cost, in training steps")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the edge-of-stability quick spec (repeatable)")
    args = p.parse_args(argv)
    sets = list(args.sets)
    if args.smoke:
        sets = ["steps=100", "lr=[0.3]", "seed=[0,1]", "momentum=[0.0]", *sets]
    _, spec = experiments.resolve_spec("edge-of-stability", quick=True, sets=sets)
    model, task, sweep, opts = experiments.build(spec)
    configs = {"plain": ("loss",), "sharpness": opts["observables"]}
    if args.breakdown:
        configs["one_product"] = tuple(_one_product(name) for name in opts["observables"])
    compile_s = {name: time_run(model, task, sweep, opts, names)[2] for name, names in configs.items()}
    walls, cpus = {name: [] for name in configs}, {name: [] for name in configs}
    for _ in range(max(1, args.repeat)):
        for name, names in configs.items():
            wall, cpu, _ = time_run(model, task, sweep, opts, names)
            walls[name].append(wall)
            cpus[name].append(cpu)
    best = {name: min(w) for name, w in walls.items()}
    best_cpu = {name: min(c) for name, c in cpus.items()}
    trained = len(np.unique(sweep.sources()))  # Adam members differing only in momentum train once
    out = {"members": sweep.size, "trained_members": trained, "steps": opts["steps"],
           "record_every": opts["record_every"], "hvp": opts["hvp"],
           "observables": list(opts["observables"]), "wall_s": walls, "best_s": best, "cpu_s": cpus,
           "best_cpu_s": best_cpu, "compile_s": compile_s, "ratio": best["sharpness"] / best["plain"],
           "ratio_cpu": best_cpu["sharpness"] / best_cpu["plain"], "goal": GOAL}
    print(f"edge-of-stability quick sweep: {sweep.size} members ({trained} trained), {opts['steps']} steps, "
          f"recording {', '.join(opts['observables'])} every {opts['record_every']} steps ({opts['hvp']} products)")
    for name in configs:
        print(f"  {name:>11}: best {best[name]:.3f} s of {', '.join(f'{w:.3f}' for w in walls[name])} "
              f"(CPU {best_cpu[name]:.3f} s; compile {compile_s[name]:.2f} s, not included)")
    print(f"  ratio sharpness / plain: {out['ratio']:.2f} wall, {out['ratio_cpu']:.2f} CPU (goal <= {GOAL:g})")
    if args.breakdown:
        records = opts["steps"] // opts["record_every"]
        step_s = best["plain"] / opts["steps"]
        per_product = (best["sharpness"] - best["one_product"]) / ((_sharpness.PRODUCTS - 1) * records) / step_s
        fixed = (best["one_product"] - best["plain"]) / records / step_s - per_product
        out.update(per_product_steps=per_product, fixed_steps=fixed)
        print(f"  per record: {_sharpness.PRODUCTS} products of {per_product:.2f} training steps each, plus "
              f"{fixed:.2f} steps fixed; one product per record costs {best['one_product'] / best['plain']:.2f}x plain")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _one_product(name: str) -> str:
    """``name`` itself, or for a sharpness observable (or its residual) a registered one-product twin of it, so that
    every Krylov iteration of the breakdown run has one product."""
    base = name.removesuffix("_err")
    if base not in ("sharpness", "preconditioned_sharpness"):
        return name
    twin = f"{name}_one_product"
    observables.register(observables.sharpness_observable(twin, products=1, residual=name.endswith("_err"),
                                                          preconditioned=base != "sharpness"))
    return twin


if __name__ == "__main__":
    main()
