"""Alignment checked against independent references: scikit-image's SimilarityTransform for the
Umeyama fit, the DFL_SPEC §1.5 crop table for the crop geometry, SciPy bilinear sampling for the
warp."""
import math

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.transform import SimilarityTransform

from preprocessing import align
from preprocessing.face_types import FaceType
from preprocessing.pose import LANDMARKS_68_3D

# Crop side in mean-face units, DFL_SPEC §1.5 table.
SPEC_SIDE = {
    FaceType.HALF: 1.000,
    FaceType.MID_FULL: 1.191,
    FaceType.FULL: 1.597,
    FaceType.FULL_NO_ALIGN: 1.597,
    FaceType.WHOLE_FACE: 2.131,
    FaceType.HEAD: 2.980,
    FaceType.HEAD_NO_ALIGN: 2.980,
}


def _random_similarity(rng: np.random.Generator) -> np.ndarray:
    """3x3 frame-from-template similarity: scale 80..400 px, any rotation, a shift in a 1080p frame."""
    s = rng.uniform(80, 400)
    th = rng.uniform(-math.pi, math.pi)
    t = rng.uniform([200, 200], [1700, 900])
    return np.array([[s * math.cos(th), -s * math.sin(th), t[0]], [s * math.sin(th), s * math.cos(th), t[1]], [0, 0, 1]])


def _template_face68() -> np.ndarray:
    """A 68-point face in mean-face units: our 3-D mean shape's frontal projection, similarity-fitted
    onto the template so that the 33 alignment points sit near MEAN_FACE_33."""
    flat = LANDMARKS_68_3D[:, :2]
    fit = SimilarityTransform.from_estimate(flat[align.ALIGN_POINTS], align.MEAN_FACE_33)
    return fit(flat)


