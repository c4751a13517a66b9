"""Arrays a faceset derives from a face crop and its landmarks: masks, pose and sharpness.

Whenever the tools make new crops (another face type, or imported aligned images) these are
recomputed the way extraction computes them, so every faceset means the same thing by them.
"""
from __future__ import annotations

import numpy as np

from preprocessing.masks import dense_hull_mask, eyes_mouth_mask, hull_mask
from preprocessing.pose import estimate_pitch_yaw_roll
from preprocessing.sharpness import blur_score


def derived_arrays(faces: np.ndarray, landmarks: np.ndarray, size: int,
                   dense: list[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    """masks, eyes_mouth_masks, pose and blur for crops [n, S, S, 3] with face-space landmarks [n, 68, 2].

    `dense` (face-space FaceMesh points per face, or None) gives the tighter dense hull, as in
    extraction; without it the hull comes from the 68 landmarks.
    """
    dense = dense or [None] * len(faces)
    masks = np.stack([hull_mask((size, size), lm) if d is None else dense_hull_mask((size, size), d)
                      for lm, d in zip(landmarks, dense)])
    return {
        "masks": masks,
        "eyes_mouth_masks": np.stack([eyes_mouth_mask((size, size), lm) for lm in landmarks]),
        "pose": np.stack([estimate_pitch_yaw_roll(lm, size) for lm in landmarks]).astype(np.float32),
        "blur": np.array([blur_score(f, m) for f, m in zip(faces, masks)], np.float32),
    }
