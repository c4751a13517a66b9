"""Optional backend: dlib's HOG face detector + its 68-point shape predictor (exact iBUG-68 layout).

LICENCE WARNING: `shape_predictor_68_face_landmarks.dat` was trained on the iBUG 300-W data set,
whose terms exclude commercial use (the face-recognition-models package labels the file CC0, but
the training data's terms still apply). This backend is therefore an opt-in extra:
  pip install 'faceswap-jax[dlib]'   (dlib-bin + face-recognition-models)

Compared with the default BlazeFace + FaceMesh backend it is most accurate on small, old,
frontal photos, worse on 3/4 views, has ~3x more frame-to-frame jitter and no dense points.
The HOG detector costs 20-90 ms per 512 px image; it needs `upsample=1` for faces under ~80 px.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from preprocessing.detect import largest_first
from preprocessing.detect.base import DetectedFace
from preprocessing.errors import UserError

_INSTALL_HINT = "dlib backend needs: pip install 'faceswap-jax[dlib]' (dlib-bin and face-recognition-models)"
_PREDICTOR_FILE = os.path.join("models", "shape_predictor_68_face_landmarks.dat")


def face_recognition_model(filename: str, install_hint: str = _INSTALL_HINT) -> str:
    """Path of a model file inside the face-recognition-models package (found without importing it:
    its __init__ needs pkg_resources, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{install_hint}; missing: face-recognition-models")
    path = os.path.join(next(iter(spec.submodule_search_locations)), filename)
    if not os.path.isfile(path):
        raise UserError(f"{path}: file missing; reinstall face-recognition-models ({install_hint})")
    return path


class DlibDetector:
    """dlib HOG detector + 68-point predictor behind the `Detector` interface.

    Args:
      min_face_size: drop faces whose box's longer side is below this (pixels).
      max_faces: keep at most this many faces, largest first (0 = all).
      upsample: times dlib doubles the image before detecting (1 finds faces from ~40 px).
    `score` is the logistic of the HOG detector's SVM margin, so it lies in [0, 1] like BlazeFace's.
    """

    name = "dlib"

    def __init__(self, *, min_face_size: float = 0, max_faces: int = 0, upsample: int = 1):
        try:
            import dlib
        except ImportError as e:
            raise UserError(f"{_INSTALL_HINT}; missing: dlib") from e
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(face_recognition_model(_PREDICTOR_FILE))
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.upsample = upsample

    def detect(self, image: np.ndarray, previous: list[DetectedFace] | None = None) -> list[DetectedFace]:
        """Faces in an RGB uint8 [H, W, 3] image, largest box first.

        dlib has no tracking; `previous` is accepted and ignored so callers can treat backends alike.
        """
        del previous
        image = np.ascontiguousarray(image)
        rects, margins, _ = self._detector.run(image, self.upsample, 0.0)
        faces = []
        for rect, margin in zip(rects, margins, strict=True):
            shape = self._predictor(image, rect)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
            faces.append(DetectedFace(box=box, score=float(1 / (1 + np.exp(-margin))), landmarks=landmarks))
        return largest_first(faces, self.min_face_size, self.max_faces)
