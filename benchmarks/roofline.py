"""How close to the matmul peak can a two-layer training step get on this machine? The ceiling for shape (i).

Shape (i) of :mod:`benchmarks.throughput` (two-layer ReLU MLPs, ``d = 64`` inputs, ``P = 1024`` samples, full-batch
SGD) asks for 50% of the float32 matmul peak, compilation included. This script measures the best any layout of
that step can do: **one** network of ``U`` hidden units, no members, padding, masks or per-member sums, written
directly in JAX as the step a researcher would hand-write:

.. math::

    h = W X,\\quad f = v \\cdot \\mathrm{relu}(h),\\quad r = f - y,\\quad
    \\delta = (v\\, r^T) \\odot [h > 0],\\quad dW = \\delta X^T / P,\\quad dv = \\mathrm{relu}(h)\\, r / P,

jitted, ``lax.scan`` over ``--steps`` steps, timed after compilation (best of ``--repeat``). Useful FLOPs are
``MLP.flops(U, P)`` per step (the count the throughput benchmark uses), and the ratio to the peak measured in the
same process is printed per ``U``, for activations stored units-major (``[U, P]``, as :mod:`dynsim.models` does)
and samples-major (``[P, U]``). The engine's packed layout runs exactly these matmuls on the units of many
members side by side, plus masks and per-member sums, so its execution cannot beat the best ``U`` here.

Why there is a ceiling well below the peak: both matmuls contract over only ``d = 64`` (forward) or produce only
``d = 64`` columns (weight gradient), and between them the step makes several passes over the ``[U, P]``
pre-activations (write ``h``; read it for ``f``; read it again for ``delta`` and ``dv``; write and read ``delta``),
which on a CPU cost about as much as the matmuls themselves.

Usage::

    python -m benchmarks.roofline                # U = 256 ... 16384, a minute on 2 cores
    python -m benchmarks.roofline --smoke --json /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp

from dynsim.models import MLP

from .throughput import matmul_peak

__all__ = ["main", "step_rate"]


LAYOUTS = ("units-major", "samples-major")


def _train(steps: int, layout: str, lr: float = 1e-3):
    def unit_major(carry, _):  # w [U, d], x [d, P]: activations [U, P], as dynsim.models stores them
        w, v, x, y = carry
        h = w @ x
        a = jnp.maximum(h, 0.0)
        r = v @ a - y
        delta = jnp.where(h > 0, v[:, None] * r[None, :], 0.0)
        n = x.shape[1]
        return (w - lr * (delta @ x.T) / n, v - lr * (a @ r) / n, x, y), None

    def sample_major(carry, _):  # w [d, U], x [P, d]: activations [P, U], the usual layout
        w, v, x, y = carry
        h = x @ w
        a = jnp.maximum(h, 0.0)
        r = a @ v - y
        delta = jnp.where(h > 0, r[:, None] * v[None, :], 0.0)
        n = x.shape[0]
        return (w - lr * (x.T @ delta) / n, v - lr * (r @ a) / n, x, y), None

    step = unit_major if layout == "units-major" else sample_major
    return jax.jit(lambda w, v, x, y: jax.lax.scan(step, (w, v, x, y), None, length=steps)[0][:2])


def step_rate(units: int, d: int, samples: int, steps: int, repeat: int, layout: str = "units-major") -> dict:
    """Best time and useful GFLOP/s of ``steps`` hand-written two-layer steps at ``units`` hidden units."""
    kw, kv, kx, ky = jax.random.split(jax.random.key(0), 4)
    w = jax.random.normal(kw, (units, d), jnp.float32) / math.sqrt(d)
    v = jax.random.normal(kv, (units,), jnp.float32) / math.sqrt(units)
    x = jax.random.normal(kx, (d, samples), jnp.float32)
    y = jax.random.normal(ky, (samples,), jnp.float32)
    if layout == "samples-major":
        w, x = w.T, x.T
    train = _train(steps, layout)
    jax.block_until_ready(train(w, v, x, y))
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(train(w, v, x, y))
        best = min(best, time.perf_counter() - t0)
    flops = MLP(d_in=d).flops(units, samples) * steps
    return {"units": units, "layout": layout, "seconds": best, "gflops": flops / best / 1e9}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", default="256,1024,4096,16384", help="hidden units per network, comma-separated")
    p.add_argument("--d", type=int, default=64, help="input dimension (shape (i): 64)")
    p.add_argument("--samples", type=int, default=1024, help="training samples (shape (i): 1024)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="two small sizes, a few steps")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    units = [int(u) for u in args.units.split(",")]
    if args.smoke:
        units, args.steps, args.repeat = [64, 256], 5, 1
    peak = matmul_peak(512 if args.smoke else 2048)
    rows = [step_rate(u, args.d, args.samples, args.steps, args.repeat, layout)
            for layout in LAYOUTS for u in units]
    peak = max(peak, matmul_peak(512 if args.smoke else 2048))  # again after the runs; the best is kept
    for r in rows:
        r["peak_fraction"] = r["gflops"] * 1e9 / peak
    best = max(rows, key=lambda r: r["peak_fraction"])
    print(f"two-layer ReLU step, d = {args.d}, P = {args.samples}, one network; matmul peak {peak / 1e9:.0f} GFLOP/s")
    for r in rows:
        print(f"  {r['layout']:>13}, U = {r['units']:>6}: {r['gflops']:7.1f} GFLOP/s, "
              f"{r['peak_fraction']:6.1%} of peak")
    print(f"  ceiling: {best['peak_fraction']:.1%} of peak ({best['layout']}, U = {best['units']}), "
          f"before any compilation")
    out = {"peak_gflops": peak / 1e9, "d": args.d, "samples": args.samples, "steps": args.steps, "rows": rows,
           "ceiling": best["peak_fraction"]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
