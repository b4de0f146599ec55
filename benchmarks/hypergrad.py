"""Cost of a hypergradient (:func:`dynsim.hypergrad`) against a plain run of the same sweep (issue 14).

In one process, on the same members (a two-layer ReLU MLP under muP with SGD, ``d = 32``, 256 training samples,
widths 64 and 256, two learning rates, two seeds):

* **time**: a plain :func:`dynsim.run` recording only the final loss, against forward mode with 1, 2 and 3
  hyperparameters (``log_lr``, ``log_init_scale``, ``weight_decay``) and reverse mode with all three and
  rematerialisation every ``round(sqrt(steps))`` steps. Each runs once to compile, then ``--repeat`` times; the
  ratio of the best wall times is the headline (compilation excluded), the ratio of process CPU times beside it.
  Goals: forward mode with up to 3 hyperparameters within 2.5x, reverse mode within 4x.
* **memory**: XLA's own account of the compiled programs (``compiled.memory_analysis()``: arguments, outputs and
  temporaries) for the widest group at ``--memory-steps`` (1000) steps: the plain training segment against the
  reverse-mode program. Goal: within 2x.

Usage::

    python -m benchmarks.hypergrad                 # 200 steps timed, memory at 1000 steps
    python -m benchmarks.hypergrad --smoke --json /tmp/h.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import dynsim
from dynsim.executor import Program, init_group, member_hyper, run_segment
from dynsim.executor import _hypergrad as _hg

from .throughput import _cpu_s

__all__ = ["main"]

GOALS = {"forward": 2.5, "reverse": 4.0, "memory": 2.0}
NAMES = ("log_lr", "log_init_scale", "weight_decay")


def _setup(smoke: bool):
    model = dynsim.models.MLP(d_in=32)
    task = dynsim.tasks.TeacherStudent(d_in=32, n_train=64 if smoke else 256, n_test=64)
    sweep = dynsim.Sweep(width=[16, 32] if smoke else [64, 256], lr=[0.05, 0.1], seed=[0, 1], weight_decay=[1e-3])
    return model, task, sweep


def _best(fn, repeat: int) -> tuple[float, float]:
    fn()  # compile
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), _cpu_s()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - c0)
    return min(walls), min(cpus)


def _bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def memory(model, task, sweep, steps: int, with_forward: bool = True) -> dict:
    """Bytes of the plain training program and of the reverse-mode program for the widest width's group."""
    width = max(sweep.width)
    members = np.flatnonzero(sweep.members()["width"] == width)
    prog = Program(model=model, task=task, optimizer="sgd", n_pad=width, record_every=steps, records_per_segment=1,
                   observables=("loss",), weight_decay=True, momentum=False)
    data = task.make()
    hyper = member_hyper(sweep, members)
    state, _ = init_group(prog, data, hyper)
    plain = _bytes(run_segment.lower(prog, data, state, hyper, 0).compile())
    remat = _hg.default_remat(steps)
    kw = dict(objective="final_loss", fields=_hg._fields(NAMES), steps=steps)
    prog_hg = Program(model=model, task=task, optimizer="sgd", n_pad=width, record_every=steps,
                      records_per_segment=1, weight_decay=True, momentum=False)
    reverse = _bytes(_hg._group.lower(prog_hg, data, hyper, mode="reverse", remat_every=remat, **kw).compile())
    forward = _bytes(_hg._group.lower(prog_hg, data, hyper, mode="forward", remat_every=None, **kw).compile()
                     ) if with_forward else None  # None, not NaN: the JSON reads back equal
    return {"steps": steps, "width": width, "members": len(members), "remat_every": remat, "plain_bytes": plain,
            "reverse_bytes": reverse, "forward_bytes": forward, "reverse_ratio": reverse / plain,
            "forward_ratio": forward / plain if forward else None,
            "estimate_bytes": _hg.reverse_memory(prog_hg, len(members), steps, remat)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny members, 20 steps, one forward tangent, reverse memory at 100 steps")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (best is kept)")
    p.add_argument("--steps", type=int, default=200, help="training steps of the timed runs")
    p.add_argument("--memory-steps", type=int, default=1000, help="training steps of the memory comparison")
    args = p.parse_args(argv)
    steps, mem_steps, repeat = (20, 100, 1) if args.smoke else (args.steps, args.memory_steps, args.repeat)
    model, task, sweep = _setup(args.smoke)
    kw = dict(steps=steps)
    plain = _best(lambda: dynsim.run(model, task, sweep, record_every=steps, observables=("loss",), progress=False,
                                     layout="vmap", **kw), repeat)
    rows = {}
    for k in (1,) if args.smoke else (1, 2, 3):  # the smoke size compiles one program per mode
        rows[f"forward_{k}"] = _best(lambda k=k: dynsim.hypergrad(model, task, sweep, wrt=NAMES[:k], mode="forward",
                                                                  **kw), repeat)
    rows["reverse_3"] = _best(lambda: dynsim.hypergrad(model, task, sweep, wrt=NAMES, mode="reverse", **kw), repeat)
    out = {"steps": steps, "members": sweep.size, "plain_s": plain[0], "plain_cpu_s": plain[1], "modes": {},
           "goals": GOALS, "backend": jax.default_backend()}
    for name, (wall, cpu) in rows.items():
        out["modes"][name] = {"wall_s": wall, "cpu_s": cpu, "ratio": wall / plain[0], "cpu_ratio": cpu / plain[1]}
    out["memory"] = memory(model, task, sweep, mem_steps, with_forward=not args.smoke)
    for name, r in out["modes"].items():
        goal = GOALS[name.split("_")[0]]
        print(f"{name:10s} {r['wall_s']:.3f} s  {r['ratio']:.2f}x plain (cpu {r['cpu_ratio']:.2f}x; goal <= {goal}x)")
    m = out["memory"]
    print(f"memory at {m['steps']} steps, width {m['width']}, {m['members']} members: plain "
          f"{m['plain_bytes'] / 2**20:.2f} MiB, reverse (remat every {m['remat_every']}) "
          f"{m['reverse_bytes'] / 2**20:.2f} MiB = "
          f"{m['reverse_ratio']:.2f}x (goal <= {GOALS['memory']}x)"
          + (f", forward {m['forward_ratio']:.2f}x" if m["forward_ratio"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
