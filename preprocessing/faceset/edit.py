"""add_array / remove_array: the one sanctioned in-place change to a finished faceset.

A new array (e.g. `xseg_masks`) is written in full next to the others with the same sharding and
only then listed in manifest.json (atomic replace). Until that moment readers do not see it, so an
interrupted add_array leaves the faceset as it was (the half-written folder is replaced on retry).
"""
from __future__ import annotations

import copy
import os
import re
import shutil
from typing import Callable

import numpy as np

from preprocessing.errors import UserError
from preprocessing.faceset import manifest as mf
from preprocessing.faceset import schema, store

# Writes the rows of faces [start, stop).
BlockFn = Callable[[int, int], np.ndarray]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def add_array(faceset_path: str, name: str, data_or_writer_fn: np.ndarray | BlockFn, *,
              dtype: np.dtype | str | None = None, face_shape: tuple[int, ...] | None = None,
              overwrite: bool = False, image_codec: str = store.DEFAULT_IMAGE_CODEC) -> None:
    """Adds array `name` for all `count` faces, shard by shard, then lists it in the manifest.

    `data_or_writer_fn` is an array [count, ...] or a function (start, stop) -> rows, called once
    per shard in order (so a model can produce masks without holding all of them). dtype and
    face_shape default to the schema for known names (xseg_masks, ...) or to the data's.
    """
    if not _NAME.match(name) or name == "c":
        raise ValueError(f"bad array name {name!r} (use lower-case letters, digits and '_')")
    with mf.folder_lock(faceset_path):
        manifest = mf.load_manifest(faceset_path)
        count, shard = manifest["count"], manifest["shard_faces"]
        dtype, face_shape = _dtype_and_shape(name, manifest["size"], data_or_writer_fn, dtype, face_shape)
        if name in manifest["arrays"]:
            if not overwrite:
                raise UserError(f"{faceset_path}: already has an array {name!r}")
            manifest = _unlist(faceset_path, manifest, name)
        if isinstance(data_or_writer_fn, np.ndarray):
            if len(data_or_writer_fn) != count:
                raise ValueError(f"{name}: got {len(data_or_writer_fn)} rows for {count} faces")
            data = data_or_writer_fn
            block_fn: BlockFn = lambda start, stop: data[start:stop]  # noqa: E731
        else:
            block_fn = data_or_writer_fn
        try:
            array = store.create_array(faceset_path, name, dtype=dtype, face_shape=face_shape,
                                       shard_faces=shard, image_codec=image_codec)
            arrays = store.set_length({name: array}, count, shard)
            for start in range(0, count, shard):
                stop = min(start + shard, count)
                rows = np.asarray(block_fn(start, stop))
                if rows.shape != (stop - start, *face_shape):
                    raise ValueError(f"{name}: rows for faces [{start}, {stop}) have shape "
                                     f"{list(rows.shape)}, expected {[stop - start, *face_shape]}")
                store.write_blocks(arrays, start, {name: rows.astype(dtype, casting="same_kind")})
            manifest = copy.deepcopy(manifest)
            manifest["arrays"][name] = {"dtype": dtype.name, "shape": list(face_shape)}
            mf.write_manifest(faceset_path, manifest)
        except OSError as e:
            raise UserError(f"{faceset_path}: cannot write array {name!r} ({e}); "
                            f"the faceset is unchanged") from None


def remove_array(faceset_path: str, name: str) -> None:
    """Unlists an added array (atomic manifest update), then deletes its folder."""
    with mf.folder_lock(faceset_path):
        manifest = mf.load_manifest(faceset_path)
        if name not in manifest["arrays"]:
            raise UserError(f"{faceset_path}: has no array {name!r}")
        if name in schema.STANDARD_ARRAYS:
            raise UserError(f"{faceset_path}: {name!r} is a standard array and cannot be removed")
        _unlist(faceset_path, manifest, name)


def _unlist(faceset_path: str, manifest: dict, name: str) -> dict:
    manifest = copy.deepcopy(manifest)
    del manifest["arrays"][name]
    try:
        mf.write_manifest(faceset_path, manifest)
    except OSError as e:
        raise UserError(f"{faceset_path}: cannot update {mf.MANIFEST} ({e})") from None
    shutil.rmtree(os.path.join(faceset_path, name), ignore_errors=True)
    return manifest


def _dtype_and_shape(name: str, size: int, data: np.ndarray | BlockFn, dtype, face_shape
                     ) -> tuple[np.dtype, tuple[int, ...]]:
    if schema.is_known(name):
        known_dtype, known_shape = schema.dtype_and_face_shape(name, size)
        dtype = known_dtype if dtype is None else dtype
        face_shape = known_shape if face_shape is None else face_shape
    if isinstance(data, np.ndarray):
        dtype = data.dtype if dtype is None else dtype
        face_shape = data.shape[1:] if face_shape is None else face_shape
    if dtype is None or face_shape is None:
        raise ValueError(f"{name}: pass dtype and face_shape with a writer function")
    return np.dtype(dtype), tuple(int(d) for d in face_shape)
