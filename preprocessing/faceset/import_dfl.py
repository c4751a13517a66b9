"""Import a DeepFaceLab aligned folder or faceset.pak into a new faceset.

Two passes. The first reads only headers and metadata: it skips JPEGs without DFL metadata (with
a warning), refuses a mix of face types, picks the output size (the most common one unless given)
and finds out whether any face carries XSeg data. Nothing is written until it has passed, so bad
input leaves no output. The second pass decodes each face, resizes it if its size differs
(Lanczos; landmarks, matrix and polygons scaled, DFL_SPEC §1.12), derives the arrays our faceset
stores (hull and eyes/mouth masks, pose, sharpness) and writes them. XSeg polygons go to
`polygons.json`, applied XSeg masks to the `xseg_masks` array.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from preprocessing.errors import UserError, read_bytes
from preprocessing.face_types import FaceType
from preprocessing.faceset.dfl_meta import DflMeta
from preprocessing.faceset.dfljpg import JpegHeader, decode_rgb, read_header
from preprocessing.faceset.dflpak import DflPak
from preprocessing.faceset.schema import STANDARD_ARRAYS
from preprocessing.faceset.subset import check_new_output, publish, staging_folder, write_polygons
from preprocessing.faceset.writer import FacesetWriter
from preprocessing.masks import eyes_mouth_mask, hull_mask
from preprocessing.pose import estimate_pitch_yaw_roll
from preprocessing.sharpness import blur_score

log = logging.getLogger(__name__)

_JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclasses.dataclass
class ImportSummary:
    output: str
    count: int  # faces written
    size: int  # face size of the new faceset
    face_type: FaceType
    resized: int  # faces whose DFL size differed from `size`
    with_polygons: int  # faces with XSeg polygons (in polygons.json)
    with_xseg_mask: int  # faces with an applied XSeg mask (in the xseg_masks array)
    skipped: list[str]  # JPEGs without DFL metadata
    seconds: float

    def line(self) -> str:
        return (
            f"imported {self.count} {self.face_type.dfl_name} faces at {self.size}px "
            f"in {self.seconds:.1f}s ({self.resized} resized, {self.with_polygons} with XSeg "
            f"polygons, {self.with_xseg_mask} with XSeg masks, {len(self.skipped)} skipped); "
            f"faceset {self.output}"
        )


class _DflInput:
    """A DFL aligned folder or faceset.pak, read one face at a time by index."""

    def __init__(self, path: str):
        self._pak: DflPak | None = None
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.lower().endswith(_JPEG_SUFFIXES))
            self._files = [os.path.join(path, n) for n in names]
        elif os.path.isfile(path):
            self._pak = DflPak(path)
        else:
            raise UserError(f"{path}: no such folder or faceset.pak file")

    def __len__(self) -> int:
        return len(self._pak) if self._pak else len(self._files)

    def name(self, i: int) -> str:
        return self._pak.name(i) if self._pak else os.path.basename(self._files[i])

    def source(self, i: int) -> str:
        return self._pak.source(i) if self._pak else self._files[i]

    def read(self, i: int) -> tuple[bytes, JpegHeader]:
        if self._pak:
            data = self._pak.jpeg(i)
            return data, self._pak.header(i, data)
        data = read_bytes(self._files[i])
        return data, read_header(data, self._files[i])

    def close(self) -> None:
        if self._pak:
            self._pak.close()


@dataclasses.dataclass(frozen=True)
class _Scanned:
    """What pass 1 keeps per face: enough to plan the output, not the pixels or metadata."""

    index: int  # index in the input
    side: int
    face_type: FaceType
    has_xseg_mask: bool


def import_dfl(input_path: str, output_faceset: str, *, size: int | None = None,
               progress: bool = True) -> ImportSummary:
    """Writes the DFL faces of `input_path` (aligned folder or faceset.pak) as a new faceset."""
    start = time.time()
    check_new_output(output_faceset, not_same_as=input_path)
    if size is not None and size < 1:
        raise UserError(f"{input_path}: output size must be positive, got {size}")
    inp = _DflInput(input_path)
    try:
        scanned, skipped, sha256 = _scan(inp, input_path, progress)
        face_type = _single_face_type(scanned, input_path)
        sides = collections.Counter(s.side for s in scanned)
        size = size or sides.most_common(1)[0][0]
        with_masks = any(s.has_xseg_mask for s in scanned)
        extras: dict[str, Any] = {"dfl_import": {"input": os.path.abspath(input_path),
                                                 "sizes": {str(k): v for k, v in sides.items()}}}
        if with_masks:
            extras["xseg_masks_missing"] = [k for k, s in enumerate(scanned) if not s.has_xseg_mask]
        producer = {"program": "preprocessing.faceset.import_dfl",
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        polygons: dict[str, list[dict]] = {}
        staging = staging_folder(output_faceset)  # renamed onto the output once whole (kill -9 safe)
        try:
            with FacesetWriter(staging, size=size, face_type=face_type, producer=producer,
                               resume=False, extras=extras,
                               arrays=[*STANDARD_ARRAYS, "xseg_masks"] if with_masks else None,
                               ) as writer:
                source_id = writer.add_source({
                    "kind": "dfl_import", "path": os.path.abspath(input_path), "sha256": sha256,
                    "files": [inp.name(s.index) for s in scanned],  # face k came from files[k]
                })
                for k, item in enumerate(tqdm(scanned, desc="importing", unit="face",
                                              disable=not progress)):
                    data, header = inp.read(item.index)
                    where = inp.source(item.index)
                    meta = DflMeta.from_dict(header.dfl, where)
                    face, face_polygons = _face_arrays(decode_rgb(data, where), meta, size,
                                                       with_masks)
                    writer.add_frame(source_id, k, {name: a[None] for name, a in face.items()})
                    if face_polygons:
                        polygons[str(k)] = face_polygons
                write_polygons(staging, polygons)
            publish(staging, output_faceset)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        inp.close()
    return ImportSummary(
        output=output_faceset, count=len(scanned), size=size, face_type=face_type,
        resized=sum(s.side != size for s in scanned), with_polygons=len(polygons),
        with_xseg_mask=sum(s.has_xseg_mask for s in scanned), skipped=skipped,
        seconds=time.time() - start,
    )


def _scan(inp: _DflInput, input_path: str, progress: bool) -> tuple[list[_Scanned], list[str], str]:
    """Pass 1: validates every face's metadata; returns the faces, the skipped names and a sha256
    over the imported JPEG bytes (identifies the input in the faceset's source entry)."""
    scanned, skipped = [], []
    digest = hashlib.sha256()
    for i in tqdm(range(len(inp)), desc="scanning", unit="file", disable=not progress):
        data, header = inp.read(i)
        if header.dfl is None:
            log.warning("%s: no DeepFaceLab metadata; skipped", inp.source(i))
            skipped.append(inp.name(i))
            continue
        if header.height != header.width:
            raise UserError(f"{inp.source(i)}: aligned face is {header.width}x{header.height}, "
                            "not square")
        meta = DflMeta.from_dict(header.dfl, inp.source(i))
        digest.update(data)
        scanned.append(_Scanned(i, header.height, meta.face_type, meta.has_xseg_mask))
    if not scanned:
        raise UserError(f"{input_path}: no DeepFaceLab aligned faces found")
    return scanned, skipped, digest.hexdigest()


def _single_face_type(scanned: list[_Scanned], input_path: str) -> FaceType:
    counts = collections.Counter(s.face_type for s in scanned)
    if len(counts) > 1:
        listed = ", ".join(f"{n} {ft.dfl_name}" for ft, n in counts.most_common())
        raise UserError(f"{input_path}: faces of several face types ({listed}); "
                        "import one face type at a time")
    return next(iter(counts))


def _face_arrays(rgb: np.ndarray, meta: DflMeta, size: int,
                 with_xseg_mask: bool) -> tuple[dict[str, np.ndarray], list[dict]]:
    """One face's faceset arrays (no leading axis) and its polygons, all at `size` pixels.

    DFL scales face-space coordinates by size ratio (DFL_SPEC §1.12); the frame -> face matrix is
    scaled the same way so it still maps source landmarks onto the face landmarks. Values DFL
    left out (source data of old or mark_only faces) are stored as NaN.
    """
    scale = size / rgb.shape[0]
    if rgb.shape[0] != size:
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LANCZOS4)
    landmarks = meta.landmarks * scale
    hull = hull_mask((size, size), landmarks, meta.eyebrows_expand_mod)
    arrays = {
        "faces": rgb,
        "masks": hull,
        "eyes_mouth_masks": eyes_mouth_mask((size, size), landmarks),
        "landmarks": landmarks.astype(np.float32),
        "source_landmarks": _or_nan(meta.source_landmarks, (68, 2)),
        "matrices": _or_nan(None if meta.image_to_face_mat is None
                            else meta.image_to_face_mat * scale, (2, 3)),
        "source_rects": _or_nan(meta.source_rect, (4,)),
        "score": np.float32(1.0),
        "blur": np.float32(blur_score(rgb, hull)),
        "pose": np.asarray(estimate_pitch_yaw_roll(landmarks, size), np.float32),
    }
    if with_xseg_mask:
        xseg = meta.xseg_mask()
        if xseg is None:
            xseg = hull
        elif xseg.shape[0] != size or xseg.shape[1] != size:
            xseg = cv2.resize(xseg, (size, size), interpolation=cv2.INTER_CUBIC)[:, :, None]
        arrays["xseg_masks"] = xseg
    polygons = [{"type": p.type, "pts": (p.pts * scale).tolist()} for p in meta.seg_ie_polys]
    return arrays, polygons


def _or_nan(value: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, np.nan, np.float32) if value is None else value.astype(np.float32)
