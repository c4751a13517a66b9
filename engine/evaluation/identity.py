"""Identity embeddings: dlib's face-recognition ResNet (128-D), which ships offline in the
`face-recognition-models` package (the optional `[dlib]` extra, with `dlib-bin`).

LICENCE: Davis King released `dlib_face_recognition_resnet_model_v1.dat` into the public domain
(dlib-models README; face-recognition-models says the same and is itself MIT). It was trained on
about 3 million faces of 7485 identities from FaceScrub, VGG-Face and images scraped from the web;
those data sets are research collections, so check their terms before commercial use. The
embedding is used here only to measure, never inside the swap.

dlib aligns its own 150 px chip from a 68-point shape; we hand it our detector's iBUG-68 landmarks
(BlazeFace + FaceMesh by default), so no second landmark model runs. Embeddings are returned unit
length, so the dot product is the cosine similarity.
"""
from __future__ import annotations

import os

import numpy as np

from preprocessing.detect.dlib_backend import face_recognition_model
from preprocessing.errors import UserError

MODEL_FILE = os.path.join("models", "dlib_face_recognition_resnet_model_v1.dat")
MODEL_LICENCE = ("dlib_face_recognition_resnet_model_v1 (face-recognition-models 0.3.0): public domain "
                 "(Davis King); trained on FaceScrub, VGG-Face and web images - check their terms "
                 "for commercial use")
_INSTALL_HINT = "identity metrics need: pip install 'faceswap-jax[dlib]' (dlib-bin and face-recognition-models)"


class FaceEmbedder:
    """dlib's 128-D face descriptor for a face given by its 68 landmarks."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as e:
            raise UserError(f"{_INSTALL_HINT}; missing: dlib") from e
        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(face_recognition_model(MODEL_FILE, _INSTALL_HINT))

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """Unit-length float64 [128] embedding of the face at `landmarks68` (x, y pixels, iBUG
        order) in an RGB uint8 [H, W, 3] image."""
        lm = np.asarray(landmarks68, dtype=np.float64)
        if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
            raise ValueError(f"expected finite 68x2 landmarks, got shape {lm.shape}")
        (x0, y0), (x1, y1) = np.floor(lm.min(0)).astype(int), np.ceil(lm.max(0)).astype(int)
        shape = self._dlib.full_object_detection(
            self._dlib.rectangle(int(x0), int(y0), int(x1), int(y1)),
            [self._dlib.point(int(round(x)), int(round(y))) for x, y in lm])
        vector = np.asarray(self._model.compute_face_descriptor(np.ascontiguousarray(image), shape))
        return vector / np.linalg.norm(vector)


def faceset_identity(embedder: FaceEmbedder, faceset_path: str, samples: int = 16) -> np.ndarray:
    """One identity vector for a faceset: the renormalised mean embedding of up to `samples`
    faces spread evenly over it (deterministic, so reruns give the same numbers)."""
    from preprocessing.faceset import Faceset

    faceset = Faceset.open(faceset_path)
    if faceset.count == 0:
        raise UserError(f"{faceset_path}: faceset holds no faces")
    picks = np.unique(np.linspace(0, faceset.count - 1, min(samples, faceset.count)).round().astype(np.int64))
    rows = faceset.read_many(["faces", "landmarks"], picks)
    mean = np.mean([embedder.embed(face, lm) for face, lm in zip(rows["faces"], rows["landmarks"])], axis=0)
    return mean / np.linalg.norm(mean)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity over the last axis (leading axes broadcast)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
