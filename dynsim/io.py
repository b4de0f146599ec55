"""Results on disk: a directory that is written chunk by chunk and loads in one line.

Layout of a results directory::

    DIR/meta.json                what is being computed: coordinates of every axis, record steps, variables, spec
    DIR/chunks/NAME.nc           one netCDF file per finished chunk of members (flat ``member`` dimension)
    DIR/chunks/NAME.nc.sha256    the chunk's checksum, one line ``<sha256 of the file's bytes>  NAME.nc``
    DIR/chunks/ID.claim          a chunk some run is computing now (see "Several runs" below)
    DIR/chunks/damaged/          damaged chunks, set aside with their checksums and never read again
    DIR/results.nc               the assembled grid, written once every member is done
    DIR/results.nc.sha256        its checksum, in the same format
    DIR/results.claim            held while a run writes ``results.nc``
    DIR/damaged/                 a damaged ``results.nc``, set aside

A checksum file is what ``sha256sum -c`` reads. Nothing is pickled: loading a result never executes code.
:func:`load` returns the assembled ``xarray.Dataset`` (a partial one, NaN where members are missing, if the run has
not finished).

Writing. Every file (``meta.json``, chunks, checksums, ``results.nc``, and an experiment's ``summary.json`` and
``report.md`` through :func:`write_text`) is written to a temporary name ``.NAME.PID.NS.RANDOM.tmp`` in its own
folder (``PID`` and ``NS`` name the writing process, see below), flushed to disk (``fsync``) and renamed over its
final name, so a process killed at any moment leaves only whole files. The checksum of a netCDF file is computed
from the flushed temporary file and written before the rename: a chunk that can be seen has its checksum. Running
again with the same directory skips the members already stored and computes the rest; the final ``results.nc`` is
the same as that of an uninterrupted run.

Reading. A chunk is used only if its bytes match its checksum and it holds the members and variables ``meta.json``
describes. A damaged chunk (truncated, overwritten, unreadable, or without a checksum) is named in a
:class:`DamageWarning`, moved to ``chunks/damaged/``, and its members count as not stored, so the next run computes
them again. A ``results.nc`` that fails its checksum (or, without one, cannot be read) is set aside the same way and
:func:`load` assembles the grid from the chunks; the next run writes it anew. Directories written before checksums
existed (``meta.json`` without ``"checksums"``) accept chunks without a checksum file if they read correctly.

Several runs into one directory (``--out``) share the work. Chunks have an identity given the plan,
``ID = chunk-<first member>-<hash>`` of the sorted member indices (:func:`chunk_id`), the same in every run with the
same settings. Before computing a chunk a run
creates ``chunks/ID.claim`` with ``O_CREAT | O_EXCL`` (of racing runs exactly one succeeds), holding the JSON
``{"pid", "start", "host", "ns", "time", "token"}`` of its process (``ns``: a tag of the machine's boot and process
namespace, within which pids compare; ``start``: the process's start time), checks that the chunk is still missing,
computes it, and deletes the claim once the chunk is written.
Other runs skip a claimed chunk and, after their own work, wait for it to appear (giving up with
:class:`ClaimTimeout` when none of the chunks they wait for appears for ``WAIT_S`` seconds), then assemble. A claim
is stale, and the first run to notice takes it over (renames it aside, checks that it renamed what it judged, and
claims anew), when its owner process is gone (on the same machine and process namespace ``ns``: no process ``pid``
started at ``start``) or its modification time, which the owner refreshes every ``HEARTBEAT_S`` seconds, is older
than ``STALE_S`` seconds. In a distributed run a claim also records the coordinator's address and the process index
(``job``, ``process``), and one carrying this process's own pair that this process does not hold is stale: it was
left by the killed process this one restarts. ``results.claim`` is held the same way while ``results.nc`` and its
checksum are written, so they stay a pair. A run opening the directory deletes stale claims, and temporary files
only when their owner process, named in the file name, is gone, or when they are older than ``TMP_STALE_S`` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from io import BytesIO

import numpy as np
import xarray as xr

__all__ = ["load", "Store", "MetaMismatch", "write_results", "write_text", "write_json", "chunk_id", "DamageWarning",
           "DamagedError", "ClaimTimeout"]

_ENGINE = "h5netcdf"
CHECKSUMS = "sha256"  # the value of meta.json's "checksums": chunks without a checksum file are damaged
HEARTBEAT_S = 60.0  # seconds between refreshes of a held claim's modification time
STALE_S = 600.0  # a claim not refreshed for this long is stale, whoever owns it
TMP_STALE_S = 86400.0  # a temporary file untouched for this long is deleted, whoever owns it
WAIT_S = 3600.0  # the longest a run waits for chunks claimed by other runs with none of them appearing


class MetaMismatch(ValueError):
    """The directory ``path`` holds results of a different computation."""

    def __init__(self, path):
        super().__init__(f"{path} holds results of a different spec; choose another output directory.")
        self.path = path

    def __reduce__(self):
        return type(self), (self.path,)


class DamageWarning(UserWarning):
    """A file of a results directory failed its checks; it was set aside and is not used."""


class DamagedError(ValueError):
    """A results file that is damaged and cannot be rebuilt here; the message is one sentence naming it."""


class ClaimTimeout(TimeoutError):
    """Chunks that other runs claimed did not appear in time; the message is one sentence."""


# -- processes ----------------------------------------------------------------------------------------------------

_NS: list[str] = []


def _namespace() -> str:
    """A tag of this machine's boot and process namespace: where two processes share it, pids compare."""
    if not _NS:
        parts = [socket.gethostname()]
        with contextlib.suppress(OSError):
            parts.append(pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        with contextlib.suppress(OSError):
            parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
        _NS.append(hashlib.sha256("|".join(parts).encode()).hexdigest()[:12])
    return _NS[0]


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), ``""`` for a zombie, None if unknown."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # fields 3.. of proc(5); the name in parentheses may hold spaces
    return "" if fields[0] in ("Z", "X") else fields[19]


