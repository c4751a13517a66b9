"""Faceset: read-only, random-access view of the committed faces [0, count)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import manifest as mf
from preprocessing.faceset import store


class Faceset:
    """A faceset opened for reading. Arrays not listed in the manifest are ignored."""

    def __init__(self, path: str, manifest: dict, arrays: dict):
        self._path = path
        self._manifest = manifest
        self._arrays = arrays

    @classmethod
    def open(cls, path: str, *, cache_bytes: int = 1 << 30) -> "Faceset":
        """Opens a faceset; `cache_bytes` bounds TensorStore's cache of decoded chunks.

        A cache as large as the faceset keeps it in RAM after the first epoch.
        """
        manifest = mf.load_manifest(path)
        count = manifest["count"]
        try:
            arrays = store.open_arrays(path, manifest["arrays"], context=store.read_context(cache_bytes),
                                       writable=False)
        except ValueError as e:
            raise UserError(f"{path}: corrupt faceset: {str(e).splitlines()[0]}") from None
        for name, array in arrays.items():
            entry = manifest["arrays"][name]
            if array.dtype.numpy_dtype != np.dtype(entry["dtype"]) or list(array.shape[1:]) != entry["shape"]:
                raise UserError(f"{path}: corrupt faceset: array {name!r} is {array.dtype.name} "
                                f"{list(array.shape[1:])}, the manifest says {entry['dtype']} {entry['shape']}")
            if array.shape[0] < count:
                raise UserError(f"{path}: corrupt faceset: array {name!r} holds {array.shape[0]} faces, "
                                f"fewer than count={count}")
        return cls(path, manifest, arrays)

    # ----------------------------------------------------------------------------- properties
    @property
    def path(self) -> str:
        return self._path

    @property
    def manifest(self) -> dict:
        return self._manifest

    @property
    def count(self) -> int:
        return self._manifest["count"]

    @property
    def size(self) -> int:
        return self._manifest["size"]

    @property
    def face_type(self) -> FaceType:
        return FaceType.from_dfl_name(self._manifest["face_type"])

    @property
    def sources(self) -> list[dict]:
        return self._manifest["sources"]

    @property
    def array_names(self) -> tuple[str, ...]:
        return tuple(self._manifest["arrays"])

    def __len__(self) -> int:
        return self.count

    # ----------------------------------------------------------------------------- reading
    def read(self, name: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows at arbitrary indices (any order, repeats allowed), read in one batch."""
        return self.read_many([name], indices)[name]

    def read_many(self, names: Sequence[str], indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The same rows of several arrays, all read in one coalesced TensorStore batch."""
        self._check_names(names)
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"indices must be a 1-D integer array, got shape {idx.shape} {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"face index out of range [0, {self.count}): "
                             f"{idx[(idx < 0) | (idx >= self.count)][0]}")
        return store.read_rows(self._arrays, names, idx)

    def read_range(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array (clipped to [0, count) like a slice)."""
        start, stop, _ = slice(start, stop).indices(self.count)
        return self._slices([name], start, max(start, stop))[name].result()

    def to_numpy(self, name: str) -> np.ndarray:
        """The whole committed array."""
        return self.read_range(name, 0, self.count)

    def iter_batches(self, batch_size: int, names: Sequence[str] | None = None) -> Iterator[dict]:
        """Consecutive batches {name: rows, 'index': face indices}; the next batch is prefetched."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        names = list(self.array_names if names is None else names)
        starts = range(0, self.count, batch_size)
        ahead = self._slices(names, 0, min(batch_size, self.count)) if starts else None
        for start in starts:
            stop = min(start + batch_size, self.count)
            current = ahead
            if stop < self.count:
                ahead = self._slices(names, stop, min(stop + batch_size, self.count))
            batch = {name: future.result() for name, future in current.items()}
            batch["index"] = np.arange(start, stop)
            yield batch

    def _slices(self, names: Sequence[str], start: int, stop: int) -> dict:
        self._check_names(names)
        return store.read_slices(self._arrays, names, start, stop)

    def _check_names(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self._arrays:
                raise KeyError(f"{self._path}: no array {name!r}; it has {list(self._arrays)}")
