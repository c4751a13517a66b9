"""Face types: how much of the head an aligned crop holds (DFL_SPEC §1.5).

The integer order matters ("a larger type contains the smaller ones"), the strings are the ones
DeepFaceLab writes in its metadata and our manifests store, and `padding`/`centre` define the crop
square in the normalised mean-face space.
"""
from __future__ import annotations

import enum


class FaceType(enum.IntEnum):
    HALF = 0
    MID_FULL = 1
    FULL = 2
    FULL_NO_ALIGN = 3
    WHOLE_FACE = 4
    HEAD = 10
    HEAD_NO_ALIGN = 20
    MARK_ONLY = 100

    @property
    def dfl_name(self) -> str:
        """The string DFL stores in metadata (and we store in manifest.json)."""
        return _DFL_NAMES[self]

    @property
    def padding(self) -> float:
        return _PADDING[self]

    @property
    def remove_align(self) -> bool:
        """True for the *_NO_ALIGN types: the crop square is axis-aligned, not rotated."""
        return self in (FaceType.FULL_NO_ALIGN, FaceType.HEAD_NO_ALIGN)

    @classmethod
    def from_flag(cls, value: str) -> "FaceType":
        """Parses a CLI value (`half|mid_full|full|whole_face|head`) or a DFL metadata string."""
        key = value.strip().lower()
        if key in _FLAG_NAMES:
            return _FLAG_NAMES[key]
        for ft, name in _DFL_NAMES.items():
            if name == key:
                return ft
        choices = ", ".join(sorted(_FLAG_NAMES))
        raise ValueError(f"unknown face type {value!r}; choose one of {choices}")

    @classmethod
    def from_dfl_name(cls, name: str | None) -> "FaceType":
        """DFL metadata string -> FaceType; DFL treats a missing value as full_face."""
        if name is None:
            return cls.FULL
        return cls.from_flag(name)


_DFL_NAMES = {
    FaceType.HALF: "half_face",
    FaceType.MID_FULL: "midfull_face",
    FaceType.FULL: "full_face",
    FaceType.FULL_NO_ALIGN: "full_face_no_align",
    FaceType.WHOLE_FACE: "whole_face",
    FaceType.HEAD: "head",
    FaceType.HEAD_NO_ALIGN: "head_no_align",
    FaceType.MARK_ONLY: "mark_only",
}

_PADDING = {
    FaceType.HALF: 0.0,
    FaceType.MID_FULL: 0.0675,
    FaceType.FULL: 0.2109375,
    FaceType.FULL_NO_ALIGN: 0.2109375,
    FaceType.WHOLE_FACE: 0.40,
    FaceType.HEAD: 0.70,
    FaceType.HEAD_NO_ALIGN: 0.70,
    FaceType.MARK_ONLY: 0.0,
}

# CLI spellings accepted by --face_type (the issue fixes these five).
_FLAG_NAMES = {
    "half": FaceType.HALF,
    "mid_full": FaceType.MID_FULL,
    "full": FaceType.FULL,
    "whole_face": FaceType.WHOLE_FACE,
    "head": FaceType.HEAD,
}
