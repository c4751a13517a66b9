"""The detector backend interface shared by every face detector + landmarker."""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


@dataclasses.dataclass
class DetectedFace:
    """One face found in a frame; every coordinate is in frame pixels (x, y)."""

    box: np.ndarray  # float32 [4]: x0, y0, x1, y1
    score: float  # detector confidence in [0, 1]
    landmarks: np.ndarray  # float32 [68, 2], iBUG-68 order
    dense: np.ndarray | None = None  # float32 [K, 2] dense points (FaceMesh: K = 468) or None

    @property
    def size(self) -> float:
        """Longer side of the box, in pixels (what --min_face_size compares against)."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class Detector(Protocol):
    """A face detector + 68-point landmarker. Images are RGB uint8 [H, W, 3]."""

    name: str

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in the image, largest first."""
        ...
