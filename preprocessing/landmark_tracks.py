"""Follows faces from frame to frame so each one's landmarks can be smoothed over time.

Detections of consecutive frames are matched greedily by box centre (a face moves less than half
its size between frames); each track owns a `LandmarkSmoother`. Tracks without a match end, new
faces start new tracks.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from preprocessing.detect import DetectedFace
from preprocessing.smoothing import LandmarkSmoother


def _centre(face: DetectedFace) -> np.ndarray:
    return (np.asarray(face.box[:2], np.float64) + np.asarray(face.box[2:], np.float64)) / 2


class LandmarkTracks:
    """Smooths the 68 (and dense) landmarks of every face across a video's frames."""

    def __init__(self, **smoother_options: float):
        self._options = smoother_options
        self._tracks: list[tuple[np.ndarray, LandmarkSmoother]] = []

    def smooth(self, t: float, faces: list[DetectedFace]) -> list[DetectedFace]:
        """Smoothed copies of this frame's faces (`t` = frame time in seconds, increasing)."""
        free = list(range(len(self._tracks)))
        tracks, out = [], []
        for face in faces:
            c = _centre(face)
            dists = [np.linalg.norm(self._tracks[i][0] - c) for i in free]
            j = int(np.argmin(dists)) if dists else -1
            if j >= 0 and dists[j] < 0.5 * face.size:
                smoother = self._tracks[free.pop(j)][1]
            else:
                smoother = LandmarkSmoother(**self._options)
            points = face.landmarks if face.dense is None else np.concatenate([face.landmarks, face.dense])
            smoothed = smoother.update(points, t).astype(np.float32)
            dense = None if face.dense is None else smoothed[68:]
            out.append(dataclasses.replace(face, landmarks=smoothed[:68], dense=dense))
            tracks.append((c, smoother))
        self._tracks = tracks
        return out
