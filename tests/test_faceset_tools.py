"""Faceset tools (sort, filter, resize/convert, preview, export, import, info) on real facesets.

The facesets are built with the real FacesetWriter from the astronaut portrait, warped per "frame"
with rotation/scale/shift jitter, a sideways shift of the face centre (a yaw-like turn), four blur
levels and brightness changes, then aligned by the real extraction code. Every check compares with
an independent reference (OpenCV, float64 NumPy) or with exact bookkeeping.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from preprocessing.align import image_to_face_matrix, transform_points
from preprocessing.detect import create_detector
from preprocessing.detect.base import DetectedFace
from preprocessing.errors import UserError
from preprocessing.face_record import RECORD_ARRAYS, face_record, stack_records
from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset, FacesetWriter, best_faces, filtering, preview, sort
from preprocessing.faceset.dfljpg import read_dfljpg
from preprocessing.faceset.dflpak import write_pak
from preprocessing.faceset.export import export_faceset
from preprocessing.faceset.import_aligned import import_aligned
from preprocessing.faceset.info import faceset_info, format_info
from preprocessing.faceset.resize import resize_faceset
from preprocessing.faceset.subset import write_subset
from preprocessing.images import open_source
from preprocessing.masks import hull_mask
from preprocessing.samples import astronaut_rgb
from preprocessing.sharpness import blur_score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_FRAMES = 24
SIZE = 64
CROWDED = (3, 10, 17)  # frames holding a second face


# ------------------------------------------------------------------------------------------ fixtures
def _bump(x: np.ndarray, y: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * radius**2))


def _frames(n: int) -> list[tuple[np.ndarray, DetectedFace]]:
    """(frame RGB 320x320, its face) for n jittered, blurred, re-lit copies of the astronaut."""
    image = np.ascontiguousarray(astronaut_rgb()[0:320, 96:416])
    base = create_detector("blazeface").detect(image)[0]
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:320, 0:320].astype(np.float32)
    out = []
    for i in range(n):
        scale = rng.uniform(0.9, 1.1)
        cx, cy = (base.box[:2] + base.box[2:]) / 2
        affine = cv2.getRotationMatrix2D((float(cx), float(cy)), rng.uniform(-15, 15), scale)
        affine[:, 2] += rng.uniform(-15, 15, 2)
        frame = cv2.warpAffine(image, affine, (320, 320), flags=cv2.INTER_LINEAR)
        # Yaw-like turn: move the middle of the face sideways against its outline.
        centre = transform_points(np.array([cx, cy]), affine)
        radius = 0.3 * (base.box[2] - base.box[0]) * scale
        shift = rng.uniform(-25, 25)
        frame = cv2.remap(frame, (xs - shift * _bump(xs, ys, centre, radius)).astype(np.float32), ys,
                          cv2.INTER_LINEAR)
        landmarks = transform_points(base.landmarks, affine)
        landmarks[:, 0] += shift * _bump(landmarks[:, 0], landmarks[:, 1], centre, radius)
        sigma = (0.0, 0.8, 1.6, 2.4)[i % 4]
        if sigma:
            frame = cv2.GaussianBlur(frame, (0, 0), sigma)
        frame = np.clip(frame * rng.uniform(0.6, 1.3), 0, 255).astype(np.uint8)
        box = transform_points(base.box.reshape(2, 2), affine).ravel()
        out.append((frame, DetectedFace(box.astype(np.float32), 0.5 + 0.02 * i, landmarks.astype(np.float32))))
    return out


def _write_faceset(path: str, frames, entry: dict, *, xseg: bool = False) -> None:
    arrays = [*RECORD_ARRAYS, "xseg_masks"] if xseg else None
    with FacesetWriter(path, size=SIZE, face_type=FaceType.FULL, producer={"program": "test"},
                       arrays=arrays) as w:
        sid = w.add_source(entry)
        for i, (frame, face) in enumerate(frames):
            faces = [face]
            if i in CROWDED:  # a second face in the same frame: the same head, cropped 15% wider
                centre = face.landmarks.mean(axis=0)
                faces.append(DetectedFace(face.box, face.score, centre + (face.landmarks - centre) * 1.15))
            records = [face_record(frame, f, SIZE, FaceType.FULL) for f in faces]
            block = stack_records(records, SIZE)
            if xseg:  # a hand-made mask: the upper half of the hull
                block["xseg_masks"] = block["masks"].copy()
                block["xseg_masks"][:, SIZE // 2:] = 0
            w.add_frame(sid, i, block)


def tree_digest(path: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(faceset path, frames folder, frames): source frames kept as PNGs so re-crops can find them."""
    root = tmp_path_factory.mktemp("faceset_tools")
    frames = _frames(N_FRAMES)
    frames_dir = str(root / "frames")
    os.makedirs(frames_dir)
    for i, (frame, _) in enumerate(frames):
        cv2.imwrite(os.path.join(frames_dir, f"{i:03d}.png"), frame[:, :, ::-1])
    path = str(root / "faceset")
    _write_faceset(path, frames, open_source(frames_dir).describe())
    return path, frames_dir, frames