def _frame_landmarks(seed: int, noise_px: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame_from_norm = _random_similarity(rng)
    lm = _template_face68() @ frame_from_norm[:2, :2].T + frame_from_norm[:2, 2]
    return lm + rng.normal(0, noise_px, lm.shape)


def _norm_from_frame(lm: np.ndarray) -> np.ndarray:
    """Independent reference fit: scikit-image's similarity estimate on the same 33 pairs."""
    return SimilarityTransform.from_estimate(lm[align.ALIGN_POINTS], align.MEAN_FACE_33).params


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dim", [2, 3])
def test_umeyama_matches_skimage(seed, dim):
    rng = np.random.default_rng(seed)
    src = rng.normal(0, 50, (33, dim))
    rot, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    rot *= np.sign(np.linalg.det(rot))  # proper rotation
    dst = 1.7 * src @ rot.T + rng.normal(0, 100, dim) + rng.normal(0, 2.0, src.shape)
    ours = align.umeyama(src, dst, estimate_scale=True)
    ref = SimilarityTransform.from_estimate(src, dst).params
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_umeyama_reflection_fix_gives_a_proper_rotation(seed):
    rng = np.random.default_rng(seed)
    src = rng.normal(0, 50, (33, 2))
    dst = src * [-1.0, 1.0] + rng.normal(0, 1.0, src.shape)  # a mirror image: no rotation fits well
    ours = align.umeyama(src, dst)
    assert np.linalg.det(ours[:2, :2]) > 0
    np.testing.assert_allclose(ours, SimilarityTransform.from_estimate(src, dst).params, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flip", [1.0, -1.0])
def test_umeyama_collinear_points_rank_deficient_case(flip):
    t = np.linspace(-3, 3, 9)[:, None]
    src = t * [2.0, 1.0]
    dst = t * [-1.0, 3.0] * flip + [4.0, 5.0]
    ours = align.umeyama(src, dst)
    np.testing.assert_allclose(ours, SimilarityTransform.from_estimate(src, dst).params, atol=1e-9)
    np.testing.assert_allclose(align.transform_points(src, ours), dst, atol=1e-9)
    assert np.linalg.det(ours[:2, :2]) > 0


def test_umeyama_without_scale_is_rigid():
    rng = np.random.default_rng(7)
    src = rng.normal(0, 10, (20, 2))
    ours = align.umeyama(src, 3.0 * src + 5.0, estimate_scale=False)
    np.testing.assert_allclose(ours[:2, :2].T @ ours[:2, :2], np.eye(2), atol=1e-12)


def test_umeyama_rejects_degenerate_and_mismatched_input():
    with pytest.raises(ValueError):
        align.umeyama(np.ones((10, 2)), np.ones((10, 2)))
    with pytest.raises(ValueError):
        align.umeyama(np.zeros((10, 2)), np.zeros((9, 2)))


def _reference_matrix(lm: np.ndarray, size: int, centre: tuple[float, float], padding: float, scale=1.0):
    """Crop square of half-side h around `centre` in skimage's normalised space, scaled to size."""
    h = (0.5 + math.sqrt(2) * padding) / scale
    k = size / (2 * h)
    crop_from_norm = np.array([[k, 0, -k * (centre[0] - h)], [0, k, -k * (centre[1] - h)], [0, 0, 1]])
    return (crop_from_norm @ _norm_from_frame(lm))[:2]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "face_type, centre",
    [
        (FaceType.HALF, (0.5, 0.5)),
        (FaceType.MID_FULL, (0.5, 0.5)),
        (FaceType.FULL, (0.5, 0.5)),
        (FaceType.WHOLE_FACE, (0.5, 0.43)),
    ],
)
def test_image_to_face_matrix_matches_skimage_composition(seed, face_type, centre):
    lm = _frame_landmarks(seed)
    ours = align.image_to_face_matrix(lm, 256, face_type)
    ref = _reference_matrix(lm, 256, centre, face_type.padding)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_output_scale_zooms_in():
    lm = _frame_landmarks(11)
    ours = align.image_to_face_matrix(lm, 512, FaceType.WHOLE_FACE, scale=1.25)
    ref = _reference_matrix(lm, 512, (0.5, 0.43), FaceType.WHOLE_FACE.padding, scale=1.25)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def _head_centre_x(lm: np.ndarray) -> float:
    """DFL_SPEC §1.5 HEAD yaw shift, computed from the skimage fit."""
    x = SimilarityTransform(matrix=_norm_from_frame(lm))(lm)[:, 0]
    left = np.mean([x[27] - x[0], x[28] - x[1], x[29] - x[2]])
    right = np.mean([x[16] - x[27], x[15] - x[28], x[14] - x[29]])
    yaw = right - left
    return 0.5 + yaw * abs(math.tanh(2 * yaw)) / 2


@pytest.mark.parametrize("jaw_shift", [0.0, 0.15, -0.3])
def test_head_centre_moves_up_and_sideways_by_yaw(jaw_shift):
    lm = _frame_landmarks(3, noise_px=0.0)
    # Shift the whole jaw sideways (along the face's x axis): the yaw estimate changes, the fit does not.
    frame_from_norm = np.linalg.inv(_norm_from_frame(lm))
    lm[:17] += jaw_shift * frame_from_norm[:2, 0]
    cx = _head_centre_x(lm)
    if jaw_shift != 0.0:
        assert abs(cx - 0.5) > 0.01
    ours = align.image_to_face_matrix(lm, 384, FaceType.HEAD)
    ref = _reference_matrix(lm, 384, (cx, 0.0), FaceType.HEAD.padding)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("face_type", list(SPEC_SIDE))
def test_crop_side_in_mean_face_units_matches_spec_table(face_type):
    lm = _frame_landmarks(5)
    m = align.image_to_face_matrix(lm, 512, face_type)
    corners = SimilarityTransform(matrix=_norm_from_frame(lm))(align.crop_square_in_frame(m, 512))
    sides = np.linalg.norm(np.roll(corners, -1, axis=0) - corners, axis=1)
    if face_type.remove_align:
        # Axis-aligned in the frame, so rotated in mean-face space: compare the area instead.
        area = 0.5 * abs(np.dot(corners[:, 0], np.roll(corners[:, 1], -1)) - np.dot(corners[:, 1], np.roll(corners[:, 0], -1)))
        sides = np.full(4, math.sqrt(area))
    np.testing.assert_allclose(sides, SPEC_SIDE[face_type], atol=1e-3)
    diag = np.linalg.norm(corners[2] - corners[0]), np.linalg.norm(corners[3] - corners[1])
    np.testing.assert_allclose(diag, math.sqrt(2) * SPEC_SIDE[face_type], atol=2e-3)


def test_whole_face_centre_is_0_07_above_full():
    lm = _frame_landmarks(9)
    to_norm = SimilarityTransform(matrix=_norm_from_frame(lm))
    for face_type, expect in [(FaceType.FULL, (0.5, 0.5)), (FaceType.WHOLE_FACE, (0.5, 0.43))]:
        m = align.image_to_face_matrix(lm, 256, face_type)
        centre_frame = align.transform_points(np.array([128.0, 128.0]), m, invert=True)
        np.testing.assert_allclose(to_norm(centre_frame[None])[0], expect, atol=1e-6)


@pytest.mark.parametrize("aligned, no_align", [(FaceType.FULL, FaceType.FULL_NO_ALIGN), (FaceType.HEAD, FaceType.HEAD_NO_ALIGN)])
def test_remove_align_gives_axis_aligned_square_of_equal_area(aligned, no_align):
    lm = _frame_landmarks(2)  # rotated by a random angle
    rotated = align.crop_square_in_frame(align.image_to_face_matrix(lm, 256, aligned), 256)
    if aligned == FaceType.HEAD:
        # HEAD_NO_ALIGN has no centre offsets: compare with the rotated square around (0.5, 0.5).
        rotated = align.crop_square_in_frame(_reference_matrix(lm, 256, (0.5, 0.5), aligned.padding), 256)
    m = align.image_to_face_matrix(lm, 256, no_align)
    square = align.crop_square_in_frame(m, 256)
    np.testing.assert_allclose(m[0, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(m[1, 0], 0.0, atol=1e-9)
    np.testing.assert_allclose(m[0, 0], m[1, 1], rtol=1e-9)
    assert m[0, 0] > 0

    def area(p):
        return 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))

    np.testing.assert_allclose(area(square), area(rotated), rtol=1e-9)
    np.testing.assert_allclose(square.mean(0), rotated.mean(0), atol=1e-6)


def test_mark_only_and_bad_landmarks_raise():
    lm = _frame_landmarks(0)
    with pytest.raises(ValueError):
        align.image_to_face_matrix(lm, 256, FaceType.MARK_ONLY)
    with pytest.raises(ValueError):
        align.image_to_face_matrix(lm[:60], 256, FaceType.FULL)
    bad = lm.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError):
        align.image_to_face_matrix(bad, 256, FaceType.FULL)


