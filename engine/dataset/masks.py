"""Manipulation masks and frame labels from the merge's mask output.

The merge writes its per-frame alpha (0 where the frame was left alone, up to 255 inside the
pasted face) as grey frames, usually in a lossy video. A pixel counts as manipulated where the
alpha is at least `threshold` (0.5: the swapped face outweighs the original there); a frame is
fake when any pixel is.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from preprocessing.errors import UserError
from preprocessing.images import Source


class MaskTrack:
    """Streams one mask output as bool [H, W] masks and records each frame's label (1: fake)."""

    def __init__(self, source: Source, size: tuple[int, int], threshold: float):
        self.source, self.size, self.threshold = source, size, threshold
        self.labels: list[int] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        cut = self.threshold * 255.0
        for index, _pts, image in self.source.iter_frames(0):
            if image is None:
                raise UserError(f"{self.source.path}: mask frame {index} is unreadable")
            if (image.shape[1], image.shape[0]) != self.size:
                raise UserError(f"{self.source.path}: mask frame {index} is {image.shape[1]}x{image.shape[0]}, "
                                f"the fake is {self.size[0]}x{self.size[1]}")
            mask = image.astype(np.float32).mean(axis=-1) >= cut  # grey written as RGB: the channels agree
            self.labels.append(int(mask.any()))
            yield mask
