"""MediaPipe FaceMesh: 468 face landmarks from a rotated square crop (region of interest, ROI).

The mesh network expects an upright face filling most of a 192x192 crop. The first ROI comes
from a BlazeFace detection (1.5x the box, turned so the eye keypoints are level); a second pass
rebuilds the ROI from the first pass's own points, which centres and levels the face much better
(on a 3/4 view this halves the eye error; a sideways face may need a third or fourth pass). The
same `roi_from_points` seeds frame-to-frame tracking. The network also returns a "face present"
logit, used to reject false detections.

Coordinates are frame pixels with pixel centres on integer coordinates (OpenCV's convention).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from preprocessing.detect.tflite import TfliteNet, sigmoid

INPUT_SIZE = 192
ROI_SCALE = 1.5
_EYE_CORNERS = (33, 263)  # mesh indices of the subject's right and left outer eye corners


@dataclasses.dataclass(frozen=True)
class Roi:
    """A rotated square in the frame: centre (pixels), side (pixels) and angle (radians).

    `angle` is the direction of the crop's x axis in the image (y points down, so a positive angle
    turns clockwise on screen); it is the angle of the line from the right eye to the left eye.
    """

    cx: float
    cy: float
    size: float
    angle: float


def roi_from_eyes(box: np.ndarray, right_eye: np.ndarray, left_eye: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """ROI around a detector box: its centre, `scale` x its longer side, levelled on the eyes."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = (np.asarray(left_eye, np.float64) - np.asarray(right_eye, np.float64))
    return Roi((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * scale, float(np.arctan2(dy, dx)))


def roi_from_points(points: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """ROI around 468 mesh points: their bounding square in the eye-levelled frame, times `scale`."""
    points = np.asarray(points, np.float64)
    dx, dy = points[_EYE_CORNERS[1]] - points[_EYE_CORNERS[0]]
    angle = float(np.arctan2(dy, dx))
    rotation = _rotation(angle)
    upright = points @ rotation  # coordinates along the crop's own axes
    low, high = upright.min(0), upright.max(0)
    cx, cy = rotation @ ((low + high) / 2)
    return Roi(float(cx), float(cy), float((high - low).max() * scale), angle)


class FaceMesh:
    """The 468-point FaceMesh network with its crop and un-crop geometry."""

    def __init__(self) -> None:
        self._net = TfliteNet("face_landmark.tflite")

    def run(self, image: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """One mesh pass on an RGB uint8 image: (points float32 [468, 2] in frame pixels, presence in [0, 1])."""
        crop_to_frame = crop_matrix(roi)
        crop = cv2.warpAffine(image, crop_to_frame, (INPUT_SIZE, INPUT_SIZE),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        blob = cv2.dnn.blobFromImage(crop, 1 / 255.0, swapRB=False)
        outputs = self._net(blob)
        mesh = next(o for o in outputs if o.size == 468 * 3).reshape(468, 3)
        presence_logit = float(next(o for o in outputs if o.size == 1).ravel()[0])
        # The network answers in crop "edge" coordinates (0..192 spans the crop); -0.5 gives pixel centres.
        points = (mesh[:, :2] - 0.5) @ crop_to_frame[:, :2].T + crop_to_frame[:, 2]
        return points.astype(np.float32), float(sigmoid(presence_logit))

    def refine(self, image: np.ndarray, roi: Roi, min_passes: int = 2, max_passes: int = 4,
               min_presence: float = 0.0) -> tuple[np.ndarray, float]:
        """Mesh passes, each on the ROI rebuilt from the previous pass's points, until that ROI settles.

        Two passes suffice for upright faces; a face turned sideways gets a poor first ROI (BlazeFace's
        eye keypoints are then 20-45 degrees off) and needs up to four. Returns the last points and
        the *lowest* presence of all passes: a false detection can score low on its first pass yet
        high on a later pass that the first one distorted. Stops once a pass scores below `min_presence`.
        """
        points, presence = self.run(image, roi)
        for done in range(1, max_passes):
            next_roi = roi_from_points(points)
            if presence < min_presence or (done >= min_passes and _settled(roi, next_roi)):
                break
            roi = next_roi
            points, next_presence = self.run(image, roi)
            presence = min(presence, next_presence)
        return points, presence


def crop_matrix(roi: Roi) -> np.ndarray:
    """2x3 affine taking crop pixel centres to frame pixel centres (for cv2.WARP_INVERSE_MAP).

    The crop's centre point (INPUT_SIZE / 2 in edge coordinates) lands on the ROI centre, its x axis
    along `roi.angle`, and INPUT_SIZE crop pixels span `roi.size` frame pixels.
    """
    linear = _rotation(roi.angle) * (roi.size / INPUT_SIZE)
    half = (INPUT_SIZE - 1) / 2  # the crop centre in pixel-centre coordinates
    shift = np.array([roi.cx, roi.cy]) - linear @ np.array([half, half])
    return np.hstack([linear, shift[:, None]])


def _settled(old: Roi, new: Roi) -> bool:
    """True when another pass would barely move the ROI (under 5 degrees and 5% of its size; on
    carphone the second pass moves it at most 1.5 degrees and 2%)."""
    turn = abs((new.angle - old.angle + np.pi) % (2 * np.pi) - np.pi)
    shift = np.hypot(new.cx - old.cx, new.cy - old.cy)
    return bool(turn < np.deg2rad(5) and shift < 0.05 * old.size)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])
