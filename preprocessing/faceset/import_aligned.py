"""`import`: a folder of already aligned face images without metadata -> a new faceset.

Such folders come from other tools or from hand-cropped photos. Each image is its own "frame":
the detector runs on it to find the 68 landmarks, so face pixels and frame pixels coincide and
the frame->face matrix is just the scale from the image to the output size. Masks, pose and
sharpness are derived like extraction's. Images without a face, unreadable or not square, are
skipped with a warning; mask images that `export --masks` writes next to the faces
(`<name>_mask.<ext>`) are left out quietly. The face type is the user's statement of how the images were cropped.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time

import cv2
import numpy as np
from tqdm import tqdm

from preprocessing.detect import create_detector
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset.derived import derived_arrays
from preprocessing.faceset.subset import check_new_output, publish, staging_folder
from preprocessing.faceset.writer import FacesetWriter
from preprocessing.images import open_source, read_image

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ImportAlignedSummary:
    output: str
    images: int  # face images looked at (mask images left out)
    faces: int
    skipped: list[str]  # "name: reason"
    seconds: float

    def line(self) -> str:
        return (f"import: {self.faces} faces from {self.images} aligned images in {self.seconds:.1f}s "
                f"({len(self.skipped)} skipped) -> {self.output}")


def aligned_face_arrays(rgb: np.ndarray, face, size: int) -> dict[str, np.ndarray]:
    """One aligned image and its detection -> the faceset arrays of that face (leading axis 1)."""
    scale = size / rgb.shape[1]
    crop = rgb if rgb.shape[1] == size else cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LANCZOS4)
    landmarks = (np.asarray(face.landmarks, np.float64) * scale)[None]
    dense = [None if face.dense is None else np.asarray(face.dense, np.float64) * scale]
    return {
        "faces": crop[None],
        "landmarks": landmarks.astype(np.float32),
        "source_landmarks": np.asarray(face.landmarks, np.float32)[None],
        "matrices": np.array([[[scale, 0.0, 0.0], [0.0, scale, 0.0]]], np.float32),
        "source_rects": np.asarray(face.box, np.float32)[None],
        "score": np.array([face.score], np.float32),
        **derived_arrays(crop[None], landmarks, size, dense),
    }


def import_aligned(input_dir: str, output: str, *, face_type: FaceType | None = None, size: int = 256,
                   detector: str = "blazeface", progress: bool = True) -> ImportAlignedSummary:
    """Writes the faces found in the aligned images of `input_dir` as a new faceset at `output`."""
    start = time.time()
    face_type = FaceType.WHOLE_FACE if face_type is None else FaceType(face_type)
    if size < 16:
        raise UserError(f"{input_dir}: --size must be at least 16, got {size}")
    source = open_source(input_dir)
    if source.kind != "images":
        raise UserError(f"{input_dir}: not a folder of images")
    check_new_output(output, not_same_as=input_dir)
    try:
        find_faces = create_detector(detector)
    except ValueError as e:
        raise UserError(f"--detector: {e}") from None
    staging = staging_folder(output)
    skipped: list[str] = []
    faces = 0
    producer = {"program": "preprocessing.faceset import", "detector": detector,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        with FacesetWriter(staging, size=size, face_type=face_type, producer=producer) as writer:
            sid = writer.add_source(source.describe())
            for index, path in enumerate(tqdm(source.files, desc="import", unit="image", disable=not progress)):
                name = os.path.basename(path)
                if os.path.splitext(name)[0].endswith("_mask"):
                    continue
                arrays, reason = _one_image(path, find_faces, size)
                if reason:
                    log.warning("%s: %s; skipped", path, reason)
                    skipped.append(f"{name}: {reason}")
                    continue
                writer.add_frame(sid, index, arrays)
                faces += 1
        if not faces:
            raise UserError(f"{input_dir}: no face found in any of the {len(source.files)} images")
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportAlignedSummary(output, faces + len(skipped), faces, skipped, time.time() - start)


def _one_image(path: str, find_faces, size: int) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """(arrays, None) for an image with a face, else (None, why it is skipped)."""
    try:
        rgb = read_image(path)
    except UserError as e:
        return None, str(e).split(": ", 1)[-1]
    h, w = rgb.shape[:2]
    if h != w:
        return None, f"{w}x{h} is not square (aligned faces are)"
    found = find_faces.detect(rgb)
    if not found:
        return None, "no face found"
    return aligned_face_arrays(rgb, found[0], size), None