@pytest.fixture(scope="module")
def fs(built):
    return Faceset.open(built[0])


def col(faceset: Faceset, name: str) -> np.ndarray:
    return faceset.read_range(name, 0, len(faceset))


def cv2_hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """DFL's `hist` metric with OpenCV: summed per-channel Bhattacharyya distances."""
    return sum(cv2.compareHist(cv2.calcHist([a], [c], None, [256], [0, 256]),
                               cv2.calcHist([b], [c], None, [256], [0, 256]), cv2.HISTCMP_BHATTACHARYYA)
               for c in range(3))


# ------------------------------------------------------------------------------------------ sorting
def test_sort_by_blur_writes_faces_in_descending_sharpness(fs, tmp_path):
    faces, masks = col(fs, "faces"), col(fs, "masks")
    sharpness = np.array([blur_score(f, m) for f, m in zip(faces, masks)])  # recomputed, float64
    expected = np.argsort(-sharpness, kind="stable")
    ordering = sort.sort_faces(fs, "blur", progress=False)
    np.testing.assert_array_equal(ordering.keep, expected)
    assert len(ordering.trash) == 0

    out = str(tmp_path / "sorted")
    write_subset(fs, ordering.keep, out, producer={"program": "test"}, progress=False)
    sorted_fs = Faceset.open(out)
    for name in fs.array_names:  # every array, provenance included, follows the new order
        np.testing.assert_array_equal(col(sorted_fs, name), col(fs, name)[expected], err_msg=name)
    assert np.all(np.diff(col(sorted_fs, "blur")) <= 0)
    assert sorted_fs.sources[0]["sha256"] == fs.sources[0]["sha256"]
    assert sorted_fs.sources == fs.sources  # copied verbatim: source ids and progress fields too
    assert sorted_fs.array_names == fs.array_names


def test_sort_by_brightness_and_hue_match_opencv_hsv(fs):
    hsv = [cv2.cvtColor(f, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float64) for f in col(fs, "faces")]
    for method, channel in (("brightness", 2), ("hue", 0)):
        expected = np.argsort([-h[:, channel].mean() for h in hsv], kind="stable")
        np.testing.assert_array_equal(sort.sort_faces(fs, method, progress=False).keep, expected, err_msg=method)


def test_hist_sort_is_a_greedy_nearest_neighbour_chain(fs):
    faces = col(fs, "faces")
    chain = sort.sort_faces(fs, "hist", progress=False).keep
    assert chain[0] == 0 and sorted(chain) == list(range(len(fs)))
    for step in range(1, len(chain)):
        prev, rest = chain[step - 1], chain[step:]
        distances = [cv2_hist_distance(faces[prev], faces[r]) for r in rest]
        assert distances[0] <= min(distances) + 1e-6, f"step {step} did not take the nearest face"


