"""Landmark-derived masks (DFL_SPEC §1.9): the face hull used for training/sorting/merging and the
eyes+mouth weight mask of SAEHD's eyes_mouth_prio loss.

All masks are uint8 [H, W, 1]: 0/255 for hard masks, 0..255 for soft ones.
"""
from __future__ import annotations

import cv2
import numpy as np

# DFL's 8 hull groups over the 68 iBUG points (after eyebrow expansion). Their union covers the
# jaw, cheeks, the raised forehead band and the nose; splitting it into several convex pieces lets
# the union follow the concave outline between the jaw and the brows.
_HULL_GROUPS: tuple[tuple[int, ...], ...] = (
    (*range(0, 9), 17),
    (*range(8, 17), 26),
    (17, 18, 19, 8),
    (24, 25, 26, 8),
    (*range(19, 25), 8),
    (*range(17, 22), 27, *range(31, 36), 8),
    (*range(22, 27), 27, *range(31, 36), 8),
    (*range(27, 31), *range(31, 36)),
)
_EYES_MOUTH_GROUPS: tuple[tuple[int, ...], ...] = (
    tuple(range(36, 42)),
    tuple(range(42, 48)),
    tuple(range(60, 68)),
)


def hull_mask(size_hw: tuple[int, int], landmarks68: np.ndarray, eyebrows_expand_mod: float = 1.0) -> np.ndarray:
    """DFL's landmark hull mask: union of 8 convex hulls after raising the eyebrows.

    Landmarks are truncated to int first, as DFL does, so the mask matches DFL's pixel for pixel
    rather than being a sub-pixel rasterisation. `eyebrows_expand_mod` (metadata field, default 1)
    scales how far the brows are pushed away from the eyes to cover the forehead.
    """
    lm = _expand_eyebrows(_landmarks_as_int(landmarks68), eyebrows_expand_mod)
    mask = np.zeros((*_hw(size_hw), 1), dtype=np.uint8)
    for group in _HULL_GROUPS:
        cv2.fillConvexPoly(mask, cv2.convexHull(lm[list(group)]), 255)
    return mask


def dense_hull_mask(size_hw: tuple[int, int], dense_points: np.ndarray) -> np.ndarray:
    """Convex hull of dense (e.g. FaceMesh 468) points, 0/255.

    The mesh-mapped 68-point jaw follows the 3-D silhouette and sits outside the visible jaw on
    3/4 views; the dense silhouette is the tighter hull there. It also reaches up to the top of the
    mesh (forehead), which is wanted for whole-face masks.
    """
    pts = np.asarray(dense_points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.all(np.isfinite(pts)):
        raise ValueError(f"expected finite [K>=3, 2] points, got shape {pts.shape}")
    mask = np.zeros((*_hw(size_hw), 1), dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 255)
    return mask


def eyes_mouth_mask(size_hw: tuple[int, int], landmarks68: np.ndarray) -> np.ndarray:
    """Soft mask (0..255) over both eyes (36-41, 42-47) and the inner mouth (60-67).

    As DFL's eye and mouth masks: fill the hulls, dilate with an elliptical kernel of h//32, then
    Gaussian-blur with kernel h//16 made odd (sigma from OpenCV's default for that kernel). DFL
    builds eye and mouth masks separately and sums them clipped to 1; the regions never overlap
    after dilation, so one pass over all three hulls gives the same result. Tiny masks (h < 32)
    skip the dilation, and h < 16 the blur.
    """
    h, w = _hw(size_hw)
    lm = _landmarks_as_int(landmarks68)
    mask = np.zeros((h, w), dtype=np.float32)
    for group in _EYES_MOUTH_GROUPS:
        cv2.fillConvexPoly(mask, cv2.convexHull(lm[list(group)]), 1.0)
    dilate = h // 32
    if dilate > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilate, dilate)))
    blur = h // 16
    blur += 1 - blur % 2
    if blur > 1:
        mask = cv2.GaussianBlur(mask, (blur, blur), 0)
    return np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)[:, :, None]


def _expand_eyebrows(lm: np.ndarray, mod: float) -> np.ndarray:
    """Moves each brow point away from its upper-eye partner by 0.5*mod*(brow - eye).

    Partners: 17-21 <- (a point a quarter of the way from 36 towards 0), 36, 37, 38, 39;
    22-26 <- 42, 43, 44, 45, (a quarter of the way from 45 towards 16). Integer arithmetic, as DFL.
    """
    out = lm.copy()
    left_outer = (lm[36] + (lm[36] + lm[0]) // 2) // 2
    right_outer = (lm[45] + (lm[45] + lm[16]) // 2) // 2
    left_eye = np.stack([left_outer, lm[36], lm[37], lm[38], lm[39]])
    right_eye = np.stack([lm[42], lm[43], lm[44], lm[45], right_outer])
    for brows, eye in ((slice(17, 22), left_eye), (slice(22, 27), right_eye)):
        top = lm[brows].astype(np.float64)
        out[brows] = (top + mod * 0.5 * (top - eye)).astype(np.int32)
    return out


def _landmarks_as_int(landmarks68: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"expected finite 68x2 landmarks, got shape {lm.shape}")
    return lm.astype(np.int32)


def _hw(size_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in tuple(size_hw)[:2])
    if h <= 0 or w <= 0:
        raise ValueError(f"mask size must be positive, got {size_hw}")
    return h, w
