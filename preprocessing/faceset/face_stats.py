"""Per-face measurements over a whole faceset: stored columns and image statistics from batched reads.

Sorting, filtering and best-faces all need "read the faces (and masks) of every face, compute
something small per face"; `scan` is that loop, written once, with a progress bar. Batched reads
keep TensorStore busy with whole shards instead of one chunk at a time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from preprocessing.faceset import histograms
from preprocessing.faceset.reader import Faceset

BATCH = 256  # faces per read: one shard of the default layout


def scan(
    fs: Faceset,
    names: Sequence[str],
    fn: Callable[[dict[str, np.ndarray]], np.ndarray],
    *,
    desc: str,
    indices: np.ndarray | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Concatenates `fn(batch)` over all faces (or over `indices`, in that order).

    `batch` maps each name to its array for the batch's faces; `fn` returns one row per face.
    """
    indices = np.arange(len(fs)) if indices is None else np.asarray(indices, np.int64)
    parts = []
    with tqdm(total=len(indices), desc=desc, unit="face", disable=not progress, leave=False) as bar:
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            parts.append(np.asarray(fn(fs.read_many(list(names), chunk))))
            bar.update(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0,))


def column(fs: Faceset, name: str) -> np.ndarray:
    """A whole per-face array (blur, pose, score, ...) in faceset order."""
    return np.asarray(fs.read_range(name, 0, len(fs)))


def source_rect_areas(fs: Faceset) -> np.ndarray:
    """Area of each face's detector box in frame pixels (DFL's `face-source-rect-size`)."""
    rects = column(fs, "source_rects").astype(np.float64)
    return (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])


def motion_blur(faces: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Variance of the 11-tap Laplacian of each hull-masked grey face (higher = sharper)."""
    out = np.empty(len(faces), np.float64)
    for i, (face, mask) in enumerate(zip(faces, masks)):
        grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY) * (mask[..., 0] > 0).astype(np.uint8)
        out[i] = cv2.Laplacian(grey, cv2.CV_64F, ksize=11).var()
    return out


def hsv_means(faces: np.ndarray) -> np.ndarray:
    """Mean (H, S, V) of each RGB face in OpenCV's uint8 HSV (H in [0, 180)) -> [B, 3]."""
    b, h, w, _ = faces.shape
    hsv = cv2.cvtColor(np.ascontiguousarray(faces).reshape(b * h, w, 3), cv2.COLOR_RGB2HSV)
    return hsv.reshape(b, h * w, 3).mean(axis=1)


def channel_histogram_counts(fs: Faceset, indices: np.ndarray | None = None, *, progress: bool = True) -> np.ndarray:
    """Per-channel 256-bin counts of each face -> uint32 [N, 3, 256] (a compact form for 50k faces)."""
    return scan(fs, ["faces"], lambda b: histograms.channel_histograms(b["faces"]).astype(np.uint32),
                desc="histograms", indices=indices, progress=progress)


def masked_grey_histogram_counts(fs: Faceset, indices: np.ndarray | None = None, *,
                                 progress: bool = True) -> np.ndarray:
    """Grey 256-bin counts inside each face's hull mask -> uint32 [N, 256]."""
    return scan(fs, ["faces", "masks"],
                lambda b: histograms.masked_grey_histograms(b["faces"], b["masks"]).astype(np.uint32),
                desc="histograms", indices=indices, progress=progress)
