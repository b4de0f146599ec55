"""The plan of a run without the run: what :func:`dynsim.run` would compile and train, the memory each device would
need, and the time this backend would take, from a short calibration (``dynsim plan``).

``dynsim.run(..., dry_run=True)`` checks the arguments and plans exactly as a run does (layout, buckets, groups,
chunks), then returns a :class:`RunPlan` instead of training. :meth:`RunPlan.calibrate` times one group of each
bucket: the first call of its programs (compilation) and a second call (steady state), from which the whole run is
extrapolated. Nothing is written.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._plan import Bucket, chunks, device_share, memory_limit
from ._program import Program, member_hyper, member_table

__all__ = ["RunPlan", "BucketPlan"]


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """One bucket of the plan: one compiled program.

    Attributes:
      bucket: the bucket (optimizer, batch size, padded width or units per pack, members, group).
      program: its static program.
      widths: the true widths of its members.
      chunks: how many storage chunks it is written in.
      records: records per member after step 0 (``steps / record_every``).
      memory: estimated bytes one device holds while a group runs (:func:`dynsim.executor.memory_estimate` of the
        group's share of the local devices).
      compile_s, init_s, segment_s: from :meth:`RunPlan.calibrate` (None before): the first calls' extra time
        (compilation), the time to initialise one group, and the time of ``record_every`` steps and one record.
    """

    bucket: Bucket
    program: Program
    widths: tuple[int, ...]
    chunks: int
    records: int
    memory: int
    compile_s: float | None = None
    init_s: float | None = None
    segment_s: float | None = None

    @property
    def seconds(self) -> float | None:
        """Estimated seconds for the whole bucket: compilation, then each group's init and segments."""
        if self.segment_s is None:
            return None
        return self.compile_s + self.bucket.n_groups * (self.init_s + self.records * self.segment_s)


@dataclasses.dataclass
class RunPlan:
    """What a run would do, bucket by bucket; returned by ``dynsim.run(..., dry_run=True)``.

    Attributes:
      layout: ``"vmap"`` or ``"packed"``.
      steps: training steps per member.
      members: members to train (duplicates of another member are trained once and not counted).
      buckets: one :class:`BucketPlan` per compiled program, in the order the run trains them.
      backend, local_devices, processes: where the plan was made.
      memory_limit: bytes a device may use (the allocator's limit, or the machine's memory on CPU), or None.
    """

    layout: str
    steps: int
    members: int
    buckets: list[BucketPlan]
    backend: str
    local_devices: int
    processes: int
    memory_limit: int | None
    _task: Any = dataclasses.field(default=None, repr=False)
    _sweep: Any = dataclasses.field(default=None, repr=False)
    _layouts: Any = dataclasses.field(default=None, repr=False)

    @classmethod
    def of(cls, task, sweep, layout: str, buckets: list[Bucket], make_prog, *, chunk_members: int, steps: int,
           copies: np.ndarray, layouts: dict) -> RunPlan:
        table = sweep.members()
        out = []
        for b in buckets:
            prog = make_prog(b)
            out.append(BucketPlan(bucket=b, program=prog, widths=tuple(sorted({int(w) for w in
                                                                              table["width"][b.members]})),
                                  chunks=len(chunks(b, chunk_members)), records=steps // prog.record_every,
                                  memory=device_share(prog, b.group)))
        return cls(layout=layout, steps=steps, members=int((~copies).sum()), buckets=out,
                   backend=jax.default_backend(), local_devices=jax.local_device_count(),
                   processes=jax.process_count(), memory_limit=memory_limit(), _task=task, _sweep=sweep,
                   _layouts=layouts)

    @property
    def seconds(self) -> float | None:
        """Estimated seconds of the whole run on this backend, after :meth:`calibrate` (None before)."""
        if any(b.seconds is None for b in self.buckets):
            return None
        return float(sum(b.seconds for b in self.buckets))

    def calibrate(self, log=None) -> RunPlan:
        """Time one group of each bucket on this backend and fill in the estimates.

        Each bucket's program is run with one record per segment (``record_every`` steps), for its first group: the
        first calls of init and segment include compilation, the second ones are the steady state. A bucket's
        estimate is its compilation plus, for each group, one init and ``steps / record_every`` segments. The real
        run compiles its own program (``records_per_segment`` records per call), which takes about as long.
        """
        data = self._task.make()
        table = member_table(self._sweep, self.steps)  # a swept schedule's table; warmup does not change the timing
        for k, bp in enumerate(self.buckets):
            b = bp.bucket
            prog = dataclasses.replace(bp.program, records_per_segment=1)
            layout = self._layouts[prog.layout]
            members = b.member_groups()[0]
            placed = layout.place(prog, member_hyper(self._sweep, members, b.group, table=table),
                                  table["width"][members])
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                state, rec = layout.init(prog, data, placed)
                jax.block_until_ready((state, rec))
                t1 = time.perf_counter()
                state, rec = layout.advance(prog, data, state, placed, jnp.asarray(0))
                jax.block_until_ready((state, rec))
                times.append((t1 - t0, time.perf_counter() - t1))
            (init0, seg0), (init1, seg1) = times
            self.buckets[k] = dataclasses.replace(bp, compile_s=max(0.0, init0 - init1) + max(0.0, seg0 - seg1),
                                                  init_s=init1, segment_s=seg1)
            if log is not None:
                log(f"calibrated bucket {k + 1} of {len(self.buckets)}")
        return self

    def rows(self) -> list[dict]:
        """One plain dict per bucket (for printing or JSON)."""
        out = []
        for bp in self.buckets:
            b = bp.bucket
            out.append({"optimizer": b.optimizer, "batch_size": int(getattr(b, "batch_size", 0)),
                        "n_pad": int(b.n_pad), "widths": list(bp.widths), "members": int(len(b.members)),
                        "group": int(b.group), "groups": int(b.n_groups), "chunks": bp.chunks,
                        "memory_bytes": int(bp.memory), "packs": b.packs is not None, "compile_s": bp.compile_s,
                        "init_s": bp.init_s, "segment_s": bp.segment_s, "seconds": bp.seconds})
        return out

    def to_dict(self) -> dict:
        return {"layout": self.layout, "steps": self.steps, "members": self.members, "backend": self.backend,
                "local_devices": self.local_devices, "processes": self.processes,
                "memory_limit_bytes": self.memory_limit, "seconds": self.seconds, "buckets": self.rows()}
