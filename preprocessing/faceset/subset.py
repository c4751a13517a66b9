"""Writing a derived faceset: some faces of an input faceset, in a new order (sort, filter, trash, resize).

Each face keeps its provenance (source, frame and face index) and the input's sources are copied
as they are, through FacesetWriter's derived mode (copy_sources, add_faces). The faceset is built
in a staging folder that is renamed onto the output only once it is whole, polygons.json
included: a crash can leave a `.partial` folder (removed by the next run) but never an output
that looks complete. The input's extras and XSeg polygons are carried over, re-indexed.
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
from preprocessing.faceset import schema
from preprocessing.faceset.face_stats import BATCH
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.writer import FacesetWriter


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
    path = os.path.join(fs.path, schema.POLYGONS_FILE)
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
    """Writes polygons.json into `folder`; a faceset without polygons gets no file at all."""
    if polygons:
        with open(os.path.join(folder, schema.POLYGONS_FILE), "w", encoding="utf-8") as f:
            json.dump(polygons, f)


def reindexed_extras(extras: dict, indices: np.ndarray) -> dict:
    """The manifest extras for the faces `indices`; index lists (xseg_masks_missing) are renumbered."""
    out = copy.deepcopy(extras)
    if "xseg_masks_missing" in out:
        missing = set(int(i) for i in out["xseg_masks_missing"])
        out["xseg_masks_missing"] = [k for k, i in enumerate(indices) if int(i) in missing]
    return out


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

    `batches` yields dicts of per-face arrays (every stored array but the provenance ones) for
    consecutive runs of `indices`; `size`/`face_type` default to those of `like`. Sources, extras
    and provenance (source, frame and face index) are taken from `like`; `polygons` are already
    keyed by new index. Returns the number of faces written.
    """
    indices = np.asarray(indices, np.int64)
    check_new_output(output, not_same_as=like.path)
    staging = staging_folder(output)
    provenance = like.read_many(schema.WRITER_FILLED, indices)
    face_type = like.face_type if face_type is None else face_type
    extras = reindexed_extras(like.manifest.get("extras", {}), indices)
    try:
        with FacesetWriter(staging, size=size or like.size, face_type=face_type, producer=producer,
                           arrays=like.array_names, extras=extras,
                           shard_faces=like.manifest.get("shard_faces", 256)) as writer:
            writer.copy_sources(like.sources)
            written = 0
            with tqdm(total=len(indices), desc=desc, unit="face", disable=not progress, leave=False) as bar:
                for batch in batches:
                    n = len(batch["faces"])
                    writer.add_faces({**batch, **{name: column[written:written + n]
                                                  for name, column in provenance.items()}})
                    written += n
                    bar.update(n)
        if written != len(indices):
            raise AssertionError(f"wrote {written} faces, expected {len(indices)}")
        write_polygons(staging, polygons or {})
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(indices)


def write_subset(fs: Faceset, indices: np.ndarray, output: str, *, producer: dict, progress: bool = True) -> int:
    """Copies the faces `indices` of `fs` (in that order) into a new faceset at `output`."""
    indices = np.asarray(indices, np.int64)
    names = [n for n in fs.array_names if n not in schema.WRITER_FILLED]
    batches = (fs.read_many(names, indices[a:a + BATCH]) for a in range(0, len(indices), BATCH))
    old_polygons = read_polygons(fs)
    polygons = {str(k): old_polygons[str(int(i))] for k, i in enumerate(indices) if str(int(i)) in old_polygons}
    return write_faces(output, like=fs, indices=indices, batches=batches, producer=producer,
                       polygons=polygons, progress=progress)
