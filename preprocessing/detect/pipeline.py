"""The default detector: BlazeFace boxes -> FaceMesh 468 points (2-4 passes) -> 68 iBUG landmarks.

Per frame (all steps documented in FACE_MODELS.md):
1. BlazeFace full range on the letterboxed frame, plus on overlapping tiles when the frame is
   large (`tiling`), merged by weighted NMS; short range only when that finds nothing.
2. FaceMesh on each detection's eye-levelled ROI, then again on the ROI of its own points until
   that ROI settles (`FaceMesh.refine`). Detections whose mesh "face present" score (lowest over
   the passes) is below `presence_threshold` (0.5, MediaPipe's tracking default) are dropped: on
   lfw_subset (protocol in tests/test_detect.py) all 100 faces score >= 0.82 (median 0.9999999),
   while 25 of the 26 non-faces that BlazeFace reports score < 0.5 (median 6e-5).
3. If nothing is found, the frame is searched again rotated by 90, 270 and 180 degrees
   (DeepFaceLab's order) and the results are mapped back to the original frame. Only the upright
   pass uses tiles: sideways footage rarely has tiny faces, and a face-less 1080p frame then
   costs 16 detector runs (~130 ms) instead of 40. FaceMesh's rotated ROI already copes with
   faces tilted at any angle once BlazeFace has found them, which it often does even at 90 degrees.

Tracking (optional): `detect(image, previous=faces_of_the_previous_frame)` skips the detector and
runs one mesh pass per face on the ROI of its previous points; it re-detects when a face's
presence drops below the threshold and at least every `redetect_every` frames. On a talking-head
clip this costs one mesh pass (~3-4 ms) per face instead of detector + two passes.
"""
from __future__ import annotations

import cv2
import numpy as np

from preprocessing.detect import largest_first
from preprocessing.detect.base import DetectedFace
from preprocessing.detect.blazeface import BlazeFace, Detection, box_iou, weighted_nms
from preprocessing.detect.facemesh import FaceMesh, roi_from_eyes, roi_from_points
from preprocessing.detect.mesh68 import mesh_to_ibug68
from preprocessing.detect.tiling import AUTO_TILES_ABOVE, tile_grid

SEARCH_ROTATIONS = (0, 90, 270, 180)
"""Clockwise degrees tried in order until a face is found (DeepFaceLab's order)."""

_CV2_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_TILE_MODES = ("auto", "on", "off")
_DUPLICATE_IOU = 0.5  # two meshes whose point boxes overlap this much are the same face


