"""Debug images for extraction: what the detector and the aligner saw on each frame.

Like DFL's `_debug` folder (DFL_SPEC §1.6): landmarks as polylines, the detector box, the crop
square and a small triangle on the crop's top-left corner, which shows the crop's rotation.
"""
from __future__ import annotations

import cv2
import numpy as np

from preprocessing.align import crop_square_in_frame

# iBUG-68 contours: (first index, last index, closed)
_CONTOURS = (
    (0, 16, False), (17, 21, False), (22, 26, False), (27, 30, False), (31, 35, False),
    (36, 41, True), (42, 47, True), (48, 59, True), (60, 67, True),
)


def draw_debug(frame_rgb: np.ndarray, faces: list[dict[str, np.ndarray]], size: int) -> np.ndarray:
    """A copy of the frame with every extracted face's landmarks, box and crop square drawn."""
    out = np.ascontiguousarray(frame_rgb.copy())
    thick = max(1, round(max(out.shape[:2]) / 500))
    for face in faces:
        pts = face["source_landmarks"]
        for a, b, closed in _CONTOURS:
            poly = np.round(pts[a : b + 1]).astype(np.int32)
            cv2.polylines(out, [poly], closed, (0, 255, 0), thick, cv2.LINE_AA)
        x0, y0, x1, y1 = np.round(face["source_rects"]).astype(int)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 0, 0), thick)
        square = crop_square_in_frame(face["matrices"].astype(np.float64), size)
        cv2.polylines(out, [np.round(square).astype(np.int32)], True, (0, 128, 255), thick)
        # A triangle inside the top-left corner, pointing along the top edge.
        tl, tr, bl = square[0], square[1], square[3]
        tri = np.stack([tl, tl + (tr - tl) * 0.15, tl + (bl - tl) * 0.15])
        cv2.fillConvexPoly(out, np.round(tri).astype(np.int32), (0, 128, 255))
    return out
