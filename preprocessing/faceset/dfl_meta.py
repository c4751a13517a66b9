"""DeepFaceLab's per-face metadata as a typed record (DFL_SPEC §1.8, §1.9, §2.2).

DFL keeps a loosely typed dict per aligned face: lists or arrays, optional keys, two spellings of
the XSeg polygons, and an XSeg mask that is an encoded PNG/JPEG. `DflMeta.from_dict` checks it
once, at the boundary, so the rest of the code can rely on shapes and types. Coordinates are kept
in float64 so values read back exactly as written (DFL writes Python floats and float32 arrays).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import cv2
import numpy as np

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType

EXCLUDE, INCLUDE = 0, 1  # SegIEPoly types (DFL_SPEC §2.2)

# Keys this record understands; everything else lands in `extra` untouched.
_KNOWN_KEYS = frozenset({
    "face_type", "landmarks", "source_filename", "source_rect", "source_landmarks",
    "image_to_face_mat", "eyebrows_expand_mod", "seg_ie_polys", "xseg_mask",
})


class SegPoly(NamedTuple):
    """One XSeg polygon in aligned-face pixels: type 1 includes its area, type 0 excludes it."""

    type: int
    pts: np.ndarray  # float64 [N, 2], N >= 1


@dataclasses.dataclass
class DflMeta:
    """What one DFL aligned face says about itself. `file` names it in error messages."""

    file: str
    face_type: FaceType
    landmarks: np.ndarray  # float64 [68, 2], aligned-face pixels
    source_filename: str | None = None
    source_rect: np.ndarray | None = None  # float64 [4]: left, top, right, bottom (frame px)
    source_landmarks: np.ndarray | None = None  # float64 [68, 2], frame pixels
    image_to_face_mat: np.ndarray | None = None  # float64 [2, 3], frame -> aligned face
    eyebrows_expand_mod: float = 1.0
    seg_ie_polys: list[SegPoly] = dataclasses.field(default_factory=list)
    # As stored: encoded PNG/JPEG bytes (or an already decoded array); decoded lazily by
    # `xseg_mask()` so scanning a large faceset does not hold every mask in memory.
    xseg_mask_data: Any = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, file: str) -> "DflMeta":
        """Validates a DFL metadata dict (DFLJPG APP15 or merged pak config)."""
        if not isinstance(d, dict):
            raise UserError(f"{file}: DeepFaceLab metadata is a {type(d).__name__}, not a dict")
        source_filename = d.get("source_filename")
        if source_filename is not None and not isinstance(source_filename, str):
            raise UserError(f"{file}: source_filename is not a string")
        return cls(
            file=file,
            face_type=_face_type(d.get("face_type"), file),
            landmarks=_points(d.get("landmarks"), (68, 2), "landmarks", file, required=True),
            source_filename=source_filename,
            source_rect=_points(d.get("source_rect"), (4,), "source_rect", file),
            source_landmarks=_points(d.get("source_landmarks"), (68, 2), "source_landmarks", file),
            image_to_face_mat=_points(d.get("image_to_face_mat"), (2, 3), "image_to_face_mat", file),
            eyebrows_expand_mod=_float(d.get("eyebrows_expand_mod", 1.0), file),
            seg_ie_polys=parse_seg_ie_polys(d.get("seg_ie_polys"), file),
            xseg_mask_data=d.get("xseg_mask"),
            extra={k: v for k, v in d.items() if k not in _KNOWN_KEYS},
        )

    @property
    def has_xseg_mask(self) -> bool:
        return self.xseg_mask_data is not None

    def xseg_mask(self) -> np.ndarray | None:
        """The applied XSeg mask as uint8 [h, w, 1] in 0..255 (DFL stores 256x256), or None."""
        if self.xseg_mask_data is None:
            return None
        return decode_xseg_mask(self.xseg_mask_data, self.file)


def parse_seg_ie_polys(value: Any, file: str) -> list[SegPoly]:
    """Both DFL spellings: {'polys': [{'type': t, 'pts': Nx2}, ...]} and [(t, pts), ...].

    Polygons without points (an editor's half-started shape) are dropped.
    """
    if value is None:
        return []
    items = value.get("polys", []) if isinstance(value, dict) else value
    if not isinstance(items, (list, tuple)):
        raise UserError(f"{file}: seg_ie_polys is a {type(value).__name__}, not a list or dict")
    polys = []
    for item in items:
        if isinstance(item, dict):
            kind, pts = item.get("type"), item.get("pts")
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            kind, pts = item
        else:
            raise UserError(f"{file}: seg_ie_polys entry {item!r:.60} is not (type, pts)")
        if kind not in (EXCLUDE, INCLUDE):
            raise UserError(f"{file}: seg_ie_polys type {kind!r} is not 0 (exclude) or 1 (include)")
        pts = _array(pts if pts is not None else [], "seg_ie_polys pts", file).reshape(-1, 2)
        if len(pts):
            polys.append(SegPoly(int(kind), pts))
    return polys


def decode_xseg_mask(value: Any, file: str) -> np.ndarray:
    """DFL's `xseg_mask` -> uint8 [h, w, 1]. It is normally an encoded 1-channel PNG (or JPEG when
    the PNG exceeded 50 000 bytes); a decoded float mask in [0, 1] is accepted as well."""
    if isinstance(value, (bytes, bytearray)):
        value = np.frombuffer(value, np.uint8)
    arr = np.asarray(value)
    if arr.ndim == 1 and arr.dtype == np.uint8:
        decoded = cv2.imdecode(arr, cv2.IMREAD_GRAYSCALE)
        if decoded is None:
            raise UserError(f"{file}: xseg_mask is not a decodable PNG/JPEG image")
        arr = decoded
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise UserError(f"{file}: xseg_mask has shape {arr.shape}, expected [h, w] or [h, w, 1]")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return arr[:, :, None]


def _face_type(value: Any, file: str) -> FaceType:
    try:
        if value is None or isinstance(value, str):
            return FaceType.from_dfl_name(value)
        return FaceType(int(value))  # pak configs pickle DFL's FaceType enum (same values)
    except (ValueError, TypeError):
        raise UserError(f"{file}: unknown face_type {value!r}") from None


def _array(value: Any, what: str, file: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise UserError(f"{file}: {what} is not numeric") from None
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{file}: {what} holds NaN or infinity")
    return arr


def _points(value: Any, shape: tuple[int, ...], what: str, file: str,
            required: bool = False) -> np.ndarray | None:
    if value is None:
        if required:
            raise UserError(f"{file}: DeepFaceLab metadata has no {what}")
        return None
    arr = _array(value, what, file)
    if arr.shape != shape:
        raise UserError(f"{file}: {what} has shape {arr.shape}, expected {shape}")
    return arr


def _float(value: Any, file: str) -> float:
    try:
        return float(value)
    except (ValueError, TypeError):
        raise UserError(f"{file}: eyebrows_expand_mod {value!r:.40} is not a number") from None
