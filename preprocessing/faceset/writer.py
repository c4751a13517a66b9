"""FacesetWriter: appends faces and commits them crash-safely.

Faces arrive in one of two ways. Extraction adds them frame by frame (`add_source`, `add_frame`):
the writer numbers each frame's faces, fills in their provenance and records per-source progress
so an interrupted run resumes. The faceset tools write a derived faceset (`copy_sources`,
`add_faces`): the input's faces in a new order, each with the provenance it already had, so the
caller gives every array and the sources are copied, with no progress of their own to record.

The protocol, in the order it happens on disk:
1. faces are buffered in memory until a whole shard (`shard_faces` faces) is ready;
2. the arrays grow (zarr.json shape) and the shard is written, every array, each shard file
   replaced atomically;
3. manifest.json is replaced (temp + fsync + rename) with the new `count` and per-source
   `frames_done`. This is the commit point.

`count` always ends on a frame boundary (for add_faces: at the end of a call): a frame whose
faces straddle the shard boundary is committed with the next shard, so a resumed run restarts at
a whole frame and never duplicates or loses one. Frames without faces are committed as soon as
every face before them is on disk (including by the `commit_interval_s` timer), so long
face-less stretches are not redone. Resuming truncates the arrays to `count` and reloads the
faces of the last partial shard, which is the only shard ever rewritten. (A derived faceset is
not resumed: its tools build it in a staging folder and publish it whole, see subset.py.)
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import time
from typing import Sequence

import numpy as np

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import manifest as mf
from preprocessing.faceset import schema, store

_log = logging.getLogger(__name__)


class FacesetWriter:
    """The single writer of a faceset folder (the extractor's main process owns it).

    `shard_faces` and `image_codec` apply when the faceset is created; a resumed faceset keeps
    its own. Workers of a multi-process extractor only compute faces and hand them to the one
    process that holds the writer (an exclusive lock on the folder refuses a second writer).
    A writer either extracts (add_source/add_frame) or derives (copy_sources/add_faces), never both.
    """

    def __init__(self, path: str, *, size: int, face_type: FaceType, producer: dict,
                 resume: bool = False, shard_faces: int = 256, arrays: Sequence[str] | None = None,
                 extras: dict | None = None, commit_interval_s: float = 30.0,
                 image_codec: str = store.DEFAULT_IMAGE_CODEC):
        if size < 1 or shard_faces < 1:
            raise ValueError(f"size and shard_faces must be positive, got {size}, {shard_faces}")
        self.path = path
        self._names = _array_names(arrays)
        self._commit_interval_s = commit_interval_s
        self._context = store.read_context(0)
        self._lock = contextlib.ExitStack()
        self._closed = False
        self._failed: UserError | None = None
        self._in_io = False
        self._session_sources: set[int] = set()
        self._derived = False  # set by copy_sources
        # (source_id or None for add_faces, frames_done after, end face) of added, uncommitted calls
        self._pending: list[tuple[int | None, int, int]] = []
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{path}: not a folder")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UserError(f"{path}: cannot create the faceset folder ({e.strerror})") from None
        self._lock.enter_context(mf.folder_lock(path))
        try:
            if os.path.exists(os.path.join(path, mf.MANIFEST)):
                self._open_existing(face_type, size, resume, extras)
            elif not os.listdir(path) or mf.is_unfinished_creation(path):
                self._create(face_type, size, shard_faces, producer, extras, image_codec)
            else:
                raise UserError(f"{path}: not empty and not a faceset; choose an empty folder")
        except BaseException:
            self._lock.close()
            raise
        self._committed_at = time.monotonic()

    # ----------------------------------------------------------------------------- opening
    def _create(self, face_type: FaceType, size: int, shard_faces: int, producer: dict,
                extras: dict | None, image_codec: str) -> None:
        shapes = {name: schema.dtype_and_face_shape(name, size) for name in self._names}
        manifest = mf.new_manifest(
            face_type=face_type, size=size, shard_faces=shard_faces, producer=producer,
            extras=extras,
            arrays={name: {"dtype": dt.name, "shape": list(shape)} for name, (dt, shape) in shapes.items()})
        try:
            mf.write_group(self.path, mf.group_attributes(manifest))
            self._arrays = {
                name: store.create_array(self.path, name, dtype=dt, face_shape=shape,
                                         shard_faces=shard_faces, image_codec=image_codec,
                                         context=self._context)
                for name, (dt, shape) in shapes.items()}
            mf.write_manifest(self.path, manifest)
        except OSError as e:
            raise UserError(f"{self.path}: cannot create the faceset ({e})") from None
        self._manifest = manifest
        self._resumed = False
        self._start_buffer(0, {})

    def _open_existing(self, face_type: FaceType, size: int, resume: bool,
                       extras: dict | None) -> None:
        manifest = mf.load_manifest(self.path)
        difference = _difference(manifest, face_type, size, self._names)
        if difference:
            raise UserError(f"{self.path}: holds a different faceset ({difference}); "
                            f"choose another folder")
        count = manifest["count"]
        if not resume:
            raise UserError(f"{self.path}: already holds a faceset with {count} faces; "
                            f"resume it or choose an empty folder")
        shard_faces = manifest["shard_faces"]
        try:
            arrays = store.open_arrays(self.path, self._names, context=self._context, writable=True)
        except ValueError as e:
            raise UserError(f"{self.path}: corrupt faceset: {str(e).splitlines()[0]}") from None
        short = [name for name, a in arrays.items() if a.shape[0] < count]
        if short:
            raise UserError(f"{self.path}: corrupt faceset: {short[0]!r} holds fewer than {count} faces")
        try:
            self._arrays = store.set_length(arrays, count, shard_faces)
        except OSError as e:
            raise UserError(f"{self.path}: cannot truncate the arrays to count={count} ({e})") from None
        if extras:
            manifest["extras"].update(extras)
        self._manifest = manifest
        self._resumed = True
        shard_start = count // shard_faces * shard_faces
        futures = store.read_slices(self._arrays, self._names, shard_start, count)
        self._start_buffer(shard_start, {name: f.result() for name, f in futures.items()})

    def _start_buffer(self, start: int, blocks: dict[str, np.ndarray]) -> None:
        """Faces [start, start + n) are buffered; all of them are already on disk."""
        self._buffer = {name: [blocks[name]] if name in blocks else [] for name in self._names}
        self._buffer_start = start
        self._buffered = len(blocks["faces"]) if blocks else 0
        self._durable = start + self._buffered  # faces [0, durable) are written to the arrays
        self._length = self._durable  # current length of every array
        self._next_frame = [s["frames_done"] for s in self._manifest["sources"]]

    # ----------------------------------------------------------------------------- public API
    @property
    def count(self) -> int:
        """Faces added so far, committed or buffered."""
        return self._buffer_start + self._buffered

    @property
    def committed_count(self) -> int:
        """Faces a reader would see now."""
        return self._manifest["count"]

    @property
    def shard_faces(self) -> int:
        return self._manifest["shard_faces"]

    def add_source(self, entry: dict) -> int:
        """Registers a source (a JSON-able dict holding 'sha256'); returns its id.

        On a resumed faceset this returns the id of the source with the same sha256, and raises
        UserError if the faceset was made from other sources.
        """
        self._check_usable()
        if self._derived:
            raise ValueError(f"{self.path}: a derived faceset takes its sources from copy_sources")
        _check_source_entry(entry)
        sources = self._manifest["sources"]
        for source_id, known in enumerate(sources):
            if known.get("sha256") == entry["sha256"]:
                self._session_sources.add(source_id)
                return source_id
        if self._resumed and sources:
            raise UserError(f"{self.path}: holds a different faceset (made from other sources than "
                            f"{entry.get('path', entry['sha256'])}); choose another folder")
        manifest = copy.deepcopy(self._manifest)
        manifest["sources"].append({**entry, "frames_done": 0, "complete": False})
        self._write_manifest(manifest, "registering a source")
        self._manifest = manifest
        self._next_frame.append(0)
        self._session_sources.add(len(sources))
        return len(sources)

    def copy_sources(self, entries: Sequence[dict]) -> None:
        """Starts a derived faceset: its sources are `entries` (the input's), copied verbatim.

        They keep their own frames_done/complete, which describe the extraction the faces came
        from; this writer continues no extraction, so it never changes them. Source ids stay the
        input's, so add_faces takes the input's source_id values as they are. Only on a new
        faceset that has no sources yet.
        """
        self._check_usable()
        if self._resumed or self._derived or self._manifest["sources"]:
            raise ValueError(f"{self.path}: copy_sources needs a new faceset without sources")
        for entry in entries:
            _check_source_entry(entry)
        manifest = copy.deepcopy(self._manifest)
        manifest["sources"] = copy.deepcopy(list(entries))
        self._write_manifest(manifest, "copying the sources")
        self._manifest = manifest
        self._derived = True

    def frames_done(self, source_id: int) -> int:
        """Committed progress: frames [0, frames_done) of the source need no processing."""
        return self._manifest["sources"][source_id]["frames_done"]

    def is_complete(self, source_id: int) -> bool:
        """True once a writer was closed normally after processing the source."""
        return bool(self._manifest["sources"][source_id].get("complete", False))

    def add_frame(self, source_id: int, frame_index: int, faces: dict[str, np.ndarray]) -> None:
        """Adds the k faces (k >= 0) of one processed frame; frames of a source arrive in order."""
        self._check_usable()
        if self._derived:
            raise ValueError(f"{self.path}: a derived faceset is written with add_faces")
        if not 0 <= source_id < len(self._next_frame):
            raise ValueError(f"unknown source id {source_id}; call add_source first")
        expected = self._next_frame[source_id]
        if frame_index < expected:
            raise ValueError(f"frame {frame_index} of source {source_id} arrives out of order "
                             f"(next frame must be >= {expected})")
        block = self._checked_block(faces, [n for n in self._names if n not in schema.WRITER_FILLED])
        k = len(block["faces"])
        block["frame_index"] = np.full(k, frame_index, np.int32)
        block["source_id"] = np.full(k, source_id, np.int32)
        block["face_index"] = np.arange(k, dtype=np.int32)
        self._append(block, source_id, frame_index + 1)

    def add_faces(self, faces: dict[str, np.ndarray]) -> None:
        """Appends faces of a derived faceset in the caller's order (call copy_sources first).

        `faces` holds every stored array, the provenance ones (source_id, frame_index,
        face_index) included: each face keeps where it came from in the input. The commit rules
        are add_frame's, with one call as the unit a commit never splits.
        """
        self._check_usable()
        if not self._derived:
            raise ValueError(f"{self.path}: add_faces writes a derived faceset; call copy_sources first")
        block = self._checked_block(faces, self._names)
        n_sources = len(self._manifest["sources"])
        unknown = (block["source_id"] < 0) | (block["source_id"] >= n_sources)
        if unknown.any():
            raise ValueError(f"source_id {int(block['source_id'][unknown][0])} is not one of the "
                             f"{n_sources} copied sources")
        if (block["frame_index"] < 0).any() or (block["face_index"] < 0).any():
            raise ValueError("frame_index and face_index must not be negative")
        self._append(block, None, 0)

    def close(self) -> None:
        """Writes the last partial shard, commits everything and marks this run's sources complete."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self._flush(complete=True)
        finally:
            self._closed = True
            self._lock.close()

    def __enter__(self) -> "FacesetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Buffered frames are whole frames, so they are safe to commit; a state interrupted in
        # the middle of an update, or a failed write, is not touched.
        try:
            if not self._closed and self._failed is None and not self._in_io:
                self._flush(complete=False)
        except Exception as e:  # the original exception matters more; keep it
            _log.warning("%s: could not commit buffered faces: %s", self.path, e)
        finally:
            self._closed = True
            self._lock.close()

    # ----------------------------------------------------------------------------- internals
    def _check_usable(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise ValueError(f"{self.path}: the faceset writer is closed")

    def _checked_block(self, faces: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Copies of exactly the arrays `names`, checked for shape and cast to the stored dtype."""
        given, wanted = set(faces), set(names)
        if given != wanted:
            raise ValueError(f"faces must hold exactly the arrays {sorted(wanted)}; "
                             f"missing {sorted(wanted - given)}, unexpected {sorted(given - wanted)}")
        size = self._manifest["size"]
        block = {}
        for name in sorted(wanted):
            dtype, face_shape = schema.dtype_and_face_shape(name, size)
            rows = np.asarray(faces[name])
            if rows.shape[1:] != face_shape:
                raise ValueError(f"{name}: expected shape [k, {', '.join(map(str, face_shape))}], "
                                 f"got {list(rows.shape)}")
            block[name] = rows.astype(dtype, casting="same_kind", copy=True)
        k = len(block["faces"])
        if any(len(rows) != k for rows in block.values()):
            raise ValueError(f"all arrays need the same number of faces; got "
                             f"{ {n: len(r) for n, r in block.items()} }")
        return block

    def _append(self, block: dict[str, np.ndarray], source_id: int | None, frames_done: int) -> None:
        """Buffers one call's faces, writes every full shard and commits what is on disk.

        `source_id`/`frames_done` is the source progress the call makes (None for add_faces).
        """
        self._in_io = True
        for name, rows in block.items():
            self._buffer[name].append(rows)
        self._buffered += len(block["faces"])
        self._pending.append((source_id, frames_done, self.count))
        if source_id is not None:
            self._next_frame[source_id] = frames_done
        self._in_io = False
        while self._buffered >= self.shard_faces:
            self._write_full_shard()
        if time.monotonic() - self._committed_at >= self._commit_interval_s:
            self._commit()

    def _buffered_blocks(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) if len(parts) != 1 else parts[0]
                for name, parts in self._buffer.items()}

    def _write_full_shard(self) -> None:
        shard = self.shard_faces
        blocks = self._buffered_blocks()
        self._write(self._buffer_start, {name: b[:shard] for name, b in blocks.items()})
        self._in_io = True
        self._buffer = {name: [b[shard:]] if len(b) > shard else [] for name, b in blocks.items()}
        self._buffer_start += shard
        self._buffered -= shard
        self._durable = self._buffer_start
        self._in_io = False
        self._commit()

    def _flush(self, *, complete: bool) -> None:
        """Writes buffered faces not yet on disk (a partial shard) and commits them."""
        if self.count > self._durable:
            self._write(self._buffer_start, self._buffered_blocks())
            self._durable = self.count
        self._commit(complete=complete)

    def _write(self, start: int, blocks: dict[str, np.ndarray]) -> None:
        """Grows the arrays and writes faces [start, start + n); UserError if the disk fails."""
        end = start + len(blocks["faces"])
        self._in_io = True
        try:
            if end > self._length:
                self._arrays = store.set_length(self._arrays, end, self.shard_faces)
                self._length = end
            store.write_blocks(self._arrays, start, blocks)
        except OSError as e:
            self._fail(e, f"writing shard {start // self.shard_faces}")
        self._in_io = False

    def _commit(self, *, complete: bool = False) -> None:
        """Commits every pending call whose faces are all on disk (count + frames_done)."""
        ready = 0
        while ready < len(self._pending) and self._pending[ready][2] <= self._durable:
            ready += 1
        if not ready and not complete:
            return
        manifest = copy.deepcopy(self._manifest)
        for source_id, done, end in self._pending[:ready]:
            if source_id is not None:
                manifest["sources"][source_id]["frames_done"] = done
            manifest["count"] = end
        if complete:
            for source_id in self._session_sources:
                manifest["sources"][source_id]["complete"] = True
        if manifest != self._manifest:  # closing a resumed writer that added nothing writes nothing
            self._write_manifest(manifest, "committing")
        self._in_io = True
        self._manifest = manifest
        del self._pending[:ready]
        self._committed_at = time.monotonic()
        self._in_io = False

    def _write_manifest(self, manifest: dict, doing: str) -> None:
        self._in_io = True
        try:
            mf.write_manifest(self.path, manifest)
        except OSError as e:
            self._fail(e, doing)
        self._in_io = False

    def _fail(self, error: OSError, doing: str) -> None:
        """Turns an I/O failure into a UserError; the writer refuses further work."""
        what = ("disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT)
                else f"write failed ({error.strerror or error})")
        self._failed = UserError(f"{self.path}: {what} while {doing}; the faceset stays valid "
                                 f"with count={self.committed_count}")
        raise self._failed from error


def _check_source_entry(entry: dict) -> None:
    if not isinstance(entry.get("sha256"), str):
        raise ValueError("a source entry needs a 'sha256' string")
    json.dumps(entry)  # fails early (TypeError) on values the manifest cannot hold


def _array_names(arrays: Sequence[str] | None) -> list[str]:
    """The arrays to store: the standard set, or the given names plus the writer-filled ones."""
    if arrays is None:
        return list(schema.STANDARD_ARRAYS)
    unknown = [n for n in arrays if not schema.is_known(n)]
    if unknown:
        raise ValueError(f"unknown faceset arrays {unknown}")
    if "faces" not in arrays:
        raise ValueError("a faceset needs the 'faces' array")
    names = list(dict.fromkeys(arrays))
    return names + [n for n in schema.WRITER_FILLED if n not in names]


def _difference(manifest: dict, face_type: FaceType, size: int, names: list[str]) -> str | None:
    """Why an existing faceset cannot be continued with these settings, or None."""
    if manifest["face_type"] != face_type.dfl_name:
        return f"face type {manifest['face_type']}, not {face_type.dfl_name}"
    if manifest["size"] != size:
        return f"size {manifest['size']}, not {size}"
    if set(manifest["arrays"]) != set(names):
        return f"arrays {sorted(manifest['arrays'])}, not {sorted(names)}"
    return None