def _alive(pid, start=None) -> bool:
    """Whether process ``pid`` of this namespace runs (and, given ``start``, is the one started then)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        pass
    now = _started(pid)
    return now != "" and (start is None or now is None or now == start)


# In a distributed run, the coordinator's address and this process's index ({"job": ..., "process": ...}), set by
# dynsim.executor._distributed. At most one live process holds a given index of a given coordinator, so a claim
# carrying this process's own pair that this process does not hold was left by its killed predecessor, whichever
# machine ran it: a restarted run takes it over at once instead of after STALE_S.
_JOB: dict = {}


def _owner() -> dict:
    pid = os.getpid()
    return {"pid": pid, "start": _started(pid), "host": socket.gethostname(), "ns": _namespace(), "time": time.time(),
            "token": uuid.uuid4().hex, **_JOB}


# -- atomic writes ------------------------------------------------------------------------------------------------

_TMP = re.compile(r"\.(\d+)\.([0-9a-f]{12})\.[0-9a-f]{8}\.tmp$")


def _tmp_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{_namespace()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync(path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:  # not every system opens folders
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _write_tmp(path: pathlib.Path, write) -> pathlib.Path:
    """A temporary file next to ``path`` filled by ``write(tmp)`` and flushed to disk."""
    tmp = _tmp_path(path)
    try:
        write(tmp)
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _replace(tmp: pathlib.Path, path: pathlib.Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A process killed at any moment leaves the old file or the new one, never a part.
    """
    path = pathlib.Path(path)
    _replace(_write_tmp(path, lambda tmp: tmp.write_bytes(text.encode("utf-8"))), path)


