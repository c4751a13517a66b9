"""`filter`: keep the faces that pass simple thresholds, and drop near-duplicates.

Thresholds compare stored per-face columns (blur, pose, detector score); `drop` removes faces by
index; near-duplicates are faces whose colour histograms are too similar to the previously kept
face (consecutive video frames of a still head), checked in faceset order after the thresholds.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from preprocessing.errors import UserError
from preprocessing.faceset import face_stats, histograms
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.sort import Ordering


@dataclasses.dataclass
class FilterRules:
    """Every rule is off when None/empty. Angles in degrees; similarity in [0, 1]."""

    min_blur: float | None = None
    max_abs_yaw: float | None = None
    max_abs_pitch: float | None = None
    min_score: float | None = None
    drop: str = ""  # face indices and ranges, e.g. "1,5,7-9"
    max_hist_similarity: float | None = None


def parse_index_list(text: str, count: int, *, where: str) -> np.ndarray:
    """'1,5,7-9' -> [1, 5, 7, 8, 9]; indices must lie in [0, count). `where` names the faceset in errors."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise UserError(f"{where}: --drop item {part!r} is not an index or a range like 7-9")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if first > last:
            raise UserError(f"{where}: --drop range {part!r} runs backwards")
        if last >= count:
            raise UserError(f"{where}: --drop index {last} is out of range (the faceset has {count} faces)")
        out.extend(range(first, last + 1))
    return np.unique(np.asarray(out, np.int64))


def histogram_similarity(sqrt_a: np.ndarray, sqrt_b: np.ndarray) -> float:
    """1 - mean per-channel Bhattacharyya distance of two sqrt-normalised [3, 256] histograms (1 = same)."""
    coefficients = (sqrt_a * sqrt_b).sum(axis=-1)
    return 1.0 - float(histograms.distances_from_coefficients(coefficients).mean())


def drop_near_duplicates(counts: np.ndarray, max_similarity: float) -> np.ndarray:
    """Positions (into `counts`, [N, 3, 256]) of faces kept: each is compared with the last kept one."""
    roots = histograms.sqrt_normalised(counts.astype(np.float64))
    kept = []
    for i in range(len(roots)):
        if not kept or histogram_similarity(roots[kept[-1]], roots[i]) <= max_similarity:
            kept.append(i)
    return np.asarray(kept, np.int64)


def filter_faces(fs: Faceset, rules: FilterRules, *, progress: bool = True) -> Ordering:
    """The faces of `fs` that pass every rule (faceset order) and the dropped ones."""
    n = len(fs)
    ok = np.ones(n, bool)
    if rules.min_blur is not None:
        ok &= face_stats.column(fs, "blur") >= rules.min_blur
    if rules.max_abs_yaw is not None or rules.max_abs_pitch is not None:
        pose = face_stats.column(fs, "pose").astype(np.float64)
        if rules.max_abs_yaw is not None:
            ok &= np.abs(pose[:, 1]) <= math.radians(rules.max_abs_yaw)
        if rules.max_abs_pitch is not None:
            ok &= np.abs(pose[:, 0]) <= math.radians(rules.max_abs_pitch)
    if rules.min_score is not None:
        ok &= face_stats.column(fs, "score") >= rules.min_score
    ok[parse_index_list(rules.drop, n, where=fs.path)] = False
    keep = np.flatnonzero(ok)
    if rules.max_hist_similarity is not None and len(keep):
        counts = face_stats.channel_histogram_counts(fs, keep, progress=progress)
        keep = keep[drop_near_duplicates(counts, rules.max_hist_similarity)]
    return Ordering(keep, np.setdiff1d(np.arange(n), keep))