def test_hist_chain_blocks_continue_from_the_nearest_face(fs):
    faces = col(fs, "faces")
    counts = sort.face_stats.channel_histogram_counts(fs, progress=False)
    chain = sort.hist_chain(counts, block=10)
    assert sorted(chain) == list(range(len(fs)))
    for block_start in (10, 20):
        first = chain[block_start]
        assert block_start <= first < block_start + 10  # blocks are chained one after another
        candidates = range(block_start, min(len(fs), block_start + 10))
        d = {c: cv2_hist_distance(faces[chain[block_start - 1]], faces[c]) for c in candidates}
        assert d[first] <= min(d.values()) + 1e-6


def test_key_sorts_match_numpy_orderings(fs):
    pose, rects = col(fs, "pose").astype(np.float64), col(fs, "source_rects").astype(np.float64)
    faces = col(fs, "faces")
    expected = {
        "face-yaw": np.argsort(-pose[:, 1], kind="stable"),
        "face-pitch": np.argsort(-pose[:, 0], kind="stable"),
        "source-rect-size": np.argsort(-(rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1]), kind="stable"),
        "black": np.argsort([(f == 0).sum() for f in faces], kind="stable"),
        "origname": np.lexsort((col(fs, "face_index"), col(fs, "frame_index"))),
    }
    for method, order in expected.items():
        np.testing.assert_array_equal(sort.sort_faces(fs, method, progress=False).keep, order, err_msg=method)
    motion = [cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) * (m[..., 0] > 0), cv2.CV_64F, ksize=11).var()
              for f, m in zip(faces, col(fs, "masks"))]
    np.testing.assert_array_equal(sort.sort_faces(fs, "motion-blur", progress=False).keep,
                                  np.argsort(-np.array(motion), kind="stable"))


def test_oneface_trashes_every_face_of_crowded_frames(fs):
    ordering = sort.sort_faces(fs, "oneface", progress=False)
    crowded = np.isin(col(fs, "frame_index"), CROWDED)
    assert crowded.sum() == 2 * len(CROWDED)
    np.testing.assert_array_equal(ordering.trash, np.flatnonzero(crowded))
    np.testing.assert_array_equal(ordering.keep, np.flatnonzero(~crowded))


def test_best_faces_helpers():
    # q=2 takes 2+1+0+2 = 5 <= 6 faces; q=3 would take 7.
    assert best_faces.quota(np.array([5, 1, 0, 3]), 6) == 2
    assert best_faces.quota(np.array([5, 1, 0, 3]), 100) == 5
    groups = [np.array([1, 2, 3]), np.array([4]), np.array([], np.int64), np.array([5, 6])]
    np.testing.assert_array_equal(best_faces.round_robin(groups, 5), [1, 4, 5, 2, 6])
    np.testing.assert_array_equal(best_faces.bin_index(np.array([-2.0, -1.2, 0.0, 1.19, 5.0]), -1.2, 1.2, 128),
                                  [0, 0, 64, 127, 127])


@pytest.mark.parametrize("target", [8, 1000])
def test_best_faces_keeps_sharp_pose_balanced_faces(fs, target):
    ordering = sort.sort_faces(fs, "final", target=target, progress=False)
    n = len(fs)
    assert sorted(np.concatenate([ordering.keep, ordering.trash])) == list(range(n))
    if target >= n:
        assert len(ordering.keep) == n
        return
    pose, blur = col(fs, "pose").astype(np.float64), col(fs, "blur")
    yaw_bin = np.clip(np.floor((pose[:, 1] + 1.2) / 2.4 * 128), 0, 127).astype(int)
    sizes = np.bincount(yaw_bin, minlength=128)
    q = max([1] + [q for q in range(1, sizes.max() + 1) if np.minimum(sizes, q).sum() <= target])
    assert 0 < len(ordering.keep) <= target
    for b in np.unique(yaw_bin[ordering.keep]):
        members = np.flatnonzero(yaw_bin == b)
        kept = np.intersect1d(ordering.keep, members)
        assert len(kept) <= q
        sharpest = members[np.argsort(-blur[members], kind="stable")][:10 * q]
        assert set(kept) <= set(sharpest)


