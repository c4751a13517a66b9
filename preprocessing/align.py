"""Face alignment: from 68 frame landmarks to the affine that crops an aligned face (DFL_SPEC §1.5, §1.6).

DFL fits a similarity (Umeyama, with scale) from 33 stable landmarks (brows, nose, eyes, the two
mouth corners) to a unit-square mean face, then cuts a square around that mean face whose size and
centre depend on the face type. Every matrix here is an OpenCV 2x3 affine in float64 that maps
*frame* pixels to *aligned-face* pixels, exactly as DFL stores `image_to_face_mat`.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from preprocessing.face_types import FaceType

# The classic "deepfakes" umeyama template in a unit square (x right, y down), for iBUG points
# 17..48 and 54 in that order (DFL_SPEC §1.5 table). Jaw and inner mouth are left out on purpose:
# they move with expression and pose, the brows/eyes/nose/mouth corners much less.
MEAN_FACE_33 = np.array(
    [
        [0.000213256, 0.106454], [0.0752622, 0.038915], [0.18113, 0.0187482],
        [0.29077, 0.0344891], [0.393397, 0.0773906], [0.586856, 0.0773906],
        [0.689483, 0.0344891], [0.799124, 0.0187482], [0.904991, 0.038915],
        [0.98004, 0.106454], [0.490127, 0.203352], [0.490127, 0.307009],
        [0.490127, 0.409805], [0.490127, 0.515625], [0.36688, 0.587326],
        [0.426036, 0.609345], [0.490127, 0.628106], [0.554217, 0.609345],
        [0.613373, 0.587326], [0.121737, 0.216423], [0.187122, 0.178758],
        [0.265825, 0.179852], [0.334606, 0.231733], [0.260918, 0.245099],
        [0.182743, 0.244077], [0.645647, 0.231733], [0.714428, 0.179852],
        [0.793132, 0.178758], [0.858516, 0.216423], [0.79751, 0.244077],
        [0.719335, 0.245099], [0.254149, 0.780233], [0.726104, 0.780233],
    ],
    dtype=np.float64,
)
ALIGN_POINTS = np.array(list(range(17, 49)) + [54], dtype=np.int64)

# Unit square corners in the order top-left, top-right, bottom-right, bottom-left.
_UNIT_CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])

# A crop square covering more than this many detector rects means the landmarks went wrong.
_SANITY_AREA_RATIO = 4.0


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity mapping `src` onto `dst` (Umeyama 1991), as a homogeneous matrix.

    Points are [N, D]. The reflection fix (flip the last singular direction when the covariance has
    a negative determinant) keeps the result a proper rotation even for noisy or mirrored input.
    Returns float64 [D+1, D+1]. Raises ValueError for mismatched shapes or a degenerate point set.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"umeyama needs two [N, D] point sets of equal shape, got {src.shape} and {dst.shape}")
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n

    u, sing, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank < dim - 1:
        raise ValueError(f"umeyama: degenerate point set (covariance rank {rank} < {dim - 1})")
    signs = np.ones(dim)
    if rank == dim - 1:
        # det(cov) is 0: decide the last direction from the orthogonal factors themselves.
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            signs[-1] = -1.0
    elif np.linalg.det(cov) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt

    scale = 1.0
    if estimate_scale:
        scale = float(sing @ signs) / float((src_c**2).sum() / n)
    out = np.eye(dim + 1)
    out[:dim, :dim] = scale * rotation
    out[:dim, dim] = dst_mean - scale * rotation @ src_mean
    return out


def transform_points(points: np.ndarray, matrix: np.ndarray, invert: bool = False) -> np.ndarray:
    """Applies a 2x3 (or 3x3 homogeneous) affine to points [..., 2]; `invert` applies its inverse."""
    m = _as_3x3(matrix)
    if invert:
        m = np.linalg.inv(m)
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:2, :2].T + m[:2, 2]


def image_to_face_matrix(
    landmarks68: np.ndarray, size: int, face_type: FaceType, scale: float = 1.0
) -> np.ndarray:
    """The frame -> aligned-face affine (float64 [2, 3]) for a `size` x `size` crop, as DFL builds it.

    In the normalised mean-face space the crop is a square of half-side (0.5 + sqrt(2)*padding)/scale
    centred at (0.5, 0.5); WHOLE_FACE moves the centre up 0.07, HEAD up 0.5 and sideways by the damped
    yaw estimate. The *_NO_ALIGN types replace the rotated square by the axis-aligned square of equal
    area and centre. `scale` > 1 zooms in (the merger's output face scale).
    """
    face_type = FaceType(face_type)
    if face_type == FaceType.MARK_ONLY:
        raise ValueError("mark_only faces have no crop, hence no image_to_face matrix")
    lm = _check_landmarks(landmarks68)
    norm_from_image = umeyama(lm[ALIGN_POINTS], MEAN_FACE_33, estimate_scale=True)

    centre = _crop_centre(face_type, transform_points(lm, norm_from_image))
    half_side = (0.5 + math.sqrt(2.0) * face_type.padding) / scale
    corners = transform_points(centre + half_side * _UNIT_CORNERS, norm_from_image, invert=True)

    if face_type.remove_align:
        frame_centre = transform_points(centre, norm_from_image, invert=True)
        half = math.sqrt(_polygon_area(corners)) / 2.0
        corners = frame_centre + half * _UNIT_CORNERS
    return _affine_from_corners(corners, size)


def warp_to_face(
    image: np.ndarray,
    matrix: np.ndarray,
    size: int,
    interpolation: int = cv2.INTER_LINEAR,
    border: int = cv2.BORDER_CONSTANT,
) -> np.ndarray:
    """Cuts the aligned `size` x `size` face out of a frame (any dtype, [H, W] or [H, W, C]).

    Defaults match DFL's extraction crop: its call passes INTER_LANCZOS4 into warpAffine's
    positional `dst` slot, so OpenCV's defaults apply — bilinear and a constant black border
    (DFL_SPEC §1.6 quirk; §1.12 notes the black borders). A trailing channel of 1 is kept.
    """
    out = cv2.warpAffine(
        image, np.asarray(matrix, dtype=np.float64)[:2], (int(size), int(size)),
        flags=interpolation, borderMode=border, borderValue=0,
    )
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def crop_square_in_frame(matrix: np.ndarray, size: int) -> np.ndarray:
    """Corners (tl, tr, br, bl) of the `size` x `size` crop in frame pixels, float64 [4, 2].

    Used for the debug drawing (the crop square, with tl marking rotation) and the sanity filter.
    """
    square = np.array([[0.0, 0.0], [size, 0.0], [size, size], [0.0, size]])
    return transform_points(square, matrix, invert=True)


def passes_sanity_filter(matrix: np.ndarray, size: int, box: np.ndarray, face_type: FaceType) -> bool:
    """DFL's automatic-mode filter: drop a face whose crop covers more than 4x the detector rect.

    A landmarker that failed produces a huge or exploded crop; comparing against the detector's
    rect catches it. As in DFL, only face types <= FULL_NO_ALIGN are checked (larger types are
    legitimately much bigger than the rect).
    """
    if FaceType(face_type) > FaceType.FULL_NO_ALIGN:
        return True
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
    rect_area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    return _polygon_area(crop_square_in_frame(matrix, size)) <= _SANITY_AREA_RATIO * rect_area


def convert_face_matrix(
    matrix: np.ndarray,
    landmarks68_frame: np.ndarray,
    to_size: int,
    to_type: FaceType,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-crops a face to another size and/or face type (the faceset resize/convert tool).

    Returns (new frame -> face matrix, old face -> new face affine). The new matrix is recomputed
    from the frame landmarks rather than from the face-space ones, so *_NO_ALIGN types stay
    axis-aligned in the frame. Warp the old aligned image with the second matrix to get the new
    crop; parts outside the old crop become black, because that information does not exist.
    """
    new_matrix = image_to_face_matrix(landmarks68_frame, to_size, to_type)
    old_to_new = _as_3x3(new_matrix) @ np.linalg.inv(_as_3x3(matrix))
    return new_matrix, old_to_new[:2]


def _crop_centre(face_type: FaceType, landmarks_norm: np.ndarray) -> np.ndarray:
    """Crop centre in normalised mean-face space (only WHOLE_FACE and HEAD move it)."""
    if face_type == FaceType.WHOLE_FACE:
        return np.array([0.5, 0.5 - 0.07])
    if face_type == FaceType.HEAD:
        yaw = _averaged_yaw(landmarks_norm)
        yaw *= abs(math.tanh(2.0 * yaw))  # damp small values: near-frontal heads stay centred
        return np.array([0.5 + yaw / 2.0, 0.0])
    return np.array([0.5, 0.5])


def _averaged_yaw(lm: np.ndarray) -> float:
    """Width right of the nose bridge minus width left of it, from 3 jaw/bridge point pairs."""
    x = lm[:, 0]
    left = np.mean([x[27] - x[0], x[28] - x[1], x[29] - x[2]])
    right = np.mean([x[16] - x[27], x[15] - x[28], x[14] - x[29]])
    return float(right - left)


def _affine_from_corners(corners: np.ndarray, size: int) -> np.ndarray:
    """Affine sending corners tl, tr, br to (0,0), (size,0), (size,size), solved in float64.

    (cv2.getAffineTransform does the same but only in float32.)
    """
    src = np.hstack([corners[:3], np.ones((3, 1))])
    dst = np.array([[0.0, 0.0], [size, 0.0], [size, size]])
    return np.linalg.solve(src, dst).T


def _polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon [N, 2]."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _as_3x3(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 3):
        return m
    if m.shape != (2, 3):
        raise ValueError(f"expected a 2x3 or 3x3 affine matrix, got shape {m.shape}")
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _check_landmarks(landmarks68: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"expected finite 68x2 landmarks, got shape {lm.shape}")
    return lm
