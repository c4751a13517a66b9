"""DFL's "best faces" sort (`final` / `final-fast`, DFL_SPEC §1.10): a pose-balanced, sharp, varied subset.

Steps, with DFL's numbers:
1. 128 yaw bins over [-1.2, 1.2] rad (faces beyond the range fall into the end bins).
2. A per-bin quota q. DFL takes round(target / 128) plus a share of the shortfall of under-filled
   bins; we take the largest q for which sum_bins min(bin size, q) <= target, which is the same
   redistribution carried to the end, so the result gets as close to `target` as the poses allow
   without exceeding it (q >= 1; when even one face per occupied bin is too many, the picks are
   thinned evenly over yaw).
3. In each yaw bin keep the 10*q sharpest faces (`final`: stored blur score; `final-fast`: source
   rect area).
4. Split them into q pitch sub-bins over [-pi/2, pi/2].
5. Order each sub-bin by histogram dissimilarity (grey, hull-masked; most dissimilar first).
6. Take faces round-robin across the sub-bins until q are taken.
Everything not taken goes to the trash. Kept faces are ordered by yaw bin, then pick order.
"""
from __future__ import annotations

import numpy as np

from preprocessing.faceset import face_stats, histograms
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.sort import Ordering, descending

YAW_BINS = 128
YAW_LIMIT = 1.2  # radians
SHARPEST_PER_QUOTA = 10


def bin_index(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Equal-width bin of each value over [low, high]; values outside go to the end bins."""
    scaled = np.floor((np.asarray(values, np.float64) - low) / (high - low) * bins)
    return np.clip(scaled, 0, bins - 1).astype(np.int64)


def quota(bin_sizes: np.ndarray, target: int) -> int:
    """Largest per-bin count q >= 1 with sum(min(size, q)) <= target."""
    largest = int(np.max(bin_sizes, initial=0))
    if largest == 0:
        return 1
    qs = np.arange(1, largest + 1)
    totals = np.minimum(np.asarray(bin_sizes)[None, :], qs[:, None]).sum(axis=1)
    fitting = qs[totals <= target]
    return int(fitting.max()) if len(fitting) else 1


def round_robin(groups: list[np.ndarray], count: int) -> np.ndarray:
    """First elements of every group, then the second ones, ... until `count` are taken."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return np.zeros(0, np.int64)
    members = np.concatenate(groups)
    depth = np.concatenate([np.arange(len(g)) for g in groups])
    group = np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)])
    return members[np.lexsort((group, depth))][:count]


def pick_from_bin(candidates: np.ndarray, pitch: np.ndarray, sqrt_hists: np.ndarray, q: int) -> np.ndarray:
    """Steps 4-6 for one yaw bin: `candidates` (face indices) with their pitch and histograms."""
    sub_bin = bin_index(pitch, -np.pi / 2, np.pi / 2, q)
    by_bin = np.argsort(sub_bin, kind="stable")
    _, starts = np.unique(sub_bin[by_bin], return_index=True)
    groups = []
    for members in np.split(by_bin, starts[1:]):  # the occupied sub-bins, by pitch
        groups.append(candidates[members[descending(histograms.dissimilarity(sqrt_hists[members]))]])
    return round_robin(groups, q)


def best_faces(fs: Faceset, *, target: int = 2000, by_rect_size: bool = False, progress: bool = True) -> Ordering:
    """The best-faces subset of `fs` as an Ordering (kept faces, trash)."""
    pose = face_stats.column(fs, "pose").astype(np.float64)
    pitch, yaw = pose[:, 0], pose[:, 1]
    sharpness = face_stats.source_rect_areas(fs) if by_rect_size else face_stats.column(fs, "blur")
    yaw_bin = bin_index(yaw, -YAW_LIMIT, YAW_LIMIT, YAW_BINS)
    q = quota(np.bincount(yaw_bin, minlength=YAW_BINS), target)

    candidates = []
    for b in range(YAW_BINS):
        members = np.flatnonzero(yaw_bin == b)
        candidates.append(members[descending(sharpness[members])][:SHARPEST_PER_QUOTA * q])
    # One batched read for the histograms of every candidate, in storage order.
    everyone = np.sort(np.concatenate(candidates))
    counts = face_stats.masked_grey_histogram_counts(fs, everyone, progress=progress)
    sqrt_hists = histograms.sqrt_normalised(counts.astype(np.float64))

    kept = [pick_from_bin(c, pitch[c], sqrt_hists[np.searchsorted(everyone, c)], q)
            for c in candidates if len(c)]
    keep = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    if len(keep) > target:  # fewer faces wanted than occupied yaw bins: spread the picks over yaw
        keep = keep[np.round(np.linspace(0, len(keep) - 1, target)).astype(np.int64)]
    trash = np.setdiff1d(np.arange(len(fs)), keep)
    return Ordering(keep.astype(np.int64), trash.astype(np.int64))
