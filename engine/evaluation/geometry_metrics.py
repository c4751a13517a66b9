"""Landmark geometry metrics: head pose, expression and temporal jitter (as in face-swap papers).

Landmarks are iBUG-68 frame pixels [..., 68, 2]; a frame without a face is a row of NaNs, so the
per-frame arrays stay aligned with frame indices.
"""
from __future__ import annotations

import numpy as np

from preprocessing.align import umeyama
from preprocessing.pose import estimate_pitch_yaw_roll

LEFT_EYE, RIGHT_EYE = np.arange(36, 42), np.arange(42, 48)
EXPRESSION_POINTS = np.arange(36, 68)  # both eyes (36-47) and the mouth (48-67)


def head_pose_degrees(landmarks68: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """(pitch, yaw, roll) in degrees, float64 [3], of a face in a frame (signs as preprocessing.pose).

    The pinhole camera of `estimate_pitch_yaw_roll` puts its principal point at (size/2, size/2);
    the landmarks are shifted so that point is the frame's centre, where a real camera's is. Then
    rotating a frame about its centre changes the roll by exactly the rotation angle.
    """
    h, w = frame_hw
    size = float(max(h, w))
    centred = np.asarray(landmarks68, dtype=np.float64) + [(size - w) / 2.0, (size - h) / 2.0]
    return np.degrees(estimate_pitch_yaw_roll(centred, size).astype(np.float64))


def inter_ocular_distance(landmarks68: np.ndarray) -> np.ndarray:
    """Distance between the two eye centres, [...]: the scale every landmark error is divided by."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return np.linalg.norm(lm[..., LEFT_EYE, :].mean(-2) - lm[..., RIGHT_EYE, :].mean(-2), axis=-1)


def expression_error(swapped68: np.ndarray, original68: np.ndarray) -> float:
    """Mean distance of the eye and mouth points, in IODs of the original face, after the
    least-squares similarity (all 68 points) that best maps the swapped face onto the original:
    head position, size and in-plane rotation are factored out, what is left is expression."""
    swapped = np.asarray(swapped68, dtype=np.float64)
    original = np.asarray(original68, dtype=np.float64)
    m = umeyama(swapped, original)
    mapped = swapped @ m[:2, :2].T + m[:2, 2]
    distances = np.linalg.norm(mapped[EXPRESSION_POINTS] - original[EXPRESSION_POINTS], axis=-1)
    return float(distances.mean() / inter_ocular_distance(original))


def landmark_jitter(tracks: np.ndarray) -> float:
    """Mean frame-to-frame acceleration of the landmarks, in IODs per frame^2.

    tracks: [T, 68, 2] with NaN rows for frames without a face. For each run of three consecutive
    faces, |l[t+1] - 2 l[t] + l[t-1]| averaged over the points and divided by that frame's IOD;
    smooth head motion has little acceleration, detector noise a lot. NaN if no such run exists.
    """
    lm = np.asarray(tracks, dtype=np.float64)
    accel = lm[2:] - 2.0 * lm[1:-1] + lm[:-2]
    per_frame = np.linalg.norm(accel, axis=-1).mean(-1) / inter_ocular_distance(lm[1:-1])
    valid = per_frame[np.isfinite(per_frame)]
    return float(valid.mean()) if valid.size else float("nan")
