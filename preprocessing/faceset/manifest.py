"""manifest.json (the commit point), the group zarr.json, and what a folder holds.

`manifest["count"]` is THE commit point: arrays may hold more faces than `count` after an
interrupted write, and every reader stops at `count`. The manifest is replaced atomically
(temporary file, fsync, rename, fsync of the folder) so a crash leaves either the old or the new
one, never a torn one.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from typing import Iterator

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType

FORMAT = "faceswap-jax faceset"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GROUP = "zarr.json"


def new_manifest(*, face_type: FaceType, size: int, shard_faces: int, arrays: dict,
                 producer: dict, extras: dict | None) -> dict:
    """The manifest of an empty faceset; `arrays` maps name -> {"dtype", "shape"} per face."""
    return {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT,
        "face_type": face_type.dfl_name,
        "size": int(size),
        "shard_faces": int(shard_faces),
        "count": 0,
        "arrays": arrays,
        "sources": [],
        "producer": dict(producer),
        "extras": dict(extras or {}),
    }


def load_manifest(folder: str) -> dict:
    """Reads and checks manifest.json; UserError naming the folder if it is not a valid faceset."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a faceset (no such folder)")
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{folder}: not a faceset (no {MANIFEST})")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{folder}: corrupt faceset: {MANIFEST} unreadable ({e})") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(f"{folder}: {problem}")
    return manifest


def _manifest_problem(m: object) -> str | None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return f"not a faceset ({MANIFEST} does not say format {FORMAT!r})"
    if m.get("schema_version") != SCHEMA_VERSION:
        return (f"unsupported faceset schema_version {m.get('schema_version')!r} "
                f"(this program reads {SCHEMA_VERSION})")
    try:
        FaceType.from_dfl_name(m.get("face_type"))
    except ValueError:
        return f"corrupt faceset: unknown face_type {m.get('face_type')!r}"
    for key in ("size", "shard_faces", "count"):
        value = m.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "count" else 1):
            return f"corrupt faceset: bad {key} {value!r}"
    arrays = m.get("arrays")
    if not isinstance(arrays, dict) or "faces" not in arrays or not all(
            isinstance(a, dict) and "dtype" in a and isinstance(a.get("shape"), list)
            for a in arrays.values()):
        return "corrupt faceset: bad 'arrays' entry"
    if not isinstance(m.get("sources"), list):
        return "corrupt faceset: bad 'sources' entry"
    return None


def write_manifest(folder: str, manifest: dict) -> None:
    """Atomically replaces manifest.json; raises OSError (the old manifest stays) on failure."""
    _write_json_atomic(folder, MANIFEST, manifest)


def write_group(folder: str, attributes: dict) -> None:
    """Writes the root zarr.json so zarr v3 readers open the folder as a group of arrays."""
    _write_json_atomic(folder, GROUP, {"zarr_format": 3, "node_type": "group", "attributes": attributes})


def _write_json_atomic(folder: str, name: str, value: dict) -> None:
    path = os.path.join(folder, name)
    tmp = path + ".tmp"
    data = json.dumps(value, indent=1, sort_keys=False).encode("utf-8")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    """Makes renames and new files in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def group_attributes(manifest: dict) -> dict:
    """The summary stored in the group zarr.json (static: the live count is in manifest.json)."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "face_type": manifest["face_type"],
        "size": manifest["size"],
        "shard_faces": manifest["shard_faces"],
        "note": ("the committed face count is manifest.json 'count'; arrays may be longer "
                 "after an interrupted write, so read [0, count)"),
    }


def is_unfinished_creation(folder: str) -> bool:
    """True for a folder whose creation was interrupted: our group zarr.json, no manifest yet.

    Such a folder holds no committed faces, so creating the faceset again loses nothing.
    """
    if os.path.exists(os.path.join(folder, MANIFEST)):
        return False
    try:
        with open(os.path.join(folder, GROUP), encoding="utf-8") as f:
            return json.load(f).get("attributes", {}).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Holds an exclusive lock on the folder so two writers never interleave shards or commits.

    UserError if another process (or another writer in this one) holds it. Filesystems without
    flock support are written unlocked.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{folder}: another program is writing this faceset") from None
        yield
    finally:
        os.close(fd)
