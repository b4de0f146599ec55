"""Results on disk: a directory that is written chunk by chunk and loads in one line.

Layout of a results directory::

    DIR/meta.json          what is being computed: coordinates of every axis, record steps, variables, spec
    DIR/chunks/*.nc        one netCDF file per finished chunk of members (flat ``member`` dimension)
    DIR/results.nc         the assembled grid, written once every member is done

Each chunk is written to a temporary name and renamed, so a run killed at any moment leaves only whole chunks.
Running again with the same directory skips the members already stored and computes the rest; the final
``results.nc`` is the same as that of an uninterrupted run. Nothing is pickled: loading a result never executes
code. :func:`load` returns the assembled ``xarray.Dataset`` (a partial one, NaN where members are missing, if the run
has not finished).
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid

import numpy as np
import xarray as xr

__all__ = ["load", "Store", "MetaMismatch", "write_results"]

_ENGINE = "h5netcdf"


class MetaMismatch(ValueError):
    """The directory ``path`` holds results of a different computation."""

    def __init__(self, path):
        super().__init__(f"{path} holds results of a different spec; choose another output directory.")
        self.path = path

    def __reduce__(self):
        return type(self), (self.path,)


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_write_dataset(ds: xr.Dataset, path: pathlib.Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    ds.to_netcdf(tmp, engine=_ENGINE)
    os.replace(tmp, path)


class Store:
    """A results directory being written.

    Args:
      path: the directory (created if missing).
      meta: JSON-serialisable description with keys ``coords`` (axis -> values), ``axes`` (ordered axis names),
        ``steps`` (record steps), ``variables`` (name -> {"dims": [...], "shape": [...], "description": str}),
        and anything else (``spec``, versions) kept as attributes.
    Raises:
      MetaMismatch: if ``path`` already holds a different computation.
    """

    def __init__(self, path, meta: dict):
        self.path = pathlib.Path(path)
        self.meta = json.loads(json.dumps(meta))
        (self.path / "chunks").mkdir(parents=True, exist_ok=True)
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if old.get("key") != self.meta.get("key"):
                raise MetaMismatch(self.path)
            self.meta = old
        else:
            _atomic_write_text(meta_path, json.dumps(self.meta, indent=1))
        for stale in (self.path / "chunks").glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    @property
    def size(self) -> int:
        return int(np.prod([len(self.meta["coords"][a]) for a in self.meta["axes"]]))

    def done(self) -> np.ndarray:
        """Boolean mask over members already stored."""
        mask = np.zeros(self.size, bool)
        for f in sorted((self.path / "chunks").glob("*.nc")):
            with xr.open_dataset(f, engine=_ENGINE) as ds:
                mask[ds["member"].values] = True
        return mask

    def write_chunk(self, members: np.ndarray, variables: dict[str, np.ndarray], diverged_at: np.ndarray) -> None:
        """Write the records of ``members`` (flat indices) as one chunk file."""
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
        _atomic_write_dataset(ds, self.path / "results.nc")
        return ds


def write_results(ds: xr.Dataset, path) -> None:
    """Write a results ``Dataset`` to a netCDF file atomically (a killed write leaves the old file or none)."""
    _atomic_write_dataset(ds, pathlib.Path(path))


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
             for k, v in meta.items() if k not in ("coords", "axes", "steps", "variables")}
    attrs["complete"] = int(np.all(diverged > -2))
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _read_chunks(path: pathlib.Path, names):
    for f in sorted((path / "chunks").glob("*.nc")):
        with xr.open_dataset(f, engine=_ENGINE) as ds:
            yield ds["member"].values, {n: ds[n].values for n in names}, ds["diverged_at"].values


def assemble(path) -> xr.Dataset:
    """Build the full grid Dataset from ``meta.json`` and the chunk files (NaN where members are missing)."""
    path = pathlib.Path(path)
    meta = json.loads((path / "meta.json").read_text())
    return grid_dataset(meta, _read_chunks(path, list(meta["variables"])))


def load(path) -> xr.Dataset:
    """Load a results directory (or a ``results.nc`` file) as an ``xarray.Dataset``.

    The dataset has one dimension per swept axis plus ``step``; ``attrs["spec"]`` holds the full spec as JSON.
    An unfinished run loads too, with NaN for members not yet computed and ``attrs["complete"] == 0``.

    Example::

        ds = dynsim.io.load("runs/lr-transfer")
        ds["loss"].isel(step=-1).mean("seed")
    """
    path = pathlib.Path(path)
    if path.is_file():
        return xr.load_dataset(path, engine=_ENGINE)
    if (path / "results.nc").exists():
        return xr.load_dataset(path / "results.nc", engine=_ENGINE)
    if (path / "meta.json").exists():
        return assemble(path)
    raise FileNotFoundError(f"{path} holds no dynsim results (no results.nc or meta.json).")
