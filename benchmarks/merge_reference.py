"""A per-face OpenCV/NumPy merge that follows DFL_SPEC §4.3 step by step: the CPU baseline of
`benchmarks.merge_throughput` and the independent reference `tests/test_merge.py` checks the
compiled program against.

It does what DFL's `MergeMaskedFace` does with OpenCV on whole frames (cv2.warpAffine,
cv2.resize, cv2.erode/dilate with an elliptical kernel, cv2.GaussianBlur, cv2.seamlessClone) and
colour transfer in NumPy (rct with OpenCV's Lab, statistics over the mask like ours). Covered:
modes overlay and seamless, every mask mode, erode/blur, output face scale, ct none/rct. The
network is called through `predict`, a function the caller gives (the same model as the program).
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from preprocessing.align import image_to_face_matrix, transform_points
from preprocessing.face_types import FaceType
from preprocessing.masks import hull_mask

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _rct(source: np.ndarray, target: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Reinhard transfer in OpenCV's float Lab, statistics over area > 0 (all pixels if empty)."""
    src_lab = cv2.cvtColor(source.astype(np.float32), cv2.COLOR_RGB2Lab).astype(np.float64)
    tgt_lab = cv2.cvtColor(target.astype(np.float32), cv2.COLOR_RGB2Lab).astype(np.float64)
    inside = area[..., 0] > 0
    if not inside.any():
        inside = np.ones_like(inside)
    s, t = src_lab[inside], tgt_lab[inside]
    scale = t.std(0) / np.maximum(s.std(0), 1e-3)
    lab = (src_lab - s.mean(0)) * scale + t.mean(0)
    lab = np.clip(lab, [0.0, -127.0, -127.0], [100.0, 127.0, 127.0]).astype(np.float32)
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)


def _process_mask(mask: np.ndarray, erode: int, blur: int, pad: int) -> np.ndarray:
    m = np.pad(mask, pad)
    if erode > 0:
        m = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (erode, erode)), iterations=1)
    elif erode < 0:
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (-erode, -erode)), iterations=1)
    band = pad + blur // 2
    m[:band], m[-band:], m[:, :band], m[:, -band:] = 0, 0, 0, 0
    if blur > 0:
        k = blur + (1 - blur % 2)
        m = cv2.GaussianBlur(m, (k, k), 0)
    return np.clip(m[pad:-pad, pad:-pad], 0.0, 1.0)


def merge_face(frame: np.ndarray, landmarks: np.ndarray, predict: Predict, resolution: int, face_type: FaceType,
               *, mode: str = "overlay", mask_mode: str = "learned-prd*learned-dst", color_transfer: str = "none",
               erode: int = 0, blur: int = 0, output_face_scale: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One face merged into an RGB uint8 frame -> (RGB float32 frame in [0, 1], alpha [H, W, 1])."""
    r, sub = resolution, 4 * resolution
    height, width = frame.shape[:2]
    image = frame.astype(np.float32) / 255.0
    face_mat = image_to_face_matrix(landmarks, r, face_type)
    out_mat = image_to_face_matrix(landmarks, r, face_type, scale=1.0 + 0.01 * output_face_scale)
    dst_face = cv2.warpAffine(image, face_mat, (r, r), flags=cv2.INTER_CUBIC)
    prd, prd_mask, dst_mask = (np.clip(x, 0.0, 1.0) for x in predict(dst_face))
    hull = hull_mask((r, r), transform_points(landmarks, face_mat)).astype(np.float32) / 255.0
    mask = {"full": np.ones_like(prd_mask), "dst": hull, "learned-prd": prd_mask, "learned-dst": dst_mask,
            "learned-prd*learned-dst": prd_mask * dst_mask,
            "learned-prd+learned-dst": np.clip(prd_mask + dst_mask, 0.0, 1.0)}[mask_mode][..., 0]
    mask = np.where(mask < 1 / 255, 0.0, mask).astype(np.float32)
    fine = _process_mask(cv2.resize(mask, (sub, sub), interpolation=cv2.INTER_CUBIC), erode, blur, r)
    alpha = cv2.warpAffine(fine, out_mat * 4, (width, height), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = np.clip(alpha, 0.0, 1.0)
    alpha[alpha < 1 / 255] = 0.0
    area = (cv2.resize(fine, (r, r)) > 0).astype(np.float32)[..., None]
    ys, xs = np.nonzero(alpha >= 0.1)
    if xs.size == 0 or xs.max() - xs.min() + 1 < 4 or ys.max() - ys.min() + 1 < 4:
        return image, np.zeros((height, width, 1), np.float32)
    if color_transfer == "rct":
        prd = _rct(prd, dst_face, area)
    warped = cv2.warpAffine(prd, out_mat, (width, height), image.copy(),
                            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC, borderMode=cv2.BORDER_TRANSPARENT)
    if mode == "seamless":
        binary = (alpha > 0.1).astype(np.uint8) * 255
        x, y, w, h = cv2.boundingRect(binary)
        src = np.round(np.clip(warped, 0, 1) * 255).astype(np.uint8)
        warped = cv2.seamlessClone(src, frame, binary, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
        warped = warped.astype(np.float32) / 255.0
    elif mode != "overlay":
        raise ValueError(f"the reference covers overlay and seamless, not {mode!r}")
    alpha = alpha[..., None]
    return image * (1.0 - alpha) + warped * alpha, alpha