# ------------------------------------------------------------------------------------------ filter
def test_filter_keeps_exactly_the_expected_faces(fs, tmp_path):
    blur, pose, score = col(fs, "blur"), col(fs, "pose").astype(np.float64), col(fs, "score")
    rules = filtering.FilterRules(min_blur=float(np.median(blur)), max_abs_yaw=6.0, min_score=0.55,
                                  drop="1,5,7-9")
    ok = (blur >= np.median(blur)) & (np.degrees(np.abs(pose[:, 1])) <= 6.0) & (score >= 0.55)
    ok[[1, 5, 7, 8, 9]] = False
    ordering = filtering.filter_faces(fs, rules, progress=False)
    assert 0 < ok.sum() < len(fs)
    np.testing.assert_array_equal(ordering.keep, np.flatnonzero(ok))
    np.testing.assert_array_equal(ordering.trash, np.flatnonzero(~ok))

    out = str(tmp_path / "filtered")
    write_subset(fs, ordering.keep, out, producer={"program": "test"}, progress=False)
    kept = Faceset.open(out)
    for name in ("frame_index", "face_index", "source_id", "faces"):
        np.testing.assert_array_equal(col(kept, name), col(fs, name)[ok], err_msg=name)


def test_filter_pitch_and_near_duplicates(fs):
    pose = col(fs, "pose").astype(np.float64)
    ordering = filtering.filter_faces(fs, filtering.FilterRules(max_abs_pitch=1.0), progress=False)
    np.testing.assert_array_equal(ordering.keep, np.flatnonzero(np.degrees(np.abs(pose[:, 0])) <= 1.0))

    faces, limit = col(fs, "faces"), 0.7
    kept = [0]  # reference: OpenCV similarity to the last kept face
    for i in range(1, len(faces)):
        if 1 - cv2_hist_distance(faces[kept[-1]], faces[i]) / 3 <= limit:
            kept.append(i)
    assert 1 < len(kept) < len(faces)
    ordering = filtering.filter_faces(fs, filtering.FilterRules(max_hist_similarity=limit), progress=False)
    np.testing.assert_array_equal(ordering.keep, kept)


def test_filter_rejects_bad_drop_lists(fs):
    with pytest.raises(UserError, match="out of range"):
        filtering.filter_faces(fs, filtering.FilterRules(drop="3,999"), progress=False)
    with pytest.raises(UserError, match="not an index"):
        filtering.filter_faces(fs, filtering.FilterRules(drop="3,x"), progress=False)


# ------------------------------------------------------------------------------------------ resize
def test_resize_same_type_scales_faces_landmarks_and_matrices(fs, tmp_path):
    out = str(tmp_path / "small")
    resize_faceset(fs, out, size=32, progress=False)
    small = Faceset.open(out)
    assert (small.size, small.face_type, len(small)) == (32, FaceType.FULL, len(fs))
    ref = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_LANCZOS4) for f in col(fs, "faces")])
    assert np.abs(col(small, "faces").astype(int) - ref).max() <= 1
    ref_masks = np.stack([cv2.resize(m, (32, 32), interpolation=cv2.INTER_LINEAR) for m in col(fs, "masks")])
    assert np.abs(col(small, "masks")[..., 0].astype(int) - ref_masks).max() <= 1
    np.testing.assert_array_equal(col(small, "landmarks"), col(fs, "landmarks") * np.float32(0.5))
    mapped = [transform_points(s, m) for s, m in zip(col(small, "source_landmarks"), col(small, "matrices"))]
    assert np.abs(np.array(mapped) - col(small, "landmarks")).max() < 1e-3
    for name in ("frame_index", "face_index", "source_id"):
        np.testing.assert_array_equal(col(small, name), col(fs, name), err_msg=name)
    assert small.sources == fs.sources


