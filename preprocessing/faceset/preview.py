"""`preview`: a contact sheet PNG of a faceset, the quickest way to eyeball an extraction.

Each tile is a thumbnail with a caption band under it ("#index", yaw in degrees and blur score);
optionally the landmarks are drawn and the mask (XSeg when the faceset has one, else the hull) is
tinted. When the faceset holds more faces than fit, the tiles are spread evenly over it, so the
sheet shows the whole run rather than its first seconds.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import cv2
import numpy as np

from preprocessing.errors import UserError
from preprocessing.faceset.reader import Faceset

CAPTION_HEIGHT = 26  # two lines of small text under each thumbnail
_MASK_TINT = np.array([0, 200, 0], np.float32)
_LANDMARK_COLOUR = (255, 60, 60)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclasses.dataclass
class PreviewSummary:
    output: str
    faces: int
    shape: tuple[int, int, int]
    seconds: float

    def line(self) -> str:
        h, w, _ = self.shape
        return f"preview: {self.faces} faces in a {w}x{h} sheet in {self.seconds:.1f}s -> {self.output}"


def sheet_shape(count: int, cols: int, thumb: int) -> tuple[int, int, int]:
    """(height, width, 3) of a sheet of `count` tiles: min(cols, count) per row."""
    cols = max(1, min(cols, count))
    rows = max(1, math.ceil(count / cols))
    return rows * (thumb + CAPTION_HEIGHT), cols * thumb, 3


def spread_indices(total: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over [0, total), first and last included."""
    if total <= count:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, count)).astype(np.int64))


def tile(face: np.ndarray, thumb: int, caption: tuple[str, str], *, landmarks: np.ndarray | None = None,
         mask: np.ndarray | None = None) -> np.ndarray:
    """One thumbnail (RGB uint8 [S, S, 3]) with its caption band -> [thumb + CAPTION_HEIGHT, thumb, 3]."""
    size = face.shape[0]
    interpolation = cv2.INTER_AREA if thumb < size else cv2.INTER_LINEAR
    img = cv2.resize(face, (thumb, thumb), interpolation=interpolation)
    if mask is not None:
        inside = cv2.resize(mask.reshape(size, size), (thumb, thumb), interpolation=cv2.INTER_LINEAR)
        alpha = (inside.astype(np.float32) / 255.0)[..., None] * 0.3
        img = np.clip(img * (1 - alpha) + _MASK_TINT * alpha + 0.5, 0, 255).astype(np.uint8)
    if landmarks is not None:
        for x, y in np.asarray(landmarks, np.float64) * (thumb / size):
            cv2.circle(img, (int(round(x)), int(round(y))), 1, _LANDMARK_COLOUR, -1, cv2.LINE_AA)
    band = np.full((CAPTION_HEIGHT, thumb, 3), 24, np.uint8)
    for line_no, text in enumerate(caption):
        cv2.putText(band, text, (3, 10 + 12 * line_no), _FONT, 0.33, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([img, band], axis=0)


def contact_sheet(tiles: list[np.ndarray], cols: int, thumb: int) -> np.ndarray:
    """Lays tiles out row by row on a black sheet of `sheet_shape(len(tiles), cols, thumb)`."""
    sheet = np.zeros(sheet_shape(len(tiles), cols, thumb), np.uint8)
    cols = max(1, min(cols, len(tiles)))
    h = thumb + CAPTION_HEIGHT
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * h:(r + 1) * h, c * thumb:(c + 1) * thumb] = t
    return sheet


def write_preview(fs: Faceset, output: str, *, max_faces: int = 64, cols: int = 8, thumb: int = 128,
                  show_landmarks: bool = False, show_masks: bool = False) -> PreviewSummary:
    """Writes the contact sheet of `fs` to the PNG file `output`."""
    start = time.time()
    if max_faces < 1 or cols < 1 or thumb < 8:
        raise UserError(f"{output}: need --max_faces >= 1, --cols >= 1 and --thumb_size >= 8")
    if not output.lower().endswith(".png"):
        raise UserError(f"{output}: the preview is a PNG; give a path ending in .png")
    if len(fs) == 0:
        raise UserError(f"{fs.path}: the faceset holds no faces")
    indices = spread_indices(len(fs), max_faces)
    mask_name = "xseg_masks" if "xseg_masks" in fs.array_names else "masks"
    names = ["faces", "landmarks", "pose", "blur"] + ([mask_name] if show_masks else [])
    data = fs.read_many(names, indices)
    tiles = []
    for k, index in enumerate(indices):
        yaw = round(math.degrees(float(data["pose"][k][1])))
        caption = (f"#{index}", f"yaw {yaw:+d} blur {float(data['blur'][k]):.3g}")
        tiles.append(tile(data["faces"][k], thumb, caption,
                          landmarks=data["landmarks"][k] if show_landmarks else None,
                          mask=data[mask_name][k] if show_masks else None))
    sheet = contact_sheet(tiles, cols, thumb)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    if not cv2.imwrite(output, np.ascontiguousarray(sheet[:, :, ::-1])):
        raise UserError(f"{output}: could not write the PNG")
    return PreviewSummary(output, len(indices), sheet.shape, time.time() - start)
