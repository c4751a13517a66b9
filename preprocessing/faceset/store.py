"""The TensorStore layer: zarr v3 arrays with the `sharding_indexed` codec, one folder per array.

Every array's leading axis is the face index. A shard (one file) holds `shard_faces` faces so a
faceset of 50k faces is a few hundred files, not 50k. Inside a shard, images are stored one face
per inner chunk (a random batch read touches only the faces it needs); small records use one inner
chunk per shard (a random read decodes ~140 KB at most and whole-array reads are one pass).
The shard index carries a crc32c checksum so a torn shard is detected instead of read as data.

TensorStore reports I/O failures as ValueError with the OS error code in the message; the
functions here that write turn those into OSError so callers can handle a full disk like any
other.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import tensorstore as ts

from preprocessing.faceset.schema import is_image

# Codec chains for image arrays (inside each inner chunk). Measured on astronaut face crops
# (benchmarks/faceset_read.py): "lz4" reads almost as fast as "raw", shrinks masks ~60x and faces
# ~8%; "zstd" (bit-shuffled) saves ~25% on faces but decodes 2-4x slower.
IMAGE_CODECS: dict[str, list[dict]] = {
    "raw": [{"name": "bytes"}],
    "lz4": [
        {"name": "bytes"},
        {"name": "blosc", "configuration": {
            "cname": "lz4", "clevel": 5, "shuffle": "noshuffle", "typesize": 1, "blocksize": 0}},
    ],
    "zstd": [
        {"name": "bytes"},
        {"name": "blosc", "configuration": {
            "cname": "zstd", "clevel": 1, "shuffle": "bitshuffle", "typesize": 1, "blocksize": 0}},
    ],
}
DEFAULT_IMAGE_CODEC = "lz4"

# Records are small and mostly incompressible floats: stored raw, little-endian.
_RECORD_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}]
_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _metadata(dtype: np.dtype, face_shape: tuple[int, ...], shard_faces: int,
              image_codec: str) -> dict:
    image = is_image(face_shape)
    inner_faces = 1 if image else shard_faces
    codecs = IMAGE_CODECS[image_codec] if image else _RECORD_CODECS
    return {
        "shape": [0, *face_shape],
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular",
                       "configuration": {"chunk_shape": [shard_faces, *face_shape]}},
        "codecs": [{
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [inner_faces, *face_shape],
                "codecs": codecs,
                "index_codecs": _INDEX_CODECS,
                "index_location": "end",
            },
        }],
    }


def _spec(folder: str, name: str) -> dict:
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": os.path.join(folder, name)},
        # Facesets change only by append behind the committed count: cached chunks stay valid.
        "recheck_cached_data": False,
        "recheck_cached_metadata": False,
    }


def io_error(error: Exception) -> OSError | None:
    """The OSError behind a TensorStore failure, or None if it was not an I/O failure."""
    if isinstance(error, OSError):
        return error
    match = _OS_ERROR_CODE.search(str(error))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, f"{os.strerror(code)}: {str(error).splitlines()[0]}")


def _reraise_io(error: Exception) -> None:
    os_error = io_error(error)
    if os_error is not None:
        raise os_error from error
    raise error


def read_context(cache_bytes: int) -> ts.Context:
    """A context whose cache keeps up to `cache_bytes` of decoded chunks (0 = no caching)."""
    return ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}})


def create_array(folder: str, name: str, *, dtype: np.dtype, face_shape: tuple[int, ...],
                 shard_faces: int, image_codec: str = DEFAULT_IMAGE_CODEC,
                 context: ts.Context | None = None) -> ts.TensorStore:
    """Creates (or replaces) an empty array [0, *face_shape]."""
    if image_codec not in IMAGE_CODECS:
        raise ValueError(f"unknown image codec {image_codec!r}; choose one of {sorted(IMAGE_CODECS)}")
    spec = _spec(folder, name)
    spec["metadata"] = _metadata(dtype, tuple(face_shape), shard_faces, image_codec)
    try:
        return ts.open(spec, create=True, delete_existing=True, context=context).result()
    except ValueError as e:
        _reraise_io(e)


def open_arrays(folder: str, names: Iterable[str], *, context: ts.Context,
                writable: bool) -> dict[str, ts.TensorStore]:
    """Opens existing arrays concurrently. Raises ValueError (TensorStore's) for a missing one."""
    futures = {name: ts.open(_spec(folder, name), open=True, read=True, write=writable,
                             context=context) for name in names}
    return {name: future.result() for name, future in futures.items()}


def write_blocks(arrays: Mapping[str, ts.TensorStore], start: int,
                 blocks: Mapping[str, np.ndarray]) -> None:
    """Writes faces [start, start + n) of every array, all concurrently; OSError on I/O failure.

    The arrays must already be at least start + n long. Each shard file is replaced atomically
    (TensorStore writes a temporary file and renames it), so a failure leaves old shards intact.
    """
    futures = [arrays[name][start:start + len(block)].write(block)
               for name, block in blocks.items()]
    errors = []
    for future in futures:
        try:
            future.result()
        except ValueError as e:
            errors.append(e)
    if errors:
        _reraise_io(errors[0])


def set_length(arrays: Mapping[str, ts.TensorStore], length: int,
               shard_faces: int) -> dict[str, ts.TensorStore]:
    """Grows or truncates every array to `length` faces; returns the resized handles.

    Growing only rewrites zarr.json. Truncating first clears the faces past `length` in the shard
    that stays (TensorStore does not store chunks equal to the fill value, so they are dropped),
    then drops whole shards: nothing written after the cut can reappear if the array grows again.
    """
    resized = {}
    for name, array in arrays.items():
        current = array.shape[0]
        if current == length:
            resized[name] = array
            continue
        try:
            if length < current:
                shard_end = min(current, -(-length // shard_faces) * shard_faces)
                if shard_end > length:
                    array[length:shard_end].write(np.zeros(array.shape[1:], array.dtype.numpy_dtype)).result()
            resized[name] = array.resize(
                exclusive_max=[length] + [None] * (array.rank - 1),
                resize_metadata_only=length >= current).result()
        except ValueError as e:
            _reraise_io(e)
    return resized


def read_rows(arrays: Mapping[str, ts.TensorStore], names: Sequence[str],
              indices: np.ndarray) -> dict[str, np.ndarray]:
    """Reads arbitrary rows of several arrays in one coalesced TensorStore batch."""
    with ts.Batch() as batch:
        futures = {name: arrays[name][indices].read(batch=batch) for name in names}
    return {name: future.result() for name, future in futures.items()}


def read_slices(arrays: Mapping[str, ts.TensorStore], names: Sequence[str], start: int,
                stop: int) -> dict[str, ts.Future]:
    """Starts reading rows [start, stop) of several arrays; returns the futures (prefetching)."""
    with ts.Batch() as batch:
        return {name: arrays[name][start:stop].read(batch=batch) for name in names}
