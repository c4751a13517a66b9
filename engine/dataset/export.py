"""Writes a data set folder (layout in the package docstring) and its manifest.

The folder is built under a temporary name beside the target and renamed when complete, so an
interrupted or refused export leaves nothing that looks like a data set. Masks are made first:
a fake whose mask shows no face is refused before any video is encoded. Nothing in the output
depends on the time, the machine's core count or the output path, so the same inputs, settings
and seed give the same bytes (`manifest.json` included).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from engine.dataset import encode
from engine.dataset.masks import MaskTrack
from engine.dataset.pairs import Pair
from engine.dataset.splits import SPLITS, assign_splits
from engine.merge.outputs import tool_version
from preprocessing.errors import UserError
from preprocessing.images import Source
from preprocessing.video import probe

FORMAT = "faceswap-jax detector dataset v1"


def parse_crfs(text: str) -> list[int]:
    """'23,40' -> [23, 40]: distinct H.264 crf values in 0..51."""
    try:
        crfs = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--crf={text}: expected integers like 23,40") from None
    if not crfs or len(set(crfs)) != len(crfs) or not all(0 <= c <= 51 for c in crfs):
        raise UserError(f"--crf={text}: expected distinct crf values in 0..51")
    return crfs


def _describe(source: Source) -> dict[str, Any]:
    """The input clip as the manifest records it: no absolute path, which would differ by machine."""
    return {"name": os.path.basename(source.path), "sha256": source.content_hash(), "frames": source.frame_count,
            "width": source.size[0], "height": source.size[1], "fps": source.fps}


def _encode_variants(source: Source, root: str, clip_id: str, crfs: list[int]) -> dict[str, str]:
    videos = {}
    for crf in crfs:
        rel = f"clips/{clip_id}/c{crf}.mp4"
        encode.transcode(source.info, os.path.join(root, rel), crf)
        frames = probe(os.path.join(root, rel)).frame_count
        if frames != source.frame_count:
            raise UserError(f"{source.path}: re-encode at crf {crf} has {frames} frames, not {source.frame_count}")
        videos[f"c{crf}"] = rel
    return videos


def _fake_masks(pair: Pair, root: str, rel: str, threshold: float) -> str:
    """Writes the binary masks of one fake; returns its frame labels as a '0'/'1' string."""
    track = MaskTrack(pair.mask, pair.fake.size, threshold)
    encode.write_mask_video(os.path.join(root, rel), track, pair.fake.size, pair.fake.fps)
    if len(track.labels) != pair.fake.frame_count:
        raise UserError(f"{pair.mask.path}: decoded {len(track.labels)} mask frames, the fake "
                        f"{pair.fake.path} has {pair.fake.frame_count}")
    if not any(track.labels):
        raise UserError(f"{pair.fake.path}: its mask {pair.mask.path} shows no swapped face in any frame "
                        f"(nothing was merged); not a fake clip")
    return "".join(map(str, track.labels))


def _files(root: str) -> dict[str, dict[str, Any]]:
    found = sorted(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                   for d, _dirs, names in os.walk(root) for n in names)
    return {rel: {"sha256": encode.file_sha256(os.path.join(root, rel)),
                  "bytes": os.path.getsize(os.path.join(root, rel))} for rel in found}


def _build(pairs: list[Pair], root: str, crfs: list[int], fractions: dict[str, float], seed: int,
           threshold: float) -> dict[str, Any]:
    reals: dict[str, tuple[str, Pair]] = {}
    for pair in pairs:
        reals.setdefault(pair.real.content_hash(), (f"real_{len(reals):04d}", pair))
    links = ([(p.identity_src, p.identity_dst) for p in pairs]
             + [(p.identity_dst, p.identity_dst) for _id, p in reals.values()])
    split_of = assign_splits(links, fractions, seed)

    entries: list[tuple[dict[str, Any], Source]] = []
    for i, pair in enumerate(pairs):
        clip_id = f"fake_{i:04d}"
        os.makedirs(os.path.join(root, "clips", clip_id))
        mask = f"clips/{clip_id}/mask.mp4"
        labels = _fake_masks(pair, root, mask, threshold)
        entries.append(({"id": clip_id, "kind": "fake", "label": 1, "split": split_of[pair.identity_src],
                         "identity_src": pair.identity_src, "identity_dst": pair.identity_dst,
                         "real": reals[pair.real.content_hash()][0], "source": _describe(pair.fake), "mask": mask,
                         "frame_labels": labels, "fake_frames": labels.count("1"), "provenance": pair.provenance},
                        pair.fake))
    for clip_id, pair in reals.values():
        os.makedirs(os.path.join(root, "clips", clip_id))
        entries.append(({"id": clip_id, "kind": "real", "label": 0, "split": split_of[pair.identity_dst],
                         "identity": pair.identity_dst, "source": _describe(pair.real), "mask": None,
                         "frame_labels": "0" * pair.real.frame_count, "fake_frames": 0}, pair.real))
    for clip, source in entries:
        clip["videos"] = _encode_variants(source, root, clip["id"], crfs)
    clips = sorted((clip for clip, _source in entries), key=lambda c: c["id"])

    splits = {s: {"fraction": fractions[s],
                  "identities": sorted(n for n, v in split_of.items() if v == s),
                  "clips": [c["id"] for c in clips if c["split"] == s]} for s in SPLITS}
    return {
        "format": FORMAT,
        "tool": {"name": "faceswap-jax", "version": tool_version(), "ffmpeg": encode.ffmpeg_version()},
        "settings": {"crf": crfs, "seed": seed, "mask_threshold": threshold,
                     "video_encoder": dict(encode.VIDEO_SETTINGS), "mask_encoder": dict(encode.MASK_SETTINGS)},
        "labels": {"label": "0 real, 1 fake (whole clip)",
                   "frame_labels": "one character per frame: 1 where the mask has a manipulated pixel",
                   "mask": "0/255 per pixel, 255 where the merge alpha >= mask_threshold; frame i of the "
                           "mask is frame i of every video of the clip"},
        "splits": splits,
        "clips": clips,
    }


def export(pairs: list[Pair], output: str, *, crfs: list[int], fractions: dict[str, float], seed: int = 0,
           threshold: float = 0.5) -> dict[str, Any]:
    """Writes the data set of `pairs` into the folder `output` (absent or empty); returns the manifest."""
    if not 0.0 < threshold <= 1.0:
        raise UserError(f"mask threshold must be in (0, 1], got {threshold}")
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise UserError(f"{output}: exists and is not an empty folder; choose another")
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.", suffix=".partial", dir=parent)
    try:
        manifest = _build(pairs, root, crfs, fractions, seed, threshold)
        manifest["files"] = _files(root)
        with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True, default=str)
            f.write("\n")
        if os.path.isdir(output):
            os.rmdir(output)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(root, 0o777 & ~umask)  # mkdtemp made it private; a finished data set is not
        os.replace(root, output)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return manifest
