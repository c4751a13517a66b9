"""DFL's faceset sort methods (DFL_SPEC §1.10) as orderings of face indices.

Every method returns an `Ordering`: the faces to keep, in their new order, and the faces it drops
(`oneface` and the best-faces methods drop faces; the others only reorder). Nothing here writes a
faceset; `subset.write_subset` does that. Scores that extraction already stored (blur, pose,
source rects) are read as columns; image statistics come from batched reads (`face_stats`).
Ties keep the faceset order (stable sorts), so a sort is deterministic.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from preprocessing.errors import UserError
from preprocessing.faceset import face_stats, histograms
from preprocessing.faceset.reader import Faceset

# Faces chained per block by `hist`: the block's distance matrix (float32) is 8192^2 * 4 B = 256 MiB.
# DFL chains blocks of 20000 in parallel processes; one block at a time keeps memory bounded.
HIST_CHAIN_BLOCK = 8192

METHODS = (
    "blur", "motion-blur", "face-yaw", "face-pitch", "source-rect-size", "hist", "hist-dissim",
    "brightness", "hue", "black", "origname", "oneface", "final", "final-fast",
)

@dataclasses.dataclass
class Ordering:
    keep: np.ndarray  # int64 face indices in the new order
    trash: np.ndarray  # int64 face indices the method drops, in faceset order


def descending(scores: np.ndarray) -> np.ndarray:
    """Indices from the highest score to the lowest; equal scores keep their order."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def _greedy_chain(dist: np.ndarray, start: int) -> np.ndarray:
    """Visits every row of a square distance matrix, always stepping to the nearest unvisited one."""
    n = len(dist)
    visited = np.zeros(n, bool)
    order = np.empty(n, np.int64)
    current = start
    for step in range(n):
        order[step] = current
        visited[current] = True
        if step + 1 < n:
            current = int(np.argmin(np.where(visited, np.inf, dist[current])))
    return order


def hist_chain(counts: np.ndarray, block: int = HIST_CHAIN_BLOCK) -> np.ndarray:
    """DFL's `hist`: a nearest-neighbour chain from face 0 on summed per-channel Bhattacharyya distances.

    `counts` are per-channel histograms [N, 3, 256]. Faces are chained in blocks of `block` (the
    distance matrix of all faces would not fit in memory); each later block starts at its face
    nearest to where the previous block's chain ended, so the chain stays continuous.
    """
    order = []
    last = None
    for start in range(0, len(counts), block):
        roots = histograms.sqrt_normalised(counts[start:start + block].astype(np.float64))
        first = 0 if last is None else int(np.argmin(histograms.summed_channel_distances(last, roots)[0]))
        chain = _greedy_chain(histograms.summed_channel_distances(roots, roots).astype(np.float32), first)
        order.append(start + chain)
        last = roots[chain[-1]][None]
    return np.concatenate(order) if order else np.zeros(0, np.int64)


def origname_order(fs: Faceset) -> np.ndarray:
    """Faces by source name, then frame, then face within the frame (DFL's `origname`)."""
    names = [str(s.get("name") or s.get("path") or i) for i, s in enumerate(fs.sources)]
    rank = {name: r for r, name in enumerate(sorted(set(names)))}
    source_rank = np.array([rank[n] for n in names], np.int64)
    sid = face_stats.column(fs, "source_id").astype(np.int64)
    return np.lexsort((face_stats.column(fs, "face_index"), face_stats.column(fs, "frame_index"),
                       source_rank[sid]))


def oneface(fs: Faceset) -> Ordering:
    """Drops every face whose frame holds more than one face; keeps the rest in faceset order."""
    frames = np.stack([face_stats.column(fs, "source_id"), face_stats.column(fs, "frame_index")],
                      axis=1).astype(np.int64)
    _, inverse, counts = np.unique(frames, axis=0, return_inverse=True, return_counts=True)
    crowded = counts[inverse.ravel()] > 1
    idx = np.arange(len(fs))
    return Ordering(idx[~crowded], idx[crowded])


def _reorder(fs: Faceset, method: str, progress: bool) -> np.ndarray:
    """The new order for the methods that keep every face."""
    col = lambda name: face_stats.column(fs, name)  # noqa: E731
    if method == "blur":
        return descending(col("blur"))
    if method == "face-yaw":
        return descending(col("pose")[:, 1])
    if method == "face-pitch":
        return descending(col("pose")[:, 0])
    if method == "source-rect-size":
        return descending(face_stats.source_rect_areas(fs))
    if method == "origname":
        return origname_order(fs)
    if method == "hist":
        return hist_chain(face_stats.channel_histogram_counts(fs, progress=progress))
    if method == "hist-dissim":
        counts = face_stats.masked_grey_histogram_counts(fs, progress=progress)
        return descending(histograms.dissimilarity(histograms.sqrt_normalised(counts.astype(np.float64))))
    if method == "motion-blur":
        return descending(face_stats.scan(fs, ["faces", "masks"],
                                          lambda b: face_stats.motion_blur(b["faces"], b["masks"]),
                                          desc="motion blur", progress=progress))
    if method in ("brightness", "hue"):
        channel = 2 if method == "brightness" else 0  # V or H of HSV
        return descending(face_stats.scan(fs, ["faces"], lambda b: face_stats.hsv_means(b["faces"])[:, channel],
                                          desc=method, progress=progress))
    assert method == "black"
    zeros = face_stats.scan(fs, ["faces"], lambda b: (b["faces"] == 0).sum(axis=(1, 2, 3)),
                            desc="black", progress=progress)
    return np.argsort(zeros, kind="stable")  # fewest black components first


def sort_faces(fs: Faceset, method: str, *, target: int = 2000, progress: bool = True) -> Ordering:
    """The ordering that `method` (one of METHODS) gives the faces of `fs`."""
    if method not in METHODS:
        raise UserError(f"{fs.path}: unknown sort method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "oneface":
        return oneface(fs)
    if method in ("final", "final-fast"):
        from preprocessing.faceset.best_faces import best_faces  # it builds on this module

        return best_faces(fs, target=target, by_rect_size=(method == "final-fast"), progress=progress)
    return Ordering(_reorder(fs, method, progress), np.zeros(0, np.int64))
