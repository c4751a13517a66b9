"""The pairs file: which swap was made from which real clip, with which mask, between whom.

PAIRS.json is a JSON list of objects (or {"pairs": [...]}); relative paths are taken from the
file's folder:

    {"fake": "swaps/a_to_b.mp4",   the merged video (python -m engine.merge --output)
     "mask": "swaps/a_to_b_mask.mp4", its merge mask (--mask_output: a video or a PNG folder)
     "identity_src": "alice",      whose face was put in
     "identity_dst": "bob",        who is in the real clip
     "real": "clips/bob.mp4"}      optional: by default the source named in the fake's sidecar

Every fake must have the `<fake>.provenance.json` sidecar the merge writes: the real clip is
found through it when not given and checked against its sha256 either way, and the model and
merge settings are copied from it into the manifest. Everything is checked here, before any
output is written, so a bad entry costs no encoding time.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from preprocessing.errors import UserError
from preprocessing.images import Source, open_source

_KEYS = {"fake", "mask", "identity_src", "identity_dst", "real"}
_REQUIRED = ("fake", "mask", "identity_src", "identity_dst")


@dataclasses.dataclass
class Pair:
    """One checked entry: the opened media and the fake's provenance record."""

    real: Source
    fake: Source
    mask: Source
    identity_src: str
    identity_dst: str
    provenance: dict[str, Any]


def _entries(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such pairs file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        data = data.get("pairs")
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a non-empty list of pairs (or {{\"pairs\": [...]}})")
    return data


def _video(path: str, what: str) -> Source:
    source = open_source(path)
    if source.kind != "video":
        raise UserError(f"{path}: the {what} must be a video file, not {source.kind}")
    return source


def _sidecar(fake: str) -> dict[str, Any]:
    path = os.path.normpath(fake) + ".provenance.json"
    if not os.path.isfile(path):
        raise UserError(f"{fake}: no provenance sidecar {path}; fakes must come from python -m engine.merge")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    source = record.get("source") if isinstance(record, dict) else None
    if not isinstance(source, dict) or not {"path", "sha256"} <= set(source):
        raise UserError(f"{path}: not a merge provenance record (no source path and sha256)")
    return record


def _pair(entry: Any, where: str, folder: str) -> Pair:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected an object with {', '.join(_REQUIRED)}")
    unknown = set(entry) - _KEYS
    missing = [k for k in _REQUIRED if not entry.get(k)]
    if unknown or missing:
        raise UserError(f"{where}: " + "; ".join(
            ([f"unknown keys {', '.join(sorted(unknown))}"] if unknown else [])
            + ([f"missing {', '.join(missing)}"] if missing else [])))
    for key in _KEYS & set(entry):
        if not isinstance(entry[key], str):
            raise UserError(f"{where}: {key} must be a string")
    fake_path = os.path.join(folder, entry["fake"])
    fake = _video(fake_path, "fake")
    record = _sidecar(fake_path)
    real = _video(os.path.join(folder, entry["real"]) if entry.get("real") else record["source"]["path"], "real")
    mask = open_source(os.path.join(folder, entry["mask"]))
    if real.content_hash() != record["source"]["sha256"]:
        raise UserError(f"{fake_path}: was not made from {real.path} (its provenance names another source sha256)")
    for other, what in ((real, "real clip"), (mask, "mask")):
        if other.frame_count != fake.frame_count:
            raise UserError(f"{fake_path}: has {fake.frame_count} frames but its {what} {other.path} has "
                            f"{other.frame_count}")
    if real.size != fake.size:
        raise UserError(f"{fake_path}: frame size {fake.size} differs from its real clip's {real.size}")
    return Pair(real, fake, mask, entry["identity_src"], entry["identity_dst"], record)


def load_pairs(path: str) -> list[Pair]:
    """The checked pairs of a pairs file; UserError naming the entry and file for any problem."""
    folder = os.path.dirname(os.path.abspath(path))
    pairs = [_pair(entry, f"{path} entry {i}", folder) for i, entry in enumerate(_entries(path))]
    fakes: dict[str, int] = {}
    identity_of: dict[str, str] = {}
    for i, pair in enumerate(pairs):
        digest = pair.fake.content_hash()
        if digest in fakes:
            raise UserError(f"{path}: entries {fakes[digest]} and {i} list the same fake video")
        fakes[digest] = i
        known = identity_of.setdefault(pair.real.content_hash(), pair.identity_dst)
        if known != pair.identity_dst:
            raise UserError(f"{path} entry {i}: real clip {pair.real.path} is identity {known!r} in an earlier "
                            f"entry, not {pair.identity_dst!r}")
    return pairs
