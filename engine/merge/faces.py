"""The dst faces of one input, by frame: landmarks, motion, optional temporal smoothing.

The merge reads only the small per-face records of the dst faceset (not its images): the frame
landmarks define every crop (DFL_SPEC §4.3), so a faceset extracted at any size and face type
serves a model of any resolution and face type. The faceset must come from the same input: its
manifest names each source's sha256 and frame count, and a mismatch is refused, because merging a
faceset onto another video pastes faces in the wrong places.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.merge.geometry import motion
from preprocessing.errors import UserError
from preprocessing.faceset import Faceset
from preprocessing.images import Source
from preprocessing.smoothing import LandmarkSmoother

_RECORDS = ("source_id", "frame_index", "face_index", "source_landmarks")


class Face(NamedTuple):
    face_index: int
    landmarks: np.ndarray  # float64 [68, 2], frame pixels
    motion: tuple[float, float]  # (px, degrees) from frame i-1 to i+1; (0, 0) with several faces


class FaceTable:
    """Faces per frame index (each frame's faces in face_index order)."""

    def __init__(self, by_frame: dict[int, list[Face]]):
        self._by_frame = by_frame

    @classmethod
    def from_faceset(cls, faceset: Faceset, source: Source, smooth: bool = False) -> "FaceTable":
        source_id = match_source(faceset, source)
        rows = faceset.read_many(_RECORDS, np.arange(faceset.count)) if faceset.count else {
            name: np.zeros((0,)) for name in _RECORDS}
        keep = rows["source_id"] == source_id
        raw: dict[int, dict[int, np.ndarray]] = {}
        for frame, face, lm in zip(rows["frame_index"][keep], rows["face_index"][keep],
                                   rows["source_landmarks"][keep]):
            raw.setdefault(int(frame), {})[int(face)] = lm.astype(np.float64)
        if smooth:
            _smooth(raw, source.fps or 25.0)
        single = all(len(faces) == 1 for faces in raw.values())
        by_frame = {}
        for frame, faces in raw.items():
            by_frame[frame] = [
                Face(face, lm, _motion_at(raw, frame) if single else (0.0, 0.0))
                for face, lm in sorted(faces.items())]
        return cls(by_frame)

    def faces_of(self, frame: int) -> list[Face]:
        return self._by_frame.get(frame, [])

    @property
    def frames_with_faces(self) -> list[int]:
        return sorted(self._by_frame)

    def __len__(self) -> int:
        return sum(len(f) for f in self._by_frame.values())


def match_source(faceset: Faceset, source: Source) -> int:
    """The index of `source` among the faceset's sources, by content hash and frame count."""
    digest = source.content_hash()
    for n, entry in enumerate(faceset.sources):
        if entry.get("sha256") == digest:
            if entry.get("frames") not in (None, source.frame_count):
                raise UserError(f"{faceset.path}: was extracted from {entry.get('frames')} frames of "
                                f"{entry.get('name')}, but {source.path} has {source.frame_count}")
            return n
    names = ", ".join(str(e.get("name")) for e in faceset.sources) or "nothing"
    raise UserError(f"{faceset.path}: was extracted from {names}, not from {source.path} "
                    "(content differs); extract a faceset from this input first")


def _motion_at(raw: dict[int, dict[int, np.ndarray]], frame: int) -> tuple[float, float]:
    prev, nxt = raw.get(frame - 1), raw.get(frame + 1)
    return motion(next(iter(prev.values())) if prev else None, next(iter(nxt.values())) if nxt else None)


def _smooth(raw: dict[int, dict[int, np.ndarray]], fps: float) -> None:
    """One-Euro smoothing of each face_index's landmarks over time, in place (see smoothing.py)."""
    smoothers: dict[int, LandmarkSmoother] = {}
    for frame in sorted(raw):
        for face, lm in raw[frame].items():
            smoother = smoothers.setdefault(face, LandmarkSmoother())
            raw[frame][face] = smoother.update(lm, frame / fps)
