"""Which arrays a faceset holds: names, dtypes and per-face shapes (and the polygons file name).

The names are a contract with the extractor, the faceset tools, XSeg and the trainer, so they
live in one table. Images are [S, S, C] uint8; everything else is a small per-face record.
"""
from __future__ import annotations

import numpy as np

# Image arrays and their channel count; `xseg_*` are reserved for the XSeg stage (add_array).
IMAGE_CHANNELS = {
    "faces": 3,
    "masks": 1,
    "eyes_mouth_masks": 1,
    "xseg_labels": 1,
    "xseg_masks": 1,
}

# Per-face records: dtype and shape of one face's entry.
RECORD_SHAPES: dict[str, tuple[str, tuple[int, ...]]] = {
    "landmarks": ("float32", (68, 2)),         # face pixels
    "source_landmarks": ("float32", (68, 2)),  # frame pixels
    "matrices": ("float32", (2, 3)),           # frame -> face affine
    "source_rects": ("float32", (4,)),         # detector box x0, y0, x1, y1 in frame pixels
    "frame_index": ("int32", ()),
    "source_id": ("int32", ()),                # index into manifest["sources"]
    "face_index": ("int32", ()),               # face within its frame
    "score": ("float32", ()),
    "blur": ("float32", ()),
    "pose": ("float32", (3,)),                 # pitch, yaw, roll
    "xseg_labelled": ("uint8", ()),            # 1 = the face has XSeg polygons (in xseg_labels)
}

# Provenance: where each face came from. FacesetWriter stores them always; add_frame fills them
# from its arguments, add_faces (derived facesets) takes them from the caller.
WRITER_FILLED = ("frame_index", "source_id", "face_index")

# What the extractor writes; a FacesetWriter stores these unless told otherwise.
STANDARD_ARRAYS = (
    "faces", "masks", "eyes_mouth_masks", "landmarks", "source_landmarks", "matrices",
    "source_rects", "frame_index", "source_id", "face_index", "score", "blur", "pose",
)

RESERVED_ARRAYS = ("xseg_labels", "xseg_labelled", "xseg_masks")

# Hand-drawn XSeg polygons beside the arrays, in face pixels:
# {"<face index>": [{"type": 0|1, "pts": [[x, y], ...]}]}. Tools that reorder or resize faces
# re-key and transform it.
POLYGONS_FILE = "polygons.json"


def is_known(name: str) -> bool:
    return name in IMAGE_CHANNELS or name in RECORD_SHAPES


def dtype_and_face_shape(name: str, size: int) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and the shape of one face's entry for a known array name."""
    if name in IMAGE_CHANNELS:
        return np.dtype(np.uint8), (size, size, IMAGE_CHANNELS[name])
    if name in RECORD_SHAPES:
        dtype, shape = RECORD_SHAPES[name]
        return np.dtype(dtype), shape
    raise KeyError(f"unknown faceset array {name!r}")


def is_image(face_shape: tuple[int, ...]) -> bool:
    """Images ([S, S, C]) get one face per inner chunk; records get one chunk per shard."""
    return len(face_shape) == 3
