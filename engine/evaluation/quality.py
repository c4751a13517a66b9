"""Pixel metrics inside the face: masked SSIM and PSNR (meaningful for self-swaps, where the
swapped face should reproduce the original) and the face's mean colour for flicker.

Images are RGB uint8 [H, W, 3] frames; masks bool [H, W] (the original face's landmark hull).
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage.metrics import structural_similarity

SSIM_WINDOW = 7  # skimage's default uniform 7x7 window


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The mask's bounding box grown by `margin` pixels, clipped to the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (slice(max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)),
            slice(max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)))


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean of skimage's SSIM map (7x7 windows, all channels) over the mask's pixels.

    Only the mask's box plus one window of margin is compared, so a face in a 4K frame costs what
    the face costs; inside the mask the map equals the full-frame one.
    """
    rows, cols = _crop_box(mask, SSIM_WINDOW)
    _, ssim_map = structural_similarity(
        a[rows, cols].astype(np.float64) / 255.0, b[rows, cols].astype(np.float64) / 255.0,
        win_size=SSIM_WINDOW, channel_axis=-1, data_range=1.0, full=True)
    return float(ssim_map[mask[rows, cols]].mean())


def masked_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error (images scaled to [0, 1]) over the mask's pixels and channels."""
    diff = (a[mask].astype(np.float64) - b[mask].astype(np.float64)) / 255.0
    return float(np.mean(diff**2))


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for a peak of 1; +inf for identical pixels."""
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(1.0 / mse))


def mean_lab(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean CIE Lab colour (L in [0, 100]) of the masked pixels, float64 [3]."""
    rows, cols = _crop_box(mask, 0)
    lab = cv2.cvtColor(image[rows, cols].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return lab[mask[rows, cols]].astype(np.float64).mean(0)


def colour_flicker(labs: np.ndarray) -> float:
    """Mean Lab distance (Delta E 1976) between consecutive frames' face colours.

    labs: [T, 3] with NaN rows for frames without a face; pairs touching one are skipped. NaN if
    no consecutive pair exists.
    """
    lab = np.asarray(labs, dtype=np.float64)
    steps = np.linalg.norm(lab[1:] - lab[:-1], axis=-1)
    valid = steps[np.isfinite(steps)]
    return float(valid.mean()) if valid.size else float("nan")
