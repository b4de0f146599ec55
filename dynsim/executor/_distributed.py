"""Runs over several processes on JAX's distributed runtime (:func:`jax.distributed.initialize`).

Every process runs the same program on the same spec into the same results directory, which must be on a file
system they all see. Each plans the same chunks (:func:`dynsim.executor.chunks`: the plan depends on the spec and on
the number of local devices, not on the process) and claims them in its own order, its share first (chunks
``i, i + N, i + 2N, ...`` for process ``i`` of ``N``), then the others' from the end of the plan: the claims of
:mod:`dynsim.io` make sure each chunk is computed once, so a process that finishes its share early takes over work
nobody has started. After a barrier (:func:`jax.experimental.multihost_utils.sync_global_devices`) process 0
writes ``results.nc`` and the other processes assemble the same grid from the chunks without writing it; an
experiment's analysis and report are written by process 0 alone.

A member's result does not depend on the process that trains it: the chunks, groups and compiled programs are those
of a one-process run with the same local devices, so the stored numbers are the same whatever the number of
processes. Before writing anything the processes check that they compute the same thing (the key of the results
directory) and planned the same chunks; a process started with another spec, or with another number of local
devices, is refused in every process.

Resuming: after a process is killed (the distributed runtime then stops the others), starting them all again with
the same arguments computes only the chunks that were not stored. A claim of a killed process is taken over at once:
by its restarted successor (the same coordinator address and process index, on any machine), and by any process on
the machine that ran it; otherwise after :data:`dynsim.io.STALE_S` seconds (see :mod:`dynsim.io`).

Environment: :func:`initialize` passes what it was not given to :func:`jax.distributed.initialize`, which reads
``JAX_COORDINATOR_ADDRESS`` and ``JAX_LOCAL_DEVICE_IDS`` and detects the cluster launchers JAX knows (Slurm, Open MPI,
Kubernetes, Cloud TPU), so a job started by one of them needs no flags.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time

import jax
import numpy as np

from ._program import InputError

__all__ = ["initialize", "DistributedError", "process_index", "process_count", "share", "agree", "finish"]

_RUNS = [0]  # executor runs started in this process: names each run's barrier, the same in every process


class DistributedError(RuntimeError):
    """The processes of a distributed run cannot start or work together; the message is one sentence."""


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"the coordinator address must be HOST:PORT, got {address!r}.")
    return host, int(port)


def _wait_for(host: str, port: int, timeout: float) -> None:
    """Wait until something accepts TCP connections at ``host:port``, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise DistributedError(f"cannot reach the coordinator at {host}:{port} within {timeout:g} s; start "
                                       f"process 0 there (it serves the coordinator), or check the address and "
                                       f"port.") from None
            time.sleep(0.2)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
               timeout: float = 300.0, log=None) -> None:
    """Join a distributed run (:func:`jax.distributed.initialize`); call before any JAX computation.

    Args:
      coordinator: ``HOST:PORT`` of the coordinator, which process 0 serves.
      num_processes: how many processes take part.
      process_id: this process's index in ``[0, num_processes)``.
      timeout: seconds to wait for the coordinator and for every process to join.
      log: receives a line saying what this process waits for (default: stderr).

    What is not given is left to JAX: ``JAX_COORDINATOR_ADDRESS`` and a cluster launcher's environment.

    Raises:
      DistributedError: a process id outside ``[0, N)``, a malformed address, or a coordinator that cannot be
        reached within ``timeout`` seconds. A process that reaches the coordinator but whose peers do not all join
        within ``timeout`` is stopped by JAX's runtime (a deadline error), so no process waits forever.
    """
    for name, value, low in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
            raise DistributedError(f"{name} must be an integer >= {low}, got {value!r}.")
    if num_processes is not None and process_id is not None and not process_id < num_processes:
        raise DistributedError(f"process_id must lie in [0, {num_processes}) for {num_processes} processes, got "
                               f"{process_id}.")
    if not timeout > 0:
        raise DistributedError(f"the timeout must be positive, got {timeout!r}.")
    if coordinator is not None:
        host, port = _split_address(coordinator)
        if process_id != 0:  # process 0 serves the coordinator; the others wait for it, a bounded time
            start = time.monotonic()
            _wait_for(host, port, timeout)
            timeout = max(1.0, timeout - (time.monotonic() - start))
    (log or (lambda m: print(m, file=sys.stderr, flush=True)))(
        f"dynsim: process {'?' if process_id is None else process_id} of {num_processes or '?'} joining the "
        f"coordinator at {coordinator or 'the address the environment gives'} (waiting up to {timeout:g} s for "
        f"every process).")
    try:
        jax.distributed.initialize(coordinator, None if num_processes is None else int(num_processes),
                                   None if process_id is None else int(process_id),
                                   initialization_timeout=max(1, int(round(timeout))))
    except (ValueError, TypeError) as e:  # what JAX could not find in the arguments or the environment
        raise DistributedError(f"cannot start the distributed run: {str(e).rstrip('.')}; give --coordinator, "
                               f"--num-processes and --process-id, or run under a launcher JAX detects.") from None
    except RuntimeError as e:  # e.g. initialised twice, or after JAX already ran a computation
        raise DistributedError(f"cannot start the distributed run: {str(e).rstrip('.')}.") from None
    address = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:  # claims name this process's slot, which a restarted run takes over at once (dynsim.io)
        from .. import io as _io

        _io._JOB.update(job=address, process=jax.process_index())