class BlazeFaceMeshDetector:
    """BlazeFace + FaceMesh detector; see the module docstring for the steps.

    Args:
      score_threshold: BlazeFace score a detection needs (MediaPipe's default 0.5).
      min_face_size: drop faces whose detector box's longer side is below this (pixels).
      max_faces: keep at most this many faces, largest first (0 = all).
      tiles: "auto" (tile frames longer than AUTO_TILES_ABOVE px), "on" or "off".
      rotations: search the frame rotated by 90/270/180 degrees when nothing is found upright.
      presence_threshold: minimum FaceMesh "face present" score.
      redetect_every: in tracking mode, run the detector at least every this many frames.
      num_threads: if given, calls cv2.setNumThreads(num_threads), which is process-wide; pass 1
        when running one detector per worker process, leave None otherwise.
    """

    name = "blazeface"

    def __init__(self, *, score_threshold: float = 0.5, min_face_size: float = 0, max_faces: int = 0,
                 tiles: str = "auto", rotations: bool = True, presence_threshold: float = 0.5,
                 redetect_every: int = 10, num_threads: int | None = None):
        if tiles not in _TILE_MODES:
            raise ValueError(f"tiles must be one of {_TILE_MODES}, got {tiles!r}")
        if num_threads is not None:
            cv2.setNumThreads(num_threads)
        self._full_range = BlazeFace("full", score_threshold)
        self._short_range = BlazeFace("short", score_threshold)
        self._mesh = FaceMesh()
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.tiles = tiles
        self.rotations = rotations
        self.presence_threshold = presence_threshold
        self.redetect_every = redetect_every
        self._frames_since_detection = 0

    def detect(self, image: np.ndarray, previous: list[DetectedFace] | None = None) -> list[DetectedFace]:
        """Faces in an RGB uint8 [H, W, 3] image, largest box first.

        `previous` (the faces this detector returned for the previous frame) turns on tracking.
        """
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {getattr(image, 'dtype', type(image))} "
                             f"{getattr(image, 'shape', '')}")
        faces = None
        if previous and self._frames_since_detection + 1 < self.redetect_every:
            faces = self._track(image, previous)
        if faces is None:
            faces = self._search(image)
            self._frames_since_detection = 0
        else:
            self._frames_since_detection += 1
        return largest_first(faces, self.min_face_size, self.max_faces)

    def _search(self, image: np.ndarray) -> list[DetectedFace]:
        """Full detection, trying the rotations in order until one finds a face."""
        for degrees in SEARCH_ROTATIONS if self.rotations else (0,):
            rotated = cv2.rotate(image, _CV2_ROTATIONS[degrees]) if degrees else image
            faces = self._search_upright(rotated, tiled=degrees == 0)
            if faces:
                return [_unrotate_face(f, degrees, image.shape) for f in faces]
        return []

    def _search_upright(self, image: np.ndarray, tiled: bool) -> list[DetectedFace]:
        """Full range (+ tiles if `tiled`), then short range if the full-range model found no face."""
        faces = self._landmark(image, self._detect_full_range(image, tiled))
        return faces or self._landmark(image, self._short_range.detect(image))

    def _detect_full_range(self, image: np.ndarray, tiled: bool) -> list[Detection]:
        """Full-range detections on the whole frame, merged with those on the tiles it owns."""
        detections = self._full_range.detect(image)
        h, w = image.shape[:2]
        if tiled and (self.tiles == "on" or (self.tiles == "auto" and max(h, w) > AUTO_TILES_ABOVE)):
            grid = tile_grid(h, w)
            if len(grid) > 1:
                for tile in grid:
                    for d in self._full_range.detect(image[tile.y0:tile.y1, tile.x0:tile.x1]):
                        d = _shifted(d, tile.x0, tile.y0)
                        if tile.owns((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2):
                            detections.append(d)
                detections = weighted_nms(detections, self._full_range.iou_threshold)
        return detections

    def _landmark(self, image: np.ndarray, detections: list[Detection]) -> list[DetectedFace]:
        """Meshes for the detections big enough to keep, best score first; drops low presence and duplicates."""
        faces = []
        for d in sorted(detections, key=lambda d: -d.score):
            if max(d.box[2] - d.box[0], d.box[3] - d.box[1]) < self.min_face_size:
                continue
            roi = roi_from_eyes(d.box, d.keypoints[0], d.keypoints[1])
            points, presence = self._mesh.refine(image, roi, min_presence=self.presence_threshold)
            if presence >= self.presence_threshold and not _is_duplicate(points, faces):
                faces.append(_make_face(d.box, d.score, points))
        return faces

    def _track(self, image: np.ndarray, previous: list[DetectedFace]) -> list[DetectedFace] | None:
        """One mesh pass per previous face; None (= detect afresh) if any face is lost."""
        faces = []
        for prev in previous:
            if prev.dense is None or len(prev.dense) != 468:
                return None
            points, presence = self._mesh.run(image, roi_from_points(prev.dense))
            if presence < self.presence_threshold or _is_duplicate(points, faces):
                return None
            faces.append(_make_face(_moved_box(prev.box, prev.dense, points), prev.score, points))
        return faces


def _make_face(box: np.ndarray, score: float, points: np.ndarray) -> DetectedFace:
    return DetectedFace(box=np.asarray(box, np.float32), score=float(score),
                        landmarks=mesh_to_ibug68(points), dense=np.asarray(points, np.float32))


def _points_box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


def _is_duplicate(points: np.ndarray, faces: list[DetectedFace]) -> bool:
    if not faces:
        return False
    others = np.stack([_points_box(f.dense) for f in faces])
    return bool((box_iou(_points_box(points), others) > _DUPLICATE_IOU).any())


def _moved_box(box: np.ndarray, old_points: np.ndarray, new_points: np.ndarray) -> np.ndarray:
    """The detector box carried along with the mesh: same offset from, and scale relative to, the points."""
    old_centre, new_centre = old_points.mean(0), new_points.mean(0)
    scale = np.sqrt(((new_points - new_centre) ** 2).sum(1).mean() / ((old_points - old_centre) ** 2).sum(1).mean())
    corners = np.asarray(box, np.float64).reshape(2, 2)
    return ((corners - old_centre) * scale + new_centre).reshape(4).astype(np.float32)


def _shifted(d: Detection, dx: float, dy: float) -> Detection:
    offset = np.array([dx, dy], np.float32)
    return Detection(box=d.box + np.tile(offset, 2), keypoints=d.keypoints + offset, score=d.score)


def unrotate_points(points: np.ndarray, degrees: int, shape: tuple[int, ...]) -> np.ndarray:
    """Points found in the frame rotated clockwise by `degrees` -> original frame pixels."""
    h, w = shape[:2]
    x, y = points[..., 0], points[..., 1]
    if degrees == 90:  # cv2.ROTATE_90_CLOCKWISE sent (x, y) to (h - 1 - y, x)
        x, y = y, h - 1 - x
    elif degrees == 180:
        x, y = w - 1 - x, h - 1 - y
    elif degrees == 270:  # cv2.ROTATE_90_COUNTERCLOCKWISE sent (x, y) to (y, w - 1 - x)
        x, y = w - 1 - y, x
    return np.stack([x, y], -1).astype(np.float32)


def _unrotate_face(face: DetectedFace, degrees: int, shape: tuple[int, ...]) -> DetectedFace:
    if degrees == 0:
        return face
    corners = unrotate_points(face.box.reshape(2, 2), degrees, shape)
    return DetectedFace(box=np.concatenate([corners.min(0), corners.max(0)]), score=face.score,
                        landmarks=unrotate_points(face.landmarks, degrees, shape),
                        dense=unrotate_points(face.dense, degrees, shape))