def test_transform_points_round_trip_and_homogeneous_input():
    rng = np.random.default_rng(1)
    m = align.image_to_face_matrix(_frame_landmarks(1), 256, FaceType.WHOLE_FACE)
    pts = rng.uniform(0, 1920, (100, 2))
    back = align.transform_points(align.transform_points(pts, m), m, invert=True)
    np.testing.assert_allclose(back, pts, atol=1e-9)
    m3 = np.vstack([m, [0, 0, 1]])
    np.testing.assert_allclose(align.transform_points(pts, m3), align.transform_points(pts, m), atol=1e-12)
    np.testing.assert_allclose(align.transform_points(pts, m), cv2.transform(pts[None], m)[0], atol=1e-9)


@pytest.fixture(scope="module")
def frame():
    from preprocessing.samples import astronaut_rgb

    return astronaut_rgb()


def test_warp_to_face_matches_scipy_bilinear_with_black_border(frame):
    th, s = 0.3, 0.7
    m = np.array([[s * math.cos(th), -s * math.sin(th), 10.0], [s * math.sin(th), s * math.cos(th), -120.0]])
    size = 300
    out = align.warp_to_face(frame, m, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    src = align.transform_points(np.stack([xx, yy], -1), m, invert=True)
    ref = np.stack(
        [ndi.map_coordinates(frame[..., c].astype(np.float64), [src[..., 1], src[..., 0]], order=1, mode="constant") for c in range(3)],
        -1,
    )
    h, w = frame.shape[:2]
    inside = (src[..., 0] >= 0) & (src[..., 0] <= w - 1) & (src[..., 1] >= 0) & (src[..., 1] <= h - 1)
    outside = (src[..., 0] < -1) | (src[..., 0] > w) | (src[..., 1] < -1) | (src[..., 1] > h)
    assert inside.mean() > 0.8 and outside.mean() > 0.05  # both regions are exercised
    diff = np.abs(out.astype(np.float64) - ref)[inside]
    # OpenCV quantises bilinear weights to 1/32 px and rounds to uint8.
    assert diff.mean() < 0.3 and diff.max() < 1.0
    assert out[outside].max() == 0


def test_warp_to_face_puts_a_frame_point_where_transform_points_says():
    lm = _frame_landmarks(4, noise_px=0.0)
    m = align.image_to_face_matrix(lm, 128, FaceType.WHOLE_FACE)
    p = lm[30] + [0.3, -0.4]  # near the nose tip, sub-pixel
    yy, xx = np.mgrid[0:1080, 0:1920].astype(np.float64)
    blob = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 6.0**2)).astype(np.float32)
    crop = align.warp_to_face(blob[:, :, None], m, 128)
    assert crop.shape == (128, 128, 1)
    w = crop[..., 0].astype(np.float64)
    cy, cx = np.mgrid[0:128, 0:128]
    centroid = np.array([(cx * w).sum(), (cy * w).sum()]) / w.sum()
    # OpenCV samples pixel centres at integer coordinates, as transform_points assumes.
    assert np.linalg.norm(centroid - align.transform_points(p, m)) < 0.05


