"""Head pose, sharpness score and landmark smoothing.

* pose: landmarks made by projecting our 3-D mean shape, rotated by known angles, through the same
  pinhole camera (focal = size, centre = size/2) with plain NumPy; the mirror image must negate yaw
  and roll; the documented signs are checked against where the nose lands in the image.
* blur_score: against a float64 reference Laplacian built from binomial kernels with SciPy.
* smoothing: jitter reduction, step response, resolution invariance and resets, in numbers.
"""
import math

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi

from preprocessing.pose import LANDMARKS_68_3D, estimate_pitch_yaw_roll
from preprocessing.sharpness import blur_score
from preprocessing.smoothing import LandmarkSmoother

# iBUG-68 left/right mirror pairs.
MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
)


def rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Camera-from-head rotation for the documented convention: Rz(roll) Ry(-yaw) Rx(-pitch)."""
    a, b, c = -pitch, -yaw, roll
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def project(pitch_deg: float, yaw_deg: float, roll_deg: float, size: int = 256, distance: float = 4.0) -> np.ndarray:
    """The 3-D mean shape posed and projected by a pinhole camera; the face spans ~60% of size."""
    r = rotation(*np.deg2rad([pitch_deg, yaw_deg, roll_deg]))
    cam = LANDMARKS_68_3D @ r.T + [0.0, 0.0, distance]
    return cam[:, :2] / cam[:, 2:] * size + size / 2


def test_mean_shape_is_mirror_symmetric_with_unit_iod():
    x = LANDMARKS_68_3D
    for a, b in MIRROR_PAIRS:
        np.testing.assert_allclose(x[a], x[b] * [-1, 1, 1], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(x[36:42].mean(0) - x[42:48].mean(0)), 1.0, atol=1e-3)
    assert x[30, 2] == x[:, 2].min()  # the nose tip is the point nearest the camera


@pytest.mark.parametrize(
    "angles",
    [(0, 0, 0), (0, 20, 0), (0, -20, 0), (15, 0, 0), (-15, 0, 0), (0, 0, 10), (0, 0, -10), (15, -20, 10), (-10, 35, -15)],
)
def test_pose_recovers_known_angles_within_one_degree(angles):
    est = np.rad2deg(estimate_pitch_yaw_roll(project(*angles), 256))
    assert est.dtype == np.float32 and est.shape == (3,)
    np.testing.assert_allclose(est, angles, atol=1.0)


@pytest.mark.parametrize("angles", [(0, 0, 0), (10, 0, 0), (0, 20, 0), (-10, -30, 5), (5, 10, -10), (0, 60, 0)])
def test_pose_of_orthographic_landmarks_does_not_flip_behind_the_camera(angles):
    """FaceMesh-like (near-orthographic) landmarks do not fit the pinhole model exactly; without a
    frontal start OpenCV returned roll ~170 deg with the head behind the camera for 3 of these."""
    lm = (LANDMARKS_68_3D @ rotation(*np.deg2rad(angles)).T)[:, :2] * 60 + 128
    np.testing.assert_allclose(np.rad2deg(estimate_pitch_yaw_roll(lm, 256)), angles, atol=3.0)


def test_pose_tolerates_landmark_noise_and_any_crop_size():
    rng = np.random.default_rng(0)
    truth = (10, -25, 5)
    for size in (64, 256, 1024):
        lm = project(*truth, size=size) + rng.normal(0, 0.005 * size, (68, 2))  # ~1.3 px at 256
        np.testing.assert_allclose(np.rad2deg(estimate_pitch_yaw_roll(lm, size)), truth, atol=3.0)


def test_documented_signs():
    frontal = project(0, 0, 0)
    eyes_mid = lambda lm: (lm[36] + lm[45]) / 2  # noqa: E731
    # yaw > 0: the nose moves towards the image's right.
    lm = project(0, 20, 0)
    assert lm[30, 0] - eyes_mid(lm)[0] > 5 and estimate_pitch_yaw_roll(lm, 256)[1] > 0
    # pitch > 0 (looking up): the nose tip rises towards the eyes.
    lm = project(15, 0, 0)
    assert lm[30, 1] - eyes_mid(lm)[1] < frontal[30, 1] - eyes_mid(frontal)[1] - 3
    assert estimate_pitch_yaw_roll(lm, 256)[0] > 0
    # roll > 0: clockwise in the image, so the eye on the image's right is lower.
    lm = project(0, 0, 10)
    assert lm[45, 1] > lm[36, 1] + 5 and estimate_pitch_yaw_roll(lm, 256)[2] > 0


@pytest.mark.parametrize("angles", [(12, 25, 8), (-8, -30, -12)])
def test_mirrored_face_negates_yaw_and_roll(angles):
    size = 256
    lm = project(*angles, size=size)
    mirrored = lm.copy()
    for a, b in MIRROR_PAIRS:
        mirrored[a], mirrored[b] = lm[b].copy(), lm[a].copy()
    mirrored[:, 0] = size - mirrored[:, 0]  # reflect about the principal point's vertical line
    p, y, r = estimate_pitch_yaw_roll(lm, size)
    pm, ym, rm = estimate_pitch_yaw_roll(mirrored, size)
    np.testing.assert_allclose([pm, ym, rm], [p, -y, -r], atol=np.deg2rad(0.1))


@pytest.mark.parametrize("angles", [(10, 20, 30), (-40, 70, -60), (25, 90, 0), (30, -90, 0), (-20, 90, 15)])
def test_euler_decomposition_recomposes_including_gimbal_lock(angles):
    from preprocessing.pose import _euler_zyx

    r = rotation(*np.deg2rad(angles))
    x, y, z = _euler_zyx(r)
    np.testing.assert_allclose(rotation(-x, -y, z), r, atol=1e-9)


def test_pose_rejects_bad_input_and_reports_no_fit_as_nan(monkeypatch):
    with pytest.raises(ValueError):
        estimate_pitch_yaw_roll(np.zeros((60, 2)), 256)
    behind_camera = (True, np.zeros((3, 1)), np.array([[0.0], [0.0], [-4.0]]))
    monkeypatch.setattr(cv2, "solvePnP", lambda *a, **k: behind_camera)
    assert np.isnan(estimate_pitch_yaw_roll(project(0, 0, 0), 256)).all()


# ---- sharpness ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    from preprocessing.samples import astronaut_rgb

    return np.ascontiguousarray(astronaut_rgb()[40:232, 134:326])  # 192x192 around the face


def reference_laplacian_var(grey01: np.ndarray, inside: np.ndarray | None = None) -> float:
    """ksize-11 Laplacian = d2(x) (x) smooth(y) + smooth(x) (x) d2(y), from binomial kernels
    (smoothing C(10, k); second derivative [1, -2, 1] * C(8, k)); reflect-101 borders."""
    smooth = np.array([math.comb(10, k) for k in range(11)], np.float64)
    d2 = np.convolve([1.0, -2.0, 1.0], [math.comb(8, k) for k in range(9)])
    kernel = np.outer(smooth, d2) + np.outer(d2, smooth)
    resp = ndi.correlate(grey01, kernel, mode="mirror")
    return float(resp.var() if inside is None else resp[inside].var())


def grey01(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.round(0.299 * r + 0.587 * g + 0.114 * b) / 255.0


def test_blur_score_matches_reference_laplacian_variance(face):
    np.testing.assert_allclose(blur_score(face), reference_laplacian_var(grey01(face)), rtol=1e-3)
    mask = np.zeros(face.shape[:2], np.uint8)
    cv2.circle(mask, (96, 100), 60, 255, -1)
    np.testing.assert_allclose(blur_score(face, mask[:, :, None]), reference_laplacian_var(grey01(face), mask > 0), rtol=1e-3)


def test_blur_score_decreases_monotonically_with_blur(face):
    mask = np.zeros(face.shape[:2], np.uint8)
    cv2.ellipse(mask, (96, 100), (55, 70), 0, 0, 360, 255, -1)
    for m in (None, mask):
        scores = [blur_score(face if s == 0 else cv2.GaussianBlur(face, (0, 0), s), m) for s in (0, 1, 2, 4)]
        assert all(a > 1.5 * b for a, b in zip(scores, scores[1:])), scores


def test_blur_score_ignores_everything_outside_the_mask(face):
    mask = np.zeros(face.shape[:2], np.uint8)
    mask[60:140, 60:140] = 1
    noisy = face.copy()
    yy, xx = np.mgrid[0:40, 0:192]
    noisy[:40] = ((((yy // 4) + (xx // 4)) % 2) * 255)[:, :, None]  # a sharp checkerboard > 5 px away
    assert blur_score(noisy) > 2 * blur_score(face)
    assert blur_score(noisy, mask) == pytest.approx(blur_score(face, mask), rel=1e-12)
    assert blur_score(face, np.zeros_like(mask)) == 0.0


# ---- smoothing ---------------------------------------------------------------------------------

IOD_PX = 50.0
FPS = 30.0


def track_face(scale: float = 1.0) -> np.ndarray:
    """[68, 2] frontal face with IOD = 50 px * scale."""
    return (LANDMARKS_68_3D[:, :2] * IOD_PX + 200.0) * scale


def run(smoother: LandmarkSmoother, frames: list[np.ndarray]) -> np.ndarray:
    return np.array([smoother.update(f, i / FPS) for i, f in enumerate(frames)])


def test_static_jitter_drops_at_least_twofold_without_bias():
    rng = np.random.default_rng(1)
    base = track_face()
    noise = 0.03 * IOD_PX  # 2x the FaceMesh jitter measured in FACE_MODELS.md
    raw = np.array([base + rng.normal(0, noise, base.shape) for _ in range(240)])
    out = run(LandmarkSmoother(), list(raw))
    jitter_raw = np.diff(raw[30:], axis=0).std()
    jitter_out = np.diff(out[30:], axis=0).std()
    assert jitter_raw / jitter_out >= 2.0  # measured ~5.4x with the defaults
    assert np.abs(out[30:].mean(0) - base).mean() < noise / 3


def test_step_is_followed_within_a_few_frames():
    rng = np.random.default_rng(2)
    base = track_face()
    step = 0.3 * IOD_PX  # below the 1 IOD reset threshold: the filter itself must follow
    raw = [base + (step if i >= 30 else 0.0) + rng.normal(0, 0.01 * IOD_PX, base.shape) for i in range(60)]
    out = run(LandmarkSmoother(), raw)
    progress = (out[:, :, 0].mean(1) - base[:, 0].mean()) / step
    assert progress[29] < 0.05
    assert progress[30] < 0.9  # it does smooth (no reset)
    assert progress[33] > 0.9  # within 3 frames (measured 3)
    assert abs(progress[45] - 1.0) < 0.05


def test_parameters_are_resolution_independent():
    rng = np.random.default_rng(3)
    raw = [track_face() + [0.4 * i, 0.0] + rng.normal(0, 1.0, (68, 2)) for i in range(50)]
    small = run(LandmarkSmoother(), raw)
    big = run(LandmarkSmoother(), [r * 8.0 for r in raw])
    np.testing.assert_allclose(big, small * 8.0, rtol=1e-9)


def test_jump_and_gap_reset_the_track():
    base = track_face()
    sm = LandmarkSmoother()
    sm.update(base, 0.0)
    sm.update(base, 1 / FPS)
    jumped = base + 1.5 * IOD_PX  # more than jump_iod = 1 IOD
    np.testing.assert_array_equal(sm.update(jumped, 2 / FPS), jumped)
    moved = jumped + 0.2 * IOD_PX
    np.testing.assert_array_equal(sm.update(moved, 2 / FPS + 0.6), moved)  # gap > max_gap_s = 0.5
    assert not np.array_equal(sm.update(moved + 2.0, 2 / FPS + 0.6 + 1 / FPS), moved + 2.0)
    sm.reset()
    np.testing.assert_array_equal(sm.update(base, 0.0), base)


def test_dense_points_ride_along_and_time_must_increase():
    base = np.vstack([track_face(), np.random.default_rng(4).uniform(150, 250, (468, 2))])
    sm = LandmarkSmoother()
    sm.update(base, 0.0)
    out = sm.update(base + [3.0, -2.0], 1 / FPS)
    assert out.shape == (536, 2)
    shift = out - base
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-9)  # one shared cutoff
    assert 0.0 < shift[0, 0] < 3.0
    with pytest.raises(ValueError):
        sm.update(base, 1 / FPS)
    with pytest.raises(ValueError):
        sm.update(base[:60], 1.0)
