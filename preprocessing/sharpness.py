"""Sharpness score of an aligned face, for the blur sort and the "best faces" selection.

We use DFL's *motion-blur* metric, the variance of a large (ksize 11) Laplacian of the grey face
(DFL_SPEC §1.10), rather than its CPBD-style `blur` metric: it is one OpenCV call, monotonic in
blur, and responds to motion blur as well as defocus. One deliberate change: DFL multiplies the
image by the hull mask *before* filtering, which plants an artificial sharp edge along the hull
whose strength depends on the face's brightness, not its focus. We filter the unmasked face and
take the variance only over pixels inside the mask, so the score measures the face itself.
"""
from __future__ import annotations

import cv2
import numpy as np

_LAPLACIAN_KSIZE = 11


def blur_score(face_rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Higher = sharper. `face_rgb` uint8 [H, W, 3]; `mask` [H, W] or [H, W, 1], non-zero = face.

    The grey image is scaled to [0, 1], so scores are comparable across faces of the same size
    (not across sizes: a larger crop of the same face has less energy per pixel at this kernel).
    Returns 0.0 for an empty mask.
    """
    face = np.asarray(face_rgb)
    if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] face, got {face.dtype} {face.shape}")
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255.0
    response = cv2.Laplacian(grey, cv2.CV_64F, ksize=_LAPLACIAN_KSIZE)
    if mask is None:
        return float(response.var())
    inside = np.asarray(mask).reshape(face.shape[:2]) > 0
    if not inside.any():
        return 0.0
    return float(response[inside].var())
