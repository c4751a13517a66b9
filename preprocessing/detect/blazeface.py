"""BlazeFace: MediaPipe's single-shot face detector (boxes + 6 keypoints), run through OpenCV.

Two models ship: *full range* (192 px input, one anchor per 4 px cell) finds small and group faces;
*short range* (128 px, anchors on 8 and 16 px grids) is tuned for faces close to the camera and
serves as the fallback. The frame is letterboxed to the square input, every anchor regresses a box
and keypoints relative to its centre, scores are sigmoids, and overlapping candidates are merged
by MediaPipe's *weighted* NMS (a score-weighted mean, which is steadier than keeping one box).

Coordinates returned are frame pixels with pixel centres on integer coordinates (OpenCV's
convention), so they can go straight into cv2.warpAffine.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from preprocessing.detect.tflite import TfliteNet, sigmoid

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
"""BlazeFace keypoint order; 'right' is the subject's right, i.e. the image's left on a frontal face."""


@dataclasses.dataclass
class Detection:
    """One BlazeFace detection in frame pixels."""

    box: np.ndarray  # float32 [4]: x0, y0, x1, y1
    keypoints: np.ndarray  # float32 [6, 2], KEYPOINT_NAMES order
    score: float


@dataclasses.dataclass(frozen=True)
class _ModelSpec:
    filename: str
    size: int
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]


_MODELS = {
    "full": _ModelSpec("face_detection_full_range.tflite", 192, (4,), (1,)),
    "short": _ModelSpec("face_detection_short_range.tflite", 128, (8, 16), (2, 6)),
}


def ssd_anchors(size: int, strides: tuple[int, ...], anchors_per_cell: tuple[int, ...]) -> np.ndarray:
    """Anchor centres [N, 2] (x, y) in [0, 1], row-major per grid, in the order the network emits them.

    BlazeFace anchors all have unit size (the regression is absolute), so only centres matter.
    """
    centres = []
    for stride, count in zip(strides, anchors_per_cell, strict=True):
        cells = -(-size // stride)
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, count, axis=0))
    return np.concatenate(centres).astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] against boxes [N, 4] (x0, y0, x1, y1)."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(detections: list[Detection], iou_threshold: float = 0.3) -> list[Detection]:
    """MediaPipe's weighted NMS: each cluster (IoU > threshold with its best member) becomes one
    detection whose box and keypoints are the score-weighted mean and whose score is the best one."""
    if not detections:
        return []
    boxes = np.stack([d.box for d in detections]).astype(np.float64)
    keypoints = np.stack([d.keypoints for d in detections]).astype(np.float64)
    scores = np.array([d.score for d in detections], np.float64)
    remaining = np.argsort(-scores, kind="stable")
    merged = []
    while remaining.size:
        best = remaining[0]
        in_cluster = box_iou(boxes[best], boxes[remaining]) > iou_threshold
        in_cluster[0] = True
        cluster, remaining = remaining[in_cluster], remaining[~in_cluster]
        weights = scores[cluster] / scores[cluster].sum()
        merged.append(Detection(
            box=np.einsum("n,nk->k", weights, boxes[cluster]).astype(np.float32),
            keypoints=np.einsum("n,nkc->kc", weights, keypoints[cluster]).astype(np.float32),
            score=float(scores[best]),
        ))
    return merged


class BlazeFace:
    """One BlazeFace model ("full" or "short" range) with its decoding.

    `detect(image)` takes an RGB uint8 [H, W, 3] image of any size and aspect.
    """

    def __init__(self, model: str = "full", score_threshold: float = 0.5, iou_threshold: float = 0.3):
        if model not in _MODELS:
            raise ValueError(f"unknown BlazeFace model {model!r}; expected one of {sorted(_MODELS)}")
        self._spec = _MODELS[model]
        self._net = TfliteNet(self._spec.filename)
        self._anchors = ssd_anchors(self._spec.size, self._spec.strides, self._spec.anchors_per_cell)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in the image after weighted NMS, best score first."""
        size = self._spec.size
        canvas, scale, offset = _letterbox(image, size)
        blob = cv2.dnn.blobFromImage(canvas, 1 / 127.5, (size, size), (127.5, 127.5, 127.5), swapRB=False)
        outputs = self._net(blob)
        logits, regression = sorted(outputs, key=lambda o: o.shape[-1])  # [1, N, 1] and [1, N, 16]
        scores = sigmoid(logits[0, :, 0])
        keep = np.flatnonzero(scores > self.score_threshold)
        if keep.size == 0:
            return []
        # Regression is in input pixels relative to the anchor centre: (cx, cy, w, h, 6 x (x, y)).
        reg = regression[0, keep] / size
        centre = reg[:, :2] + self._anchors[keep]
        half = reg[:, 2:4] / 2
        points = np.concatenate([centre - half, centre + half, reg[:, 4:] + np.tile(self._anchors[keep], 6)], 1)
        # Letterbox -> frame: normalised edge coordinates -> canvas px -> frame px, then to pixel centres.
        points = points.reshape(-1, 8, 2) * size
        points = (points - offset) / scale - 0.5
        candidates = [
            Detection(box=p[:2].reshape(4).astype(np.float32), keypoints=p[2:].astype(np.float32), score=float(s))
            for p, s in zip(points, scores[keep], strict=True)
        ]
        return weighted_nms(candidates, self.iou_threshold)


def _letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image scaled to fit a black size x size square, centred (MediaPipe's FIT mode).

    Returns the canvas, the per-axis scale (canvas px per frame px) and the top-left offset.
    """
    h, w = image.shape[:2]
    k = size / max(h, w)
    new_w, new_h = max(1, round(w * k)), max(1, round(h * k))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((size, size, 3), np.uint8)
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    canvas[y0:y0 + new_h, x0:x0 + new_w] = resized
    return canvas, np.array([new_w / w, new_h / h]), np.array([x0, y0], np.float64)
