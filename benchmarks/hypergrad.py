"""Cost of a hypergradient (:func:`dynsim.hypergrad`) against a plain run of the same sweep (issue 14).

In one process, on the same members (a two-layer ReLU MLP under muP with SGD, ``d = 32``, 256 training samples,
widths 64 and 256, two learning rates, two seeds):

* **time**: a plain :func:`dynsim.run` recording only the final loss, against forward mode with 1, 2 and 3
  hyperparameters (``log_lr``, ``log_init_scale``, ``weight_decay``) and reverse mode with all three and
  rematerialisation every ``round(sqrt(steps))`` steps. Each runs once to compile, then ``--repeat`` times; the
  ratio of the best wall times is the headline (compilation excluded), the ratio of process CPU times beside it.
  Goals: forward mode with up to 3 hyperparameters within 2.5x, reverse mode within 4x.
  ``--linearize`` also times the alternative forward mode that linearizes each member's run once
  (``jax.linearize``) and pushes the tangents through that linear map together (``jax.vmap``), against the
  engine's ``jax.jacfwd`` (the tangents vmapped beside one primal run); ``--segment K`` linearizes ``K`` steps at a
  time instead, holding the residuals of one segment.
* **memory**: XLA's own account of the compiled programs (``compiled.memory_analysis()``: arguments, outputs and
  temporaries) for the widest group at ``--memory-steps`` (1000) steps: the plain training segment against the
  reverse-mode program. Goal: within 2x.

Usage::

    python -m benchmarks.hypergrad                 # 200 steps timed, memory at 1000 steps
    python -m benchmarks.hypergrad --smoke --json /tmp/h.json
    python -m benchmarks.hypergrad --steps 400 --linearize --segment 10
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import dynsim
from dynsim.executor import Program, init_group, member_hyper, member_table, plan, run_segment
from dynsim.executor import _hypergrad as _hg
from dynsim.executor._vmap import _init_member, _records, _step_member

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


def _split(tree):
    """A state's floating leaves (differentiated), its other leaves (alive, diverged_at) and how to rejoin them."""
    leaves, treedef = jax.tree.flatten(tree)
    floating = [jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves]
    return ([leaf for leaf, f in zip(leaves, floating) if f], [leaf for leaf, f in zip(leaves, floating) if not f],
            (treedef, floating))


def _join(floats, others, how):
    treedef, floating = how
    fi, oi = iter(floats), iter(others)
    return jax.tree.unflatten(treedef, [next(fi) if f else next(oi) for f in floating])


@functools.partial(jax.jit, static_argnames=("prog", "fields", "steps", "segment"))
def _linearized(prog, data, hyper, *, fields, steps, segment=None):
    """Forward mode through ``jax.linearize`` (final loss only): each member's run linearized once (``segment``
    None: its residuals held for every step), or one segment of ``segment`` steps at a time (the residuals of one
    segment held; ``steps`` a multiple of it), the one-hot tangents pushed through each linear map together
    (``jax.vmap``). Returns ``(loss [G], derivatives [G, K])``, ``K`` in the order of ``ravel_pytree``."""
    theta = _hg._theta(hyper, fields, _hg.n_layers(prog.model))

    def member(th, h):
        flat, unravel = ravel_pytree(th)
        basis = jax.vmap(unravel)(jnp.eye(flat.shape[0], dtype=flat.dtype))
        if segment is None:
            value, lin = jax.linearize(lambda t: _hg._member_outcome(prog, data, "final_loss", None, steps, t, h)[0],
                                       th)
            return value, jax.vmap(lin)(basis)
        _, others, how = _split(_init_member(prog, data, h._replace(**th)))  # the structure, and alive at init
        floats, lin0 = jax.linearize(lambda t: _split(_init_member(prog, data, h._replace(**t)))[0], th)
        tangents = jax.vmap(lin0)(basis)

        def run_segment(carry, s):
            floats, others, tangents = carry

            def advance(floats, t):
                hh = h._replace(**t)
                one = lambda st, k: (_step_member(prog, hh, st, prog.task.batch(data, k, prog.batch_size), k), None)
                state, _ = jax.lax.scan(one, _join(floats, others, how), s * segment + jnp.arange(segment))
                new_floats, new_others, _ = _split(state)
                return new_floats, new_others

            new_floats, lin, new_others = jax.linearize(advance, floats, th, has_aux=True)
            return (new_floats, new_others, jax.vmap(lin)(tangents, basis)), None

        (floats, others, tangents), _ = jax.lax.scan(run_segment, (floats, others, tangents),
                                                     jnp.arange(steps // segment))
        loss = lambda f, t: _records(prog, data, h._replace(**t), _join(f, others, how))[0]["loss"]
        value, lin = jax.linearize(loss, floats, th)
        return value, jax.vmap(lin)(tangents, basis)

    return jax.vmap(member)(theta, hyper)


def linearize_variant(model, task, sweep, steps: int, k: int, segment: int | None = None):
    """A callable running :func:`_linearized` over the sweep in the buckets and groups ``hypergrad`` and the plain
    run use (the planner's: here one program padded to the widest width), so that the programs compare like for
    like."""
    data = task.make()
    table = member_table(sweep)
    groups = []
    for b in plan(sweep, model, steps=steps, batch=task.n_train, layout="vmap"):
        prog = Program(model=model, task=task.program_task(), optimizer="sgd", n_pad=b.n_pad, record_every=steps,
                       records_per_segment=1, weight_decay=True, momentum=False)
        groups += [(prog, member_hyper(sweep, members, b.group, table=table)) for members in b.member_groups()]
    fields = _hg._fields(NAMES[:k])
    return lambda: [jax.block_until_ready(_linearized(prog, data, h, fields=fields, steps=steps, segment=segment))
                    for prog, h in groups]


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
    p.add_argument("--linearize", action="store_true",
                   help="also time forward mode through jax.linearize once and jax.vmap over the tangents")
    p.add_argument("--segment", type=int, default=0, metavar="K",
                   help="with --linearize, also linearize K steps at a time (K divides --steps)")
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
    if args.linearize:
        for k in (1, 3):
            rows[f"linearize_{k}"] = _best(linearize_variant(model, task, sweep, steps, k), repeat)
            if args.segment:
                rows[f"linearize{args.segment}_{k}"] = _best(linearize_variant(model, task, sweep, steps, k,
                                                                               args.segment), repeat)
    out = {"steps": steps, "members": sweep.size, "plain_s": plain[0], "plain_cpu_s": plain[1], "modes": {},
           "goals": GOALS, "backend": jax.default_backend()}
    for name, (wall, cpu) in rows.items():
        out["modes"][name] = {"wall_s": wall, "cpu_s": cpu, "ratio": wall / plain[0], "cpu_ratio": cpu / plain[1]}
    out["memory"] = memory(model, task, sweep, mem_steps, with_forward=not args.smoke)
    for name, r in out["modes"].items():
        goal = GOALS["forward" if name.startswith("linearize") else name.split("_")[0]]
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
