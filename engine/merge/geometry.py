"""Where each face goes: per-face matrices, frame regions padded to size buckets, and motion.

The compiled merge program never sees whole frames: each face is merged inside a square region of
its frame that holds the face's crop square (at the model's face type and output scale) plus a
margin. Region sizes are rounded up to a few buckets (`BUCKETS`) so one video compiles the program
a bounded number of times, and a 1080p frame costs only its faces' pixels. Matrices are DFL's
(§1.5), recomputed from the faceset's frame landmarks for the model's resolution and face type,
then expressed in region coordinates.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from preprocessing.align import crop_square_in_frame, image_to_face_matrix, transform_points
from preprocessing.face_types import FaceType
from preprocessing.masks import hull_mask

# Region sides: powers of two and 1.5x between them (at most 1.5x the needed side).
BUCKETS = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
# Margin around the crop squares: cubic taps reach 2 px, and Poisson blending needs the frame's own
# pixels as its boundary just outside the mask.
_MARGIN = 4
# DFL's motion estimate uses the FULL face transform at 256 px and its crop centre.
_MOTION_SIZE = 256


class FacePlan(NamedTuple):
    """One face's placement: region [y0:y0+size, x0:x0+size] of its frame (it may reach past the
    frame's edges: those pixels read as 0 and are never written back)."""

    x0: int
    y0: int
    size: int
    face_mat: np.ndarray  # float32 [2, 3]: region -> model face (model resolution)
    out_mat: np.ndarray  # float32 [2, 3]: region -> model face at the output face scale
    hull: np.ndarray  # uint8 [r, r, 1]: DFL's landmark hull in the model face, 0/255


def bucket(side: float) -> int:
    """The smallest bucket that holds `side` pixels."""
    for b in BUCKETS:
        if b >= side:
            return b
    raise ValueError(f"a face region of {side:.0f} px exceeds the largest bucket ({BUCKETS[-1]})")


def _in_region(matrix: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """frame -> face matrix re-expressed for region coordinates (frame = region + (x0, y0))."""
    m = np.asarray(matrix, np.float64)
    out = m.copy()
    out[:, 2] = m[:, :2] @ np.array([x0, y0], np.float64) + m[:, 2]
    return out.astype(np.float32)


def plan_face(landmarks68: np.ndarray, resolution: int, face_type: FaceType,
              output_face_scale: float = 0.0) -> FacePlan:
    """A face's region and matrices for a model of `resolution` px and `face_type`.

    A positive `output_face_scale` (DFL's -50..50) crops tighter, so the face is pasted larger.
    """
    face_mat = image_to_face_matrix(landmarks68, resolution, face_type)
    out_mat = image_to_face_matrix(landmarks68, resolution, face_type, scale=1.0 + 0.01 * output_face_scale)
    corners = np.concatenate([crop_square_in_frame(face_mat, resolution),
                              crop_square_in_frame(out_mat, resolution)])
    low, high = corners.min(axis=0) - _MARGIN, corners.max(axis=0) + _MARGIN
    size = bucket(float(np.max(high - low)))
    centre = (low + high) / 2.0
    x0, y0 = (int(math.floor(c - size / 2.0)) for c in centre)
    face_lm = transform_points(landmarks68, face_mat)
    return FacePlan(x0, y0, size, _in_region(face_mat, x0, y0), _in_region(out_mat, x0, y0),
                    hull_mask((resolution, resolution), face_lm))


def cut_region(frame: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """frame[y0:y0+size, x0:x0+size] with zeros where the square leaves the frame."""
    height, width = frame.shape[:2]
    out = np.zeros((size, size) + frame.shape[2:], frame.dtype)
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + size, width), min(y0 + size, height)
    if fx1 > fx0 and fy1 > fy0:
        out[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    return out


def paste_region(frame: np.ndarray, region: np.ndarray, x0: int, y0: int) -> None:
    """Writes the part of `region` that lies inside `frame` back into it (in place)."""
    height, width = frame.shape[:2]
    size = region.shape[0]
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + size, width), min(y0 + size, height)
    if fx1 > fx0 and fy1 > fy0:
        frame[fy0:fy1, fx0:fx1] = region[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]


def face_centre(landmarks68: np.ndarray) -> np.ndarray:
    """Frame position of the FULL-face crop centre at 256 px (DFL's motion reference point)."""
    mat = image_to_face_matrix(landmarks68, _MOTION_SIZE, FaceType.FULL)
    centre = np.array([[_MOTION_SIZE // 2 - 1] * 2], np.float64)  # DFL's (127, 127)
    return transform_points(centre, mat, invert=True)[0]


def motion(prev_landmarks: np.ndarray | None, next_landmarks: np.ndarray | None) -> tuple[float, float]:
    """(power in px, angle in degrees) of a face's motion from frame i-1 to i+1 (DFL §4.1).

    Zero when a neighbour frame has no face. The angle is -atan2(dy, dx), DFL's convention.
    """
    if prev_landmarks is None or next_landmarks is None:
        return 0.0, 0.0
    d = face_centre(next_landmarks) - face_centre(prev_landmarks)
    return float(np.hypot(d[0], d[1])), float(-math.degrees(math.atan2(d[1], d[0])))