def test_convert_to_whole_face_cuts_again_from_source_frames(built, fs, tmp_path):
    _, _, frames = built
    out = str(tmp_path / "whole")
    summary = resize_faceset(fs, out, size=SIZE, face_type=FaceType.WHOLE_FACE, progress=False)
    assert (summary.from_source, summary.rewarped) == (len(fs), 0)
    whole = Faceset.open(out)
    assert whole.face_type == FaceType.WHOLE_FACE
    src_lm, frame_index = col(fs, "source_landmarks"), col(fs, "frame_index")
    for i in range(len(fs)):
        m = image_to_face_matrix(src_lm[i], SIZE, FaceType.WHOLE_FACE)
        ref = cv2.warpAffine(frames[frame_index[i]][0], m, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
        assert np.abs(col(whole, "faces")[i].astype(int) - ref).max() <= 1
        assert np.abs(col(whole, "matrices")[i] - m).max() < 1e-3
        lm = col(whole, "landmarks")[i]
        assert np.abs(lm - transform_points(src_lm[i], m)).max() < 1e-2
        np.testing.assert_array_equal(col(whole, "masks")[i], hull_mask((SIZE, SIZE), lm))


def test_convert_without_source_rewarps_the_stored_face(built, fs, tmp_path):
    _, frames_dir, _ = built
    moved = frames_dir + ".moved"
    os.rename(frames_dir, moved)  # the source is gone: only the stored crops remain
    try:
        out = str(tmp_path / "whole_stored")
        summary = resize_faceset(fs, out, size=SIZE, face_type=FaceType.WHOLE_FACE, progress=False)
    finally:
        os.rename(moved, frames_dir)
    assert (summary.from_source, summary.rewarped) == (0, len(fs))
    whole = Faceset.open(out)
    old_faces, old_m, src_lm = col(fs, "faces"), col(fs, "matrices"), col(fs, "source_landmarks")
    for i in range(len(fs)):
        m = image_to_face_matrix(src_lm[i], SIZE, FaceType.WHOLE_FACE)
        assert np.abs(col(whole, "matrices")[i] - m).max() < 1e-3
        old_to_new = np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(np.vstack([old_m[i].astype(np.float64), [0, 0, 1]]))
        ref = cv2.warpAffine(old_faces[i], old_to_new[:2], (SIZE, SIZE), flags=cv2.INTER_LANCZOS4)
        assert np.abs(col(whole, "faces")[i].astype(int) - ref).max() <= 1
    assert np.all(col(whole, "faces")[:, 0, 0] == 0)  # the bigger crop's corners were never stored


def test_polygons_and_xseg_masks_follow_sort_and_resize(built, tmp_path):
    _, _, frames = built
    path = str(tmp_path / "xseg")
    _write_faceset(path, frames[:6], {"sha256": "1" * 64, "name": "gone.mp4"}, xseg=True)
    polygons = {"0": [{"type": 1, "pts": [[10.0, 10.0], [50.0, 12.0], [30.0, 50.0]]}],
                "4": [{"type": 0, "pts": [[20.0, 20.0], [40.0, 20.0], [30.0, 40.0]]}]}
    with open(os.path.join(path, "polygons.json"), "w") as f:
        json.dump(polygons, f)
    src = Faceset.open(path)

    order = np.array([4, 2, 0, 1, 3, 5, 6])
    write_subset(src, order, str(tmp_path / "reordered"), producer={"program": "test"}, progress=False)
    with open(tmp_path / "reordered" / "polygons.json") as f:
        assert json.load(f) == {"0": polygons["4"], "2": polygons["0"]}

    resize_faceset(src, str(tmp_path / "xs32"), size=32, progress=False)
    small = Faceset.open(str(tmp_path / "xs32"))
    with open(tmp_path / "xs32" / "polygons.json") as f:
        assert json.load(f)["0"][0]["pts"] == [[5.0, 5.0], [25.0, 6.0], [15.0, 25.0]]
    ref = np.stack([cv2.resize(m, (32, 32), interpolation=cv2.INTER_LINEAR) for m in col(src, "xseg_masks")])
    assert np.abs(col(small, "xseg_masks")[..., 0].astype(int) - ref).max() <= 1

    export_faceset(src, str(tmp_path / "dfl"), dfl=True, progress=False)
    face = read_dfljpg(str(tmp_path / "dfl" / "00000.jpg"))
    assert [(p.type, p.pts.tolist()) for p in face.meta.seg_ie_polys] == [(1, polygons["0"][0]["pts"])]
    assert np.abs(face.meta.xseg_mask().astype(int) - col(src, "xseg_masks")[0]).max() <= 1  # PNG: lossless


# ------------------------------------------------------------------------- preview / export / import / info
def test_preview_sheet_has_the_expected_grid(fs, tmp_path):
    out = str(tmp_path / "sheet.png")
    summary = preview.write_preview(fs, out, max_faces=10, cols=4, thumb=32)
    sheet = cv2.imread(out)[:, :, ::-1]
    tile_h = 32 + preview.CAPTION_HEIGHT
    assert sheet.shape == (3 * tile_h, 4 * 32, 3) and summary.faces == 10
    chosen = preview.spread_indices(len(fs), 10)
    assert chosen[0] == 0 and chosen[-1] == len(fs) - 1 and len(chosen) == 10
    faces = col(fs, "faces")
    for k in (0, 5, 9):  # tile k shows face chosen[k] at (row, col) = divmod(k, 4)
        r, c = divmod(k, 4)
        ref = cv2.resize(faces[chosen[k]], (32, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(sheet[r * tile_h:r * tile_h + 32, c * 32:(c + 1) * 32], ref)
    overlays = str(tmp_path / "overlays.png")
    preview.write_preview(fs, overlays, max_faces=10, cols=4, thumb=32, show_landmarks=True, show_masks=True)
    assert not np.array_equal(cv2.imread(overlays), cv2.imread(out))


def test_export_png_round_trip_and_dfl_metadata(fs, tmp_path):
    out = str(tmp_path / "png")
    export_faceset(fs, out, masks=True, progress=False)
    assert len(os.listdir(out)) == 2 * len(fs)
    faces, masks = col(fs, "faces"), col(fs, "masks")
    for i in (0, 7, len(fs) - 1):
        np.testing.assert_array_equal(cv2.imread(os.path.join(out, f"{i:05d}.png"))[:, :, ::-1], faces[i])
        np.testing.assert_array_equal(cv2.imread(os.path.join(out, f"{i:05d}_mask.png"), cv2.IMREAD_GRAYSCALE),
                                      masks[i][..., 0])
    dfl = str(tmp_path / "dfl")
    export_faceset(fs, dfl, dfl=True, progress=False)
    face = read_dfljpg(os.path.join(dfl, "00004.jpg"))
    assert face.meta.face_type == FaceType.FULL
    frame_files = open_source(fs.sources[0]["path"]).describe()["files"]
    assert face.meta.source_filename == frame_files[col(fs, "frame_index")[4]]
    np.testing.assert_allclose(face.meta.landmarks, col(fs, "landmarks")[4], atol=1e-5)
    np.testing.assert_allclose(face.meta.image_to_face_mat, col(fs, "matrices")[4], atol=1e-5)
    assert np.abs(face.image.astype(int) - faces[4]).mean() < 4  # JPEG quality 90
    with pytest.raises(UserError, match="not empty"):
        export_faceset(fs, dfl, progress=False)


def test_import_aligned_images_finds_landmarks(fs, tmp_path):
    folder = str(tmp_path / "aligned")
    export_faceset(fs, folder, progress=False)
    cv2.imwrite(os.path.join(folder, "99998.png"), np.full((64, 64, 3), 128, np.uint8))  # no face
    cv2.imwrite(os.path.join(folder, "99999.png"), np.zeros((64, 40, 3), np.uint8))  # not square
    out = str(tmp_path / "imported")
    summary = import_aligned(folder, out, face_type=FaceType.FULL, size=128, progress=False)
    assert summary.faces == len(fs) and len(summary.skipped) == 2
    imported = Faceset.open(out)
    assert (len(imported), imported.size, imported.face_type) == (len(fs), 128, FaceType.FULL)
    np.testing.assert_array_equal(col(imported, "matrices"), np.tile([[2, 0, 0], [0, 2, 0]], (len(fs), 1, 1)))
    np.testing.assert_allclose(col(imported, "landmarks"), col(imported, "source_landmarks") * 2, atol=1e-4)
    error = np.linalg.norm(col(imported, "source_landmarks") - col(fs, "landmarks"), axis=-1)
    assert error.mean() < 2.0  # px on 64-px faces: the detector agrees with extraction's landmarks


def test_info_counts_and_yaw_histogram(fs, capsys):
    info = faceset_info(fs)
    assert info["count"] == len(fs) == N_FRAMES + len(CROWDED)
    assert info["face_type"] == "full_face" and info["size"] == SIZE
    ref, _ = np.histogram(np.clip(np.degrees(col(fs, "pose")[:, 1]), -90, 89.999), bins=9, range=(-90, 90))
    assert [b["count"] for b in info["yaw_histogram"]] == ref.tolist()
    assert info["blur"]["max"] == pytest.approx(float(col(fs, "blur").max()))
    files = [os.path.join(root, f) for root, _, names in os.walk(fs.path) for f in names]
    assert info["bytes_on_disk"] == sum(os.path.getsize(f) for f in files)
    assert f"faces      {len(fs)}" in format_info(info)


# ------------------------------------------------------------------------------------------ CLI
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preprocessing.faceset", *args, "--noprogress"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_commands_exit_codes_and_untouched_input(built, tmp_path):
    path = built[0]
    before = tree_digest(path)
    t = str(tmp_path)
    commands = [
        ["info", f"--faceset={path}"],
        ["sort", f"--faceset={path}", f"--output={t}/s", "--by=final", "--target=6", f"--trash={t}/trash"],
        ["filter", f"--faceset={path}", f"--output={t}/f", "--max_abs_yaw=6", "--drop=0-2"],
        ["resize", f"--faceset={path}", f"--output={t}/r", "--size=32", "--face_type=head"],
        ["preview", f"--faceset={path}", f"--output={t}/p.png", "--show_landmarks"],
        ["export", f"--faceset={path}", f"--output_dir={t}/e", "--dfl"],
        ["import-dfl", f"--input_dir={t}/e", f"--output={t}/d"],
        ["import-pak", f"--input={t}/faceset.pak", f"--output={t}/k"],
        ["import", f"--input_dir={t}/e", f"--output={t}/i", "--face_type=full", "--size=64"],
    ]
    for args in commands:
        if args[0] == "import-pak":  # pack the exported DFLJPGs as DFL would
            files = sorted((tmp_path / "e").iterdir())
            write_pak(f"{t}/faceset.pak", [({"filename": f.name}, f.read_bytes()) for f in files])
        proc = run_cli(*args)
        assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
        assert tree_digest(path) == before, f"{args[0]} changed its input"
    assert Faceset.open(f"{t}/s").count == 6 and Faceset.open(f"{t}/trash").count == len(Faceset.open(path)) - 6
    assert Faceset.open(f"{t}/r").face_type == FaceType.HEAD
    for imported in ("d", "k", "i"):
        assert Faceset.open(f"{t}/{imported}").count == Faceset.open(path).count, imported
    assert f"faces      {Faceset.open(path).count}" in run_cli("info", f"--faceset={path}").stdout

    for bad in (["info", f"--faceset={t}/e"], ["sort", f"--faceset={path}", f"--output={t}/s", "--by=blur"]):
        proc = run_cli(*bad)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert tree_digest(path) == before
    help_text = run_cli("--helpfull").stdout
    assert all(f"--{flag}" in help_text for flag in ("by", "max_hist_similarity", "show_masks", "input_dir"))