def write_json(path, obj, **kwargs) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`write_text`); ``kwargs`` go to
    ``json.dumps``."""
    write_text(path, json.dumps(obj, **{"indent": 1, **kwargs}))


def _sum_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_dataset(ds: xr.Dataset, path: pathlib.Path) -> None:
    """Write ``ds`` to ``path`` atomically, its checksum file first (written from the flushed temporary file)."""
    path = pathlib.Path(path)
    tmp = _write_tmp(path, lambda t: ds.to_netcdf(t, engine=_ENGINE))
    try:
        write_text(_sum_path(path), f"{_sha256_file(tmp)}  {path.name}\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


def write_results(ds: xr.Dataset, path) -> None:
    """Write a results ``Dataset`` to a netCDF file atomically (a killed write leaves the old file or none), with
    its checksum file ``PATH.sha256``. Runs writing the same file (the processes of a distributed run) take turns,
    holding ``PATH.claim``, so that file and checksum stay a pair."""
    path = pathlib.Path(path)
    with _holding(path.with_name(path.name + ".claim")):
        _atomic_write_dataset(ds, path)


def _remove_stale_tmp(folder: pathlib.Path) -> None:
    """Delete temporary files whose owner process is gone or that nobody touched for ``TMP_STALE_S`` seconds."""
    for f in folder.glob(".*.tmp"):
        m = _TMP.search(f.name)
        try:
            age = time.time() - f.stat().st_mtime
        except OSError:
            continue
        orphan = m is not None and m.group(2) == _namespace() and not _alive(int(m.group(1)))
        if orphan or age > TMP_STALE_S:
            f.unlink(missing_ok=True)


# -- checks -------------------------------------------------------------------------------------------------------


class _Damage(Exception):
    """Why a file cannot be used (a clause of the warning)."""


def _expected_sum(path: pathlib.Path) -> str | None:
    """The checksum recorded for ``path``: None without a checksum file, ``""`` if that file is malformed."""
    try:
        parts = _sum_path(path).read_bytes().decode("ascii", "replace").split()
    except FileNotFoundError:
        return None
    ok = len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]) and parts[1].lstrip("*") == path.name
    return parts[0] if ok else ""


def _mismatch(path: pathlib.Path, expected: str) -> str:
    return (f"truncated or overwritten: its bytes do not match the sha256 in {_sum_path(path).name}" if expected else
            f"its checksum file {_sum_path(path).name} is malformed")


def _reason(e: Exception) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    return f"it cannot be read: {text}"


def _read_chunk(f: pathlib.Path, meta: dict, size: int):
    """``(members, variables, diverged_at)`` of a chunk file, read from the verified bytes; raises :class:`_Damage`."""
    expected = _expected_sum(f)
    data = f.read_bytes()
    if expected is None:
        if meta.get("checksums") is not None:
            raise _Damage(f"it has no checksum file {_sum_path(f).name}")
    elif hashlib.sha256(data).hexdigest() != expected:
        raise _Damage(_mismatch(f, expected))
    try:
        with xr.open_dataset(BytesIO(data), engine=_ENGINE) as ds:
            ds = ds.load()
    except Exception as e:  # HDF5 and netCDF decoders raise many kinds of errors on bad bytes
        raise _Damage(_reason(e)) from None
    names = list(meta["variables"])
    members = ds["member"].values if "member" in ds.variables else None
    sound = members is not None and members.ndim == 1 and members.dtype.kind in "iu"
    if sound:
        n = len(members)
        shapes = {name: (n, len(meta["steps"]), *meta["variables"][name]["shape"]) for name in names}
        shapes["diverged_at"] = (n,)
        sound = (bool(((members >= 0) & (members < size)).all()) and len(np.unique(members)) == n
                 and all(name in ds.variables and ds[name].shape == shape for name, shape in shapes.items()))
    if not sound:
        raise _Damage("it does not hold the members and variables meta.json describes")
    return members.astype(np.int64), {name: ds[name].values for name in names}, ds["diverged_at"].values


def _set_aside(f: pathlib.Path, reason: str, consequence: str) -> None:
    """Move a damaged file (and its checksum) to ``damaged/`` beside it and say so in a :class:`DamageWarning`."""
    dest = f.parent / "damaged" / f.name
    try:
        dest.parent.mkdir(exist_ok=True)
        if dest.exists():
            dest = dest.with_name(f"{f.stem}.{uuid.uuid4().hex[:8]}{f.suffix}")
        os.rename(f, dest)
    except FileNotFoundError:
        if not f.exists():
            return  # another process set it aside (and said so)
        where = "it could not be moved and is skipped"
    except OSError:
        where = "it could not be moved and is skipped"
    else:
        with contextlib.suppress(OSError):
            os.rename(_sum_path(f), _sum_path(dest))
        where = f"moved to {dest}"
    warnings.warn(f"{f} is damaged ({reason}); {where}, {consequence}.", DamageWarning, stacklevel=4)


def _sound_chunks(files, meta: dict):
    """``(file, (members, variables, diverged_at))`` of each sound chunk among ``files``; damaged ones are set
    aside, vanished ones (set aside by another process) skipped."""
    size = int(np.prod([len(meta["coords"][a]) for a in meta["axes"]]))
    for f in files:
        try:
            part = _read_chunk(f, meta, size)
        except FileNotFoundError:
            continue
        except _Damage as e:
            _set_aside(f, str(e), "and its members will be computed again")
            continue
        yield f, part


def _read_meta(path: pathlib.Path) -> dict:
    f = path / "meta.json"
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not (isinstance(meta, dict) and all(k in meta for k in ("axes", "coords", "steps", "variables"))):
        raise DamagedError(f"{f} is damaged (not the JSON description of a results directory), so the results "
                           f"beside it cannot be read; run into another directory.")
    return meta


def _load_results(f: pathlib.Path):
    """``(dataset, None)`` for a sound results file, else ``(None, reason)``."""
    reason = ""
    for attempt in range(2):
        if attempt:
            time.sleep(0.2)  # a writer may have renamed the checksum but not yet the file
        expected = _expected_sum(f)
        if expected is not None and _sha256_file(f) != expected:
            reason = _mismatch(f, expected)
            continue
        try:
            return xr.load_dataset(f, engine=_ENGINE), None
        except Exception as e:  # HDF5 and netCDF decoders raise many kinds of errors on bad bytes
            return None, _reason(e)
    return None, reason


# -- claims -------------------------------------------------------------------------------------------------------

_HELD: set = set()  # claim files this process holds, refreshed by the heartbeat thread
_HELD_LOCK = threading.Lock()
_BEAT: list = []


def _heartbeat() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _HELD_LOCK:
            held = list(_HELD)
        for claim in held:
            with contextlib.suppress(OSError):
                os.utime(claim)


def _hold(claim: pathlib.Path, holding: bool) -> None:
    claim = claim.absolute()
    with _HELD_LOCK:
        if holding:
            _HELD.add(claim)
            if not _BEAT:
                _BEAT.append(threading.Thread(target=_heartbeat, name="dynsim-claims", daemon=True))
                _BEAT[0].start()
        else:
            _HELD.discard(claim)


def chunk_id(members) -> str:
    """The identity of a chunk of the plan: ``chunk-<first member>-<hash of the sorted members>``."""
    m = np.unique(np.asarray(members, np.int64)).astype("<i8")
    return f"chunk-{int(m[0]) if m.size else 0:09d}-{hashlib.sha256(m.tobytes()).hexdigest()[:12]}"


def _read_claim(claim: pathlib.Path):
    """``(text, owner dict or None, age in seconds)``; raises FileNotFoundError if there is no claim."""
    age = time.time() - claim.stat().st_mtime
    text = claim.read_bytes().decode("utf-8", "replace")
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        owner = None  # being written, or damaged: judged by its age alone
    return text, owner if isinstance(owner, dict) else None, age


def _stale(claim: pathlib.Path, owner, age: float) -> bool:
    if age > STALE_S:
        return True
    if owner is not None and _JOB and all(owner.get(k) == v for k, v in _JOB.items()):
        with _HELD_LOCK:
            return claim.absolute() not in _HELD  # left by this process's predecessor in the same distributed slot
    if owner is None or owner.get("ns") != _namespace():
        return False
    if owner.get("pid") == os.getpid():
        with _HELD_LOCK:
            return claim.absolute() not in _HELD  # left by this process earlier
    return not _alive(owner.get("pid"), owner.get("start"))


def _take_over(claim: pathlib.Path) -> bool:
    """Remove ``claim`` if it is stale; whether it is gone."""
    try:
        text, owner, age = _read_claim(claim)
    except FileNotFoundError:
        return True
    except OSError:  # unreadable here: left alone
        return False
    if not _stale(claim, owner, age):
        return False
    aside = _tmp_path(claim)
    try:
        os.rename(claim, aside)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if aside.read_bytes().decode("utf-8", "replace") != text:  # a fresh claim was made meanwhile: restore it
            with contextlib.suppress(OSError):
                os.link(aside, claim)
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)


def _claim(claim: pathlib.Path) -> dict | None:
    """Claim ``claim`` for this process: its owner record, or None while another live run holds it."""
    for _ in range(3):
        owner = _owner()
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _take_over(claim):
                return None
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(owner, fh)
        _hold(claim, True)
        return owner
    return None


def _release(claim: pathlib.Path, owner: dict) -> None:
    _hold(claim, False)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if json.loads(claim.read_bytes()).get("token") == owner["token"]:
            claim.unlink()


def _claimant(claim: pathlib.Path) -> str:
    with contextlib.suppress(OSError):
        owner = _read_claim(claim)[1]
        if owner is not None:
            return f"pid {owner.get('pid')} on {owner.get('host')}"
    return "another run"


@contextlib.contextmanager
def _holding(claim: pathlib.Path):
    """Hold ``claim`` for a ``with`` block, waiting (up to ``WAIT_S`` seconds) while another run holds it."""
    start, pause = time.monotonic(), 0.05
    while (owner := _claim(claim)) is None:
        if time.monotonic() - start > WAIT_S:
            raise ClaimTimeout(f"{claim} stayed held by {_claimant(claim)} for {WAIT_S:g} s; run again when "
                               f"that run has finished.")
        time.sleep(pause)
        pause = min(2 * pause, 1.0)
    try:
        yield
    finally:
        _release(claim, owner)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# -- the store ----------------------------------------------------------------------------------------------------


class Store:
    """A results directory being written (the format and the protocol for several runs: see :mod:`dynsim.io`).

    Args:
      path: the directory (created if missing).
      meta: JSON-serialisable description with keys ``coords`` (axis -> values), ``axes`` (ordered axis names),
        ``steps`` (record steps), ``variables`` (name -> {"dims": [...], "shape": [...], "description": str}),
        and anything else (``spec``, versions) kept as attributes.
    Raises:
      MetaMismatch: if ``path`` already holds a different computation.
      DamagedError: if ``path``'s ``meta.json`` is damaged.
    """

    def __init__(self, path, meta: dict):
        self.path = pathlib.Path(path)
        self.meta = json.loads(json.dumps({**meta, "checksums": CHECKSUMS}))
        (self.path / "chunks").mkdir(parents=True, exist_ok=True)
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            old = _read_meta(self.path)
            if old.get("key") != self.meta.get("key"):
                raise MetaMismatch(self.path)
            self.meta = old
        else:
            write_json(meta_path, self.meta)
        for folder in (self.path, self.path / "chunks"):
            _remove_stale_tmp(folder)
        for claim in [*(self.path / "chunks").glob("*.claim"), self.path / "results.claim"]:
            _take_over(claim)  # a stale claim (of a run killed after writing its chunk) is removed
        self._stored: dict[str, np.ndarray] = {}  # chunk file name -> its members, verified once

    @property
    def size(self) -> int:
        return int(np.prod([len(self.meta["coords"][a]) for a in self.meta["axes"]]))

    def done(self) -> np.ndarray:
        """Boolean mask over members stored in sound chunks. Each chunk file is verified once per ``Store``; a
        damaged one is set aside with a :class:`DamageWarning` and its members count as not stored."""
        files = sorted((self.path / "chunks").glob("*.nc"))
        names = {f.name for f in files}
        self._stored = {k: v for k, v in self._stored.items() if k in names}
        for f, (members, _, _) in _sound_chunks([f for f in files if f.name not in self._stored], self.meta):
            self._stored[f.name] = members
        mask = np.zeros(self.size, bool)
        for members in self._stored.values():
            mask[members] = True
        return mask

    def claim_each(self, items, members, log=None):
        """Yield the ``items`` (chunks of the plan) this process claims, skipping those whose members are stored.

        ``members(item)`` gives the flat member indices an item stores, whose :func:`chunk_id` names its claim. An
        item is yielded while its claim is held and released when the caller asks for the next one (write the chunk
        before that). Items that live other runs claimed are taken up after the others: skipped once their chunks
        appear, computed here if their claim goes stale. ``log`` (default: stderr) gets a line when waiting starts.

        Raises:
          ClaimTimeout: when none of the awaited chunks appeared for ``WAIT_S`` seconds.
        """
        pending = [(item, np.asarray(members(item))) for item in items]
        first, since, pause = True, time.monotonic(), 0.05
        while pending:
            stored = None if first else self.done()
            left = []
            for item, m in pending:
                if stored is not None and stored[m].all():
                    continue
                claim = self.path / "chunks" / f"{chunk_id(m)}.claim"
                owner = _claim(claim)
                if owner is None:
                    left.append((item, m))
                    continue
                try:
                    if not self.done()[m].all():  # another run may have stored it since the plan was made
                        yield item
                finally:
                    _release(claim, owner)
            some = f"{len(left)} chunk{'s' if len(left) > 1 else ''}"
            if left and first:
                who = _claimant(self.path / "chunks" / f"{chunk_id(left[0][1])}.claim")
                (log or _stderr)(f"{self.path}: waiting for {some} that other runs are computing (e.g. {who}).")
            if len(left) < len(pending):
                since, pause = time.monotonic(), 0.05
            elif time.monotonic() - since > WAIT_S:
                who = _claimant(self.path / "chunks" / f"{chunk_id(left[0][1])}.claim")
                raise ClaimTimeout(f"{some} of {self.path} claimed by other runs ({who}) did not appear within "
                                   f"{WAIT_S:g} s; run again when those runs have finished.")
            pending, first = left, False
            if pending:
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

    def _holding(self, claim: pathlib.Path):
        return _holding(claim)

    def write_chunk(self, members: np.ndarray, variables: dict[str, np.ndarray], diverged_at: np.ndarray) -> None:
        """Write the records of ``members`` (flat indices) as one chunk file, with its checksum."""
        data_vars = {"diverged_at": (("member",), np.asarray(diverged_at, np.int64))}
        for name, value in variables.items():
            dims = ("member", "step", *self.meta["variables"][name]["dims"])
            data_vars[name] = (dims, np.asarray(value))
        ds = xr.Dataset(data_vars, coords={"member": np.asarray(members, np.int64)})
        name = f"chunk-{int(np.min(members)):09d}-{uuid.uuid4().hex[:8]}.nc"
        _atomic_write_dataset(ds, self.path / "chunks" / name)

    def finalize(self, attrs: dict | None = None) -> xr.Dataset:
        """Assemble the grid, add ``attrs`` (e.g. timing), write ``results.nc`` atomically and return it."""
        ds = assemble(self.path)
        ds.attrs.update(attrs or {})
        with self._holding(self.path / "results.claim"):  # one writer at a time keeps file and checksum paired
            _atomic_write_dataset(ds, self.path / "results.nc")
        return ds


def grid_dataset(meta: dict, parts) -> xr.Dataset:
    """Build the full grid Dataset from ``meta`` and ``(members, variables, diverged_at)`` parts.

    Members missing from ``parts`` are NaN, with ``diverged_at == -2``.
    """
    axes = meta["axes"]
    shape = tuple(len(meta["coords"][a]) for a in axes)
    size = int(np.prod(shape))
    steps = np.asarray(meta["steps"], np.int64)
    dtype = np.float64 if meta.get("x64", True) else np.float32  # the precision the members were trained in
    arrays = {name: np.full((size, len(steps), *v["shape"]), np.nan, dtype) for name, v in meta["variables"].items()}
    diverged = np.full(size, -2, np.int64)  # -2: not computed yet; -1: did not diverge
    for members, variables, diverged_at in parts:
        diverged[members] = diverged_at
        for name in arrays:
            arrays[name][members] = variables[name]
    coords = {a: np.asarray(meta["coords"][a]) for a in axes}
    coords["step"] = steps
    data_vars = {}
    for name, v in meta["variables"].items():
        data_vars[name] = ((*axes, "step", *v["dims"]), arrays[name].reshape(*shape, len(steps), *v["shape"]),
                           {"description": v.get("description", "")})
    data_vars["diverged_at"] = (axes, diverged.reshape(shape),
                                {"description": "step at which the member diverged; -1 never, -2 not computed"})
    attrs = {k: (int(v) if isinstance(v, bool) else v if isinstance(v, (str, int, float)) else json.dumps(v))
             for k, v in meta.items() if k not in ("coords", "axes", "steps", "variables", "checksums")}
    attrs["complete"] = int(np.all(diverged > -2))
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def assemble(path) -> xr.Dataset:
    """Build the full grid Dataset from ``meta.json`` and the sound chunk files (NaN where members are missing).

    Damaged chunks are set aside with a :class:`DamageWarning`.
    """
    path = pathlib.Path(path)
    meta = _read_meta(path)
    files = sorted((path / "chunks").glob("*.nc"))
    return grid_dataset(meta, (part for _, part in _sound_chunks(files, meta)))


def load(path) -> xr.Dataset:
    """Load a results directory (or a ``results.nc`` file) as an ``xarray.Dataset``.

    The dataset has one dimension per swept axis plus ``step``; ``attrs["spec"]`` holds the full spec as JSON.
    An unfinished run loads too, with NaN for members not yet computed and ``attrs["complete"] == 0``. A damaged
    ``results.nc`` of a directory with chunks is set aside with a :class:`DamageWarning` and the grid is assembled
    from the chunks; damaged chunks are set aside the same way.

    Raises:
      DamagedError: for a damaged file that cannot be rebuilt (no ``meta.json`` beside it, or a damaged one).
      FileNotFoundError: if ``path`` holds no results.

    Example::

        ds = dynsim.io.load("runs/lr-transfer")
        ds["loss"].isel(step=-1).mean("seed")
    """
    path = pathlib.Path(path)
    if path.is_file():
        if path.name == "results.nc" and (path.parent / "meta.json").exists():
            return load(path.parent)
        ds, reason = _load_results(path)
        if ds is None:
            raise DamagedError(f"{path} is damaged ({reason}).")
        return ds
    results = path / "results.nc"
    if results.is_file():
        ds, reason = _load_results(results)
        if ds is not None:
            return ds
        if not (path / "meta.json").exists():
            raise DamagedError(f"{results} is damaged ({reason}); run the experiment again with the same output "
                               f"directory to rewrite it.")
        _set_aside(results, reason, "and the results are assembled from the chunks")
    if (path / "meta.json").exists():
        return assemble(path)
    raise FileNotFoundError(f"{path} holds no dynsim results (no results.nc or meta.json).")
