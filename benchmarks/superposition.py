"""Models trained per second on the superposition experiment's quick sweep: the engine versus a per-model loop.

Both sides train the same members (hidden dimensions ``m`` x weight decays x seeds, one ``alpha``), the same
number of AdamW steps with warmup and cosine decay on fresh sparse-feature batches, and are timed in one process:

* **engine**: ``dynsim.run(Superposition(n), SparseFeatures(n, alpha), Sweep(width=ms, weight_decay=gammas,
  seed=seeds, optimizer=["adamw"]), ...)``, recording the loss at the start and the end;
* **loop**: what a researcher writes: one ``jax.jit`` per ``m`` of a function that initialises ``W [m, n]``, ``b``
  and runs ``lax.scan`` over the steps (``optax.adamw`` with the same schedule and the same batch stream), called in
  a Python loop over weight decay and seed (traced arguments, so one compile per ``m``), blocking on the result.
  Its decay term is the model's own (:meth:`dynsim.models.Superposition.decay_term`), as in the engine.

Wall times include compilation (reported separately as well). The headline is the ratio of models trained per
second, engine over loop.

Usage::

    python -m benchmarks.superposition               # one alpha of the quick sweep (700 steps of batch 128)
    python -m benchmarks.superposition --smoke --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dynsim
from dynsim.executor import CompileClock
from dynsim.models import Superposition
from dynsim.tasks import SparseFeatures

__all__ = ["main", "QUICK", "SMOKE", "run_engine", "run_loop"]

QUICK = {"n": 1000, "ms": (8, 16, 32, 64, 128), "gammas": (-1.0, 1.0), "seeds": (0,), "alpha": 2.0, "steps": 700,
         "batch": 128, "lr": 0.02, "warmup": 35, "p_active": 1.3}
SMOKE = {"n": 64, "ms": (4, 8, 16), "gammas": (-1.0, 1.0), "seeds": (0, 1), "alpha": 1.5, "steps": 20, "batch": 32,
         "lr": 0.02, "warmup": 2, "p_active": 1.0}


def _task(cfg):
    return SparseFeatures(n_features=cfg["n"], alpha=cfg["alpha"], p_active=cfg["p_active"], n_test=256)


def run_engine(cfg: dict) -> dict:
    sweep = dynsim.Sweep(width=cfg["ms"], lr=[cfg["lr"]], weight_decay=cfg["gammas"], seed=cfg["seeds"],
                         optimizer=["adamw"], param=["sp"])
    t0 = time.perf_counter()
    res = dynsim.run(Superposition(n_features=cfg["n"]), _task(cfg), sweep, steps=cfg["steps"],
                     record_every=cfg["steps"], batch_size=cfg["batch"], schedule="cosine",
                     warmup_steps=cfg["warmup"], observables=("loss",), progress=False)
    wall = time.perf_counter() - t0
    timing = json.loads(res.attrs["timing"])
    return {"wall_s": wall, "compile_s": timing["compile_s"], "models": sweep.size,
            "final_loss": float(np.nanmean(res["loss"].isel(step=-1).values))}


def _loop_program(m: int, cfg: dict):
    task = _task(cfg)
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg["lr"], cfg["warmup"], cfg["steps"], 0.0)

    def loss_fn(params, x):
        w, b = params
        return 0.5 * jnp.mean((jax.nn.relu(w.T @ (w @ x) + b[:, None]) - x) ** 2)

    @jax.jit
    def train(gamma, key, data):
        model = Superposition(n_features=cfg["n"])
        params = model.init(key, m, m, model.scales(m, None, 1.0).std)  # the engine's draws, for a paired check
        decay = optax.GradientTransformation(
            lambda p: optax.EmptyState(),
            lambda u, s, p: (jax.tree.map(jnp.add, u, model.decay_term(p, gamma)), s))
        opt = optax.chain(optax.scale_by_adam(), decay, optax.scale_by_learning_rate(schedule))

        def step(carry, t):
            params, state = carry
            x, _ = task.batch(data, t, cfg["batch"])
            grads = jax.grad(loss_fn)(params, x)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(cfg["steps"]))
        return loss_fn(params, data.x_test)

    return train


def run_loop(cfg: dict) -> dict:
    data = _task(cfg).make()
    losses = []
    t0 = time.perf_counter()
    with CompileClock() as clock:
        for m in cfg["ms"]:
            train = _loop_program(m, cfg)
            for gamma in cfg["gammas"]:
                for seed in cfg["seeds"]:
                    losses.append(float(jax.block_until_ready(train(jnp.asarray(gamma), jax.random.key(seed),
                                                                    data))))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "compile_s": clock.total, "models": len(losses),
            "final_loss": float(np.nanmean(losses))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny sweep (a few seconds)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    args = p.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else QUICK)
    if args.steps:
        cfg.update(steps=args.steps, warmup=max(args.steps // 20, 0))
    loop = run_loop(cfg)
    engine = run_engine(cfg)
    out = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "engine": engine,
           "loop": loop, "engine_models_per_s": engine["models"] / engine["wall_s"],
           "loop_models_per_s": loop["models"] / loop["wall_s"],
           "backend": jax.default_backend(), "devices": jax.device_count()}
    out["speedup"] = out["engine_models_per_s"] / out["loop_models_per_s"]
    print(f"superposition sweep: {engine['models']} models (n={cfg['n']}, m={list(cfg['ms'])}, "
          f"{cfg['steps']} steps, batch {cfg['batch']})")
    print(f"  engine: {engine['wall_s']:.1f} s (compile {engine['compile_s']:.1f} s), "
          f"{out['engine_models_per_s']:.3g} models/s")
    print(f"  loop:   {loop['wall_s']:.1f} s (compile {loop['compile_s']:.1f} s), "
          f"{out['loop_models_per_s']:.3g} models/s")
    print(f"  engine / loop: {out['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