def process_index() -> int:
    """This process's index (0 without a distributed run)."""
    return jax.process_index()


def process_count() -> int:
    """The number of processes (1 without a distributed run)."""
    return jax.process_count()


def _digest(text: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8).copy()


def agree(what: str, text: str, advice: str) -> None:
    """Check that every process holds the same ``text`` (compared by hash); a no-op in one process.

    Raises:
      InputError: in every process, naming the processes that differ from process 0.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digests = np.asarray(multihost_utils.process_allgather(_digest(text)))  # [processes, 32]
    differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if differ:
        some = ", ".join(map(str, differ))
        raise InputError(f"process{'es' if len(differ) > 1 else ''} {some} of {len(digests)} differ"
                         f"{'' if len(differ) > 1 else 's'} from process 0 in {what}; {advice}.")


def share(work: list, names) -> list:
    """``work`` (the chunks of the plan, in plan order) in the order this process claims them: its share first, then
    the others' from the end. ``names(item)`` names a chunk (:func:`dynsim.io.chunk_id`); the processes check that
    they planned the same chunks. One process gets ``work`` unchanged."""
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return work
    agree("the chunks they planned", "\n".join(map(names, work)),
          "give every process the same number of local devices and the same settings")
    own = [w for k, w in enumerate(work) if k % n == i]
    rest = [w for k, w in enumerate(work) if k % n != i]
    return own + rest[::-1]


def check_out(out) -> None:
    """A distributed run needs a results directory that every process writes into."""
    if jax.process_count() > 1 and out is None:
        raise InputError("a run over several processes needs out, a results directory every process can reach: "
                         "the processes share their chunks through it.")


def finish(store, attrs: dict):
    """After every process has stored its chunks (a barrier), process 0 writes ``results.nc``; the others assemble
    the same grid from the chunks and return it without writing it. One process just finalises the store."""
    if jax.process_count() == 1:
        return store.finalize(attrs)
    from jax.experimental import multihost_utils

    from .. import io as _io

    _RUNS[0] += 1
    multihost_utils.sync_global_devices(f"dynsim-run-{_RUNS[0]}-stored")
    if jax.process_index() == 0:
        return store.finalize(attrs)
    ds = _io.assemble(store.path)
    ds.attrs.update(attrs)
    return ds