def test_sanity_filter_threshold_is_four_times_the_rect():
    lm = _frame_landmarks(6)
    m = align.image_to_face_matrix(lm, 256, FaceType.FULL)
    corners = align.crop_square_in_frame(m, 256)
    crop_area = np.linalg.norm(corners[1] - corners[0]) * np.linalg.norm(corners[3] - corners[0])
    x0, y0 = lm.min(0)
    for factor, expect in [(1.01, True), (0.99, False)]:
        side = math.sqrt(crop_area / 4 * factor)
        box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
        assert align.passes_sanity_filter(m, 256, box, FaceType.FULL) is expect
    tiny = np.array([x0, y0, x0 + 1, y0 + 1])
    assert not align.passes_sanity_filter(m, 256, tiny, FaceType.FULL_NO_ALIGN)
    m_wf = align.image_to_face_matrix(lm, 256, FaceType.WHOLE_FACE)
    assert align.passes_sanity_filter(m_wf, 256, tiny, FaceType.WHOLE_FACE)  # only types <= FULL_NO_ALIGN


def test_convert_face_matrix_recrops_the_same_pixels(frame):
    lm = _frame_landmarks(8, noise_px=0.5) * 0.3  # a ~100 px face inside the 512 frame
    old = align.image_to_face_matrix(lm, 256, FaceType.WHOLE_FACE)
    new, old_to_new = align.convert_face_matrix(old, lm, 128, FaceType.FULL)
    np.testing.assert_allclose(new, align.image_to_face_matrix(lm, 128, FaceType.FULL), atol=1e-12)
    np.testing.assert_allclose(
        align.transform_points(align.transform_points(lm, old), old_to_new), align.transform_points(lm, new), atol=1e-9
    )
    # FULL lies inside WHOLE_FACE, so re-warping the old crop gives (up to resampling) the direct crop.
    direct = align.warp_to_face(frame, new, 128).astype(np.float64)
    via_old = align.warp_to_face(align.warp_to_face(frame, old, 256), old_to_new, 128).astype(np.float64)
    assert np.abs(direct - via_old)[4:-4, 4:-4].mean() < 2.0

    same_type, scale_only = align.convert_face_matrix(old, lm, 512, FaceType.WHOLE_FACE)
    np.testing.assert_allclose(scale_only, [[2, 0, 0], [0, 2, 0]], atol=1e-9)
