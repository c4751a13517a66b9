"""Batched 256-bin histograms and Bhattacharyya distances, as cv2.compareHist computes them.

DFL's `hist`, `hist-dissim` and best-faces sorts compare images with OpenCV's Bhattacharyya
distance, one image pair at a time. For 50k-face facesets that loop is too slow, so the histograms
of a whole batch are built with one `bincount`, normalised, square-rooted, and all pairwise
distances come from one matrix product:

    d(h1, h2) = sqrt(max(0, 1 - sum_k sqrt(h1_k * h2_k) / sqrt(sum h1 * sum h2)))

which is exactly cv2.HISTCMP_BHATTACHARYYA. An all-zero histogram (an empty mask) is kept as
zeros; its distance to anything is 1, as in OpenCV.
"""
from __future__ import annotations

import cv2
import numpy as np

BINS = 256


def channel_histograms(images: np.ndarray) -> np.ndarray:
    """Per-channel 256-bin counts of uint8 images [B, H, W, C] -> float64 [B, C, 256]."""
    images = np.asarray(images)
    b, _, _, c = images.shape
    # Give every (image, channel) pair its own block of 256 bins, then count once.
    offsets = (np.arange(b)[:, None] * c + np.arange(c)[None, :]) * BINS
    flat = images.reshape(b, -1, c).astype(np.int64) + offsets[:, None, :]
    counts = np.bincount(flat.ravel(), minlength=b * c * BINS)
    return counts.reshape(b, c, BINS).astype(np.float64)


def masked_grey_histograms(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """256-bin histograms of the grey face inside its mask: RGB uint8 [B,H,W,3], masks [B,H,W,1] -> [B, 256].

    Grey is OpenCV's RGB->GRAY (so the counts equal cv2.calcHist with the same mask).
    """
    b, h, w, _ = images.shape
    grey = cv2.cvtColor(np.ascontiguousarray(images).reshape(b * h, w, 3), cv2.COLOR_RGB2GRAY)
    grey = grey.reshape(b, h, w).astype(np.int64)
    inside = np.asarray(masks).reshape(b, h, w) > 0
    rows = np.broadcast_to(np.arange(b)[:, None, None], grey.shape)
    counts = np.bincount((rows * BINS + grey)[inside], minlength=b * BINS)
    return counts.reshape(b, BINS).astype(np.float64)


def sqrt_normalised(hists: np.ndarray) -> np.ndarray:
    """sqrt(h / sum h) along the last axis: the vectors whose dot product is the Bhattacharyya coefficient."""
    total = hists.sum(axis=-1, keepdims=True)
    return np.sqrt(hists / np.where(total > 0, total, 1.0))


def distances_from_coefficients(coefficients: np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficients -> distances sqrt(max(0, 1 - c)), computed in place."""
    np.subtract(1.0, coefficients, out=coefficients)
    np.maximum(coefficients, 0.0, out=coefficients)
    return np.sqrt(coefficients, out=coefficients)


def bhattacharyya(sqrt_a: np.ndarray, sqrt_b: np.ndarray) -> np.ndarray:
    """Pairwise distances between sqrt-normalised histograms [A, 256] and [B, 256] -> float64 [A, B]."""
    return distances_from_coefficients(np.asarray(sqrt_a, np.float64) @ np.asarray(sqrt_b, np.float64).T)


def summed_channel_distances(sqrt_a: np.ndarray, sqrt_b: np.ndarray) -> np.ndarray:
    """Sum over channels of pairwise distances: [A, C, 256] x [B, C, 256] -> [A, B] (DFL's `hist` metric)."""
    total = bhattacharyya(sqrt_a[:, 0], sqrt_b[:, 0])
    for c in range(1, sqrt_a.shape[1]):
        total += bhattacharyya(sqrt_a[:, c], sqrt_b[:, c])
    return total


def dissimilarity(sqrt_hists: np.ndarray) -> np.ndarray:
    """For each histogram [N, 256], the sum of its distances to all the others (DFL's `hist-dissim`).

    Row blocks of about 4M distances keep memory bounded (50k faces would need a 20 GB matrix)
    while the work stays one matrix product per block.
    """
    n = len(sqrt_hists)
    block = max(1, (1 << 22) // max(n, 1))
    out = np.empty(n, np.float64)
    for start in range(0, n, block):
        out[start:start + block] = bhattacharyya(sqrt_hists[start:start + block], sqrt_hists).sum(axis=1)
    return out
