"""From a detected face in a frame to the per-face arrays a faceset stores.

This is DFL's "final stage" (DFL_SPEC §1.6): similarity alignment for the chosen face type, the
aligned crop, face-space landmarks, the hull mask (dense FaceMesh silhouette when the backend has
one), the eyes+mouth priority mask, pose and a sharpness score. It is pure per-face work, shared by
extraction and by the faceset tools that re-crop from source frames.
"""
from __future__ import annotations

import numpy as np

from preprocessing.align import (
    image_to_face_matrix,
    passes_sanity_filter,
    transform_points,
    warp_to_face,
)
from preprocessing.detect import DetectedFace
from preprocessing.face_types import FaceType
from preprocessing.masks import dense_hull_mask, eyes_mouth_mask, hull_mask
from preprocessing.pose import estimate_pitch_yaw_roll
from preprocessing.sharpness import blur_score

# The arrays one face contributes (the writer adds frame_index, source_id and face_index itself).
RECORD_ARRAYS = (
    "faces", "masks", "eyes_mouth_masks", "landmarks", "source_landmarks", "matrices",
    "source_rects", "score", "blur", "pose",
)


def face_record(
    frame: np.ndarray, face: DetectedFace, size: int, face_type: FaceType
) -> dict[str, np.ndarray] | None:
    """Per-face arrays for one detection, or None when DFL's sanity filter rejects the crop.

    The filter drops crops whose square covers more than 4x the detector box (a landmark fit that
    went wrong); DFL applies it only to face types up to full_face.
    """
    matrix = image_to_face_matrix(face.landmarks, size, face_type)
    if not passes_sanity_filter(matrix, size, face.box, face_type):
        return None
    crop = warp_to_face(frame, matrix, size)
    landmarks = transform_points(face.landmarks, matrix).astype(np.float32)
    if face.dense is not None:
        mask = dense_hull_mask((size, size), transform_points(face.dense, matrix))
    else:
        mask = hull_mask((size, size), landmarks)
    return {
        "faces": crop,
        "masks": mask,
        "eyes_mouth_masks": eyes_mouth_mask((size, size), landmarks),
        "landmarks": landmarks,
        "source_landmarks": np.asarray(face.landmarks, np.float32),
        "matrices": np.asarray(matrix, np.float32),
        "source_rects": np.asarray(face.box, np.float32),
        "score": np.float32(face.score),
        "blur": np.float32(blur_score(crop, mask)),
        "pose": np.asarray(estimate_pitch_yaw_roll(landmarks, size), np.float32),
    }


def stack_records(records: list[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """Stacks per-face records into arrays with a leading face axis (k may be 0)."""
    if records:
        return {name: np.stack([r[name] for r in records]) for name in RECORD_ARRAYS}
    empty_shapes = {
        "faces": (0, size, size, 3), "masks": (0, size, size, 1),
        "eyes_mouth_masks": (0, size, size, 1), "landmarks": (0, 68, 2),
        "source_landmarks": (0, 68, 2), "matrices": (0, 2, 3), "source_rects": (0, 4),
        "score": (0,), "blur": (0,), "pose": (0, 3),
    }
    dtypes = {"faces": np.uint8, "masks": np.uint8, "eyes_mouth_masks": np.uint8}
    return {n: np.zeros(s, dtypes.get(n, np.float32)) for n, s in empty_shapes.items()}
