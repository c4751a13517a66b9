"""Writing a derived faceset: some faces of an input faceset, in a new order (sort, filter, trash).

FacesetWriter is built for extraction: frames of a source arrive in order and it numbers the
faces of a frame itself. A sorted faceset breaks both assumptions, so the faces go through the
writer in their new order under a running frame number (which keeps every shard, codec and commit
rule of the writer), and the true `frame_index` and `face_index` of each face are written over
those two arrays before the faceset is published. Everything is built in a staging folder that is
renamed onto the output at the end, so a crash never leaves a faceset with wrong provenance.
The input's sources, extras and XSeg polygons (polygons.json) are carried over, re-indexed.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import manifest as mf
from preprocessing.faceset import schema, store
from preprocessing.faceset.face_stats import BATCH
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.writer import FacesetWriter

POLYGONS_FILE = "polygons.json"
_PROVENANCE = ("frame_index", "face_index")  # numbered by the writer, restored afterwards


def check_new_output(output: str, *, not_same_as: str) -> None:
    """UserError unless `output` can become a new faceset (missing or empty folder, not the input)."""
    if os.path.abspath(output) == os.path.abspath(not_same_as):
        raise UserError(f"{output}: the output must differ from the input faceset (inputs are never edited)")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"{output}: exists and is not a folder")
    if os.path.isdir(output) and os.listdir(output):
        raise UserError(f"{output}: folder is not empty; choose a new folder for the output faceset")


def staging_folder(output: str) -> str:
    """A fresh sibling folder to build `output` in (a leftover from a crashed run is removed)."""
    staging = os.path.normpath(output) + ".partial"
    if os.path.exists(staging):
        if not (os.path.isfile(os.path.join(staging, mf.MANIFEST)) or mf.is_unfinished_creation(staging)):
            raise UserError(f"{staging}: exists and is not a faceset left by an interrupted run; remove it")
        shutil.rmtree(staging)
    return staging


def publish(staging: str, output: str) -> None:
    """Moves the finished faceset onto `output` (an empty folder there is replaced)."""
    if os.path.isdir(output):
        os.rmdir(output)  # empty: checked by check_new_output
    os.replace(staging, output)


def read_polygons(fs: Faceset) -> dict[str, list]:
    """The faceset's XSeg polygons (face index as a string -> polygon list); {} when it has none."""
    path = os.path.join(fs.path, POLYGONS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            polygons = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable polygons file ({e})") from None
    if not isinstance(polygons, dict):
        raise UserError(f"{path}: expected an object mapping face index -> polygons")
    return polygons


def write_polygons(folder: str, polygons: dict[str, list]) -> None:
    if polygons:
        with open(os.path.join(folder, POLYGONS_FILE), "w", encoding="utf-8") as f:
            json.dump(polygons, f)


def reindexed_extras(extras: dict, indices: np.ndarray) -> dict:
    """The manifest extras for the faces `indices`; index lists (xseg_masks_missing) are renumbered."""
    out = copy.deepcopy(extras)
    if "xseg_masks_missing" in out:
        missing = set(int(i) for i in out["xseg_masks_missing"])
        out["xseg_masks_missing"] = [k for k, i in enumerate(indices) if int(i) in missing]
    return out


def _source_entry(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("frames_done", "complete")}


def write_faces(
    output: str,
    *,
    like: Faceset,
    indices: np.ndarray,
    batches: Iterable[dict[str, np.ndarray]],
    producer: dict,
    size: int | None = None,
    face_type: FaceType | None = None,
    polygons: dict[str, list] | None = None,
    progress: bool = True,
    desc: str = "writing",
) -> int:
    """Writes a new faceset at `output` whose face k is derived from face `indices[k]` of `like`.

    `batches` yields dicts of per-face arrays (every stored array but the writer-numbered ones)
    for consecutive runs of `indices`; `size`/`face_type` default to those of `like`. Sources,
    extras and provenance (source, frame and face index) are taken from `like`; `polygons` are
    already keyed by new index. Returns the number of faces written.
    """
    indices = np.asarray(indices, np.int64)
    check_new_output(output, not_same_as=like.path)
    staging = staging_folder(output)
    provenance = {name: np.asarray(like.read_range(name, 0, len(like)))[indices]
                  for name in ("source_id", *_PROVENANCE)}
    names = [n for n in like.array_names if n not in schema.WRITER_FILLED]
    try:
        writer = FacesetWriter(
            staging, size=size or like.size, face_type=face_type if face_type is not None else like.face_type,
            producer=producer, arrays=names, extras=reindexed_extras(like.manifest.get("extras", {}), indices),
            shard_faces=like.manifest.get("shard_faces", 256))
        with writer:
            new_sid = [writer.add_source(_source_entry(s)) for s in like.sources]
            written = 0
            with tqdm(total=len(indices), desc=desc, unit="face", disable=not progress, leave=False) as bar:
                for batch in batches:
                    _add_runs(writer, batch, provenance["source_id"][written:], new_sid, written)
                    written += len(batch["faces"])
                    bar.update(len(batch["faces"]))
        if written != len(indices):
            raise AssertionError(f"wrote {written} faces, expected {len(indices)}")
        _restore_provenance(staging, {name: provenance[name] for name in _PROVENANCE})
        _restore_sources(staging, like.sources, new_sid)
        write_polygons(staging, polygons or {})
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(indices)


def _add_runs(writer: FacesetWriter, batch: dict, source_ids: np.ndarray, new_sid: list[int], first: int) -> None:
    """Adds a batch as runs of faces from one source, numbered by their new position."""
    n = len(batch["faces"])
    sids = source_ids[:n]
    cuts = [0, *(np.flatnonzero(np.diff(sids)) + 1), n]
    for a, b in zip(cuts[:-1], cuts[1:]):
        writer.add_frame(new_sid[int(sids[a])], first + a, {name: rows[a:b] for name, rows in batch.items()})


def _restore_provenance(folder: str, columns: dict[str, np.ndarray]) -> None:
    arrays = store.open_arrays(folder, list(columns), context=store.read_context(0), writable=True)
    store.write_blocks(arrays, 0, {name: values.astype(np.int32) for name, values in columns.items()})


def _restore_sources(folder: str, sources: list[dict], new_sid: list[int]) -> None:
    """Gives the sources back their own progress fields (the writer's reflect the new numbering)."""
    manifest = mf.load_manifest(folder)
    for old, entry in enumerate(sources):
        manifest["sources"][new_sid[old]] = copy.deepcopy(entry)
    mf.write_manifest(folder, manifest)


def write_subset(fs: Faceset, indices: np.ndarray, output: str, *, producer: dict, progress: bool = True) -> int:
    """Copies the faces `indices` of `fs` (in that order) into a new faceset at `output`."""
    indices = np.asarray(indices, np.int64)
    names = [n for n in fs.array_names if n not in schema.WRITER_FILLED]
    batches = (fs.read_many(names, indices[a:a + BATCH]) for a in range(0, len(indices), BATCH))
    old_polygons = read_polygons(fs)
    polygons = {str(k): old_polygons[str(int(i))] for k, i in enumerate(indices) if str(int(i)) in old_polygons}
    return write_faces(output, like=fs, indices=indices, batches=batches, producer=producer,
                       polygons=polygons, progress=progress)
