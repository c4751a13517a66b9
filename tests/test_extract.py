"""End-to-end extraction: the real program on the real sample media, through its CLI."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from preprocessing import samples
from preprocessing.faceset import Faceset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--face_type=whole_face", "--size=96", "--shard_faces=16"]


def run_extract(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "preprocessing.extract", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"extract failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tree_digest(path: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def read_all(fs: Faceset) -> dict[str, np.ndarray]:
    return {name: fs.read_range(name, 0, fs.count) for name in fs.array_names}


@pytest.fixture(scope="module")
def carphone_faceset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("extract") / "carphone")
    debug = str(tmp_path_factory.mktemp("extract") / "debug")
    proc = run_extract(f"--input={samples.carphone_path()}", f"--output={out}", f"--debug_dir={debug}", *ARGS)
    return out, debug, proc


def test_carphone_every_frame_has_one_upright_centred_face(carphone_faceset):
    out, _, proc = carphone_faceset
    assert "faces from 120 frames" in proc.stdout
    fs = Faceset.open(out)
    assert fs.face_type.dfl_name == "whole_face" and fs.size == 96
    frames = fs.read_range("frame_index", 0, fs.count)
    assert fs.count >= 118 and len(np.unique(frames)) == fs.count  # one face per found frame
    lm = fs.read_range("landmarks", 0, fs.count).astype(np.float64)
    pose = fs.read_range("pose", 0, fs.count)
    left_eye, right_eye = lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)
    d = right_eye - left_eye
    roll_deg = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    frontal = np.abs(np.degrees(pose[:, 1])) < 15
    assert frontal.sum() >= 60
    # upright: eye line within 3 degrees of horizontal on frontal frames
    assert np.abs(roll_deg[frontal]).max() < 3.0
    # centred: the eyes' midpoint sits on the vertical centre line (within 4% of the crop)
    mid_x = (left_eye[:, 0] + right_eye[:, 0]) / 2
    assert np.abs(mid_x[frontal] - 48).max() < 0.04 * 96
    # the aligned landmarks are the source landmarks moved by the stored matrices
    m = fs.read_range("matrices", 0, fs.count).astype(np.float64)
    src = fs.read_range("source_landmarks", 0, fs.count).astype(np.float64)
    mapped = np.einsum("nij,nkj->nki", m[:, :, :2], src) + m[:, None, :, 2]
    np.testing.assert_allclose(mapped, lm, atol=1e-2)


def test_masks_cover_face_centre_and_not_corners(carphone_faceset):
    fs = Faceset.open(carphone_faceset[0])
    masks = fs.read_range("masks", 0, fs.count)[..., 0]
    em = fs.read_range("eyes_mouth_masks", 0, fs.count)[..., 0]
    lm = fs.read_range("landmarks", 0, fs.count)
    nose = np.round(lm[:, 30]).astype(int)
    assert (masks[np.arange(fs.count), nose[:, 1], nose[:, 0]] == 255).all()
    assert (masks[:, :3, :3] == 0).all() and (masks[:, -3:, -3:] == 0).all()
    area = (masks > 127).mean(axis=(1, 2))
    assert 0.2 < np.median(area) < 0.8
    mouth = np.round(lm[:, 62]).astype(int)
    assert (em[np.arange(fs.count), mouth[:, 1], mouth[:, 0]] > 128).mean() > 0.95


def test_debug_images_written(carphone_faceset):
    _, debug, _ = carphone_faceset
    files = sorted(os.listdir(debug))
    assert len(files) == 120 and files[0] == "000000.jpg"
    img = cv2.imread(os.path.join(debug, files[0]))
    assert img.shape == (144, 176, 3)


def test_kill_and_resume_equals_uninterrupted(carphone_faceset, tmp_path):
    ref = Faceset.open(carphone_faceset[0])
    out = str(tmp_path / "resumed")
    cmd = [sys.executable, "-m", "preprocessing.extract", f"--input={samples.carphone_path()}",
           f"--output={out}", "--jobs=1", *ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = os.path.join(out, "manifest.json")
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            count = json.load(open(manifest))["count"]
        except (OSError, ValueError, KeyError):
            count = 0
        if count >= 32:  # two shards committed, more to come
            proc.send_signal(signal.SIGKILL)
            killed_at = count
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None and killed_at < ref.count, "extraction finished before it could be killed"
    run_extract(f"--input={samples.carphone_path()}", f"--output={out}", *ARGS)
    got = Faceset.open(out)
    assert got.count == ref.count
    a, b = read_all(ref), read_all(got)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert got.sources[0]["frames_done"] == 120


def test_single_image_and_folder_inputs(tmp_path):
    img = samples.astronaut_rgb()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, scale in enumerate([1.0, 0.75]):
        small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{i + 1}.png"), small[:, :, ::-1])
    (folder / "3.png").write_bytes(b"")  # an empty file: warned and skipped
    out = str(tmp_path / "fs_folder")
    run_extract(f"--input={folder}", f"--output={out}", *ARGS)
    fs = Faceset.open(out)
    assert fs.count == 2
    assert fs.sources[0]["kind"] == "images"
    single = str(tmp_path / "fs_single")
    run_extract(f"--input={folder / '1.png'}", f"--output={single}", *ARGS)
    assert Faceset.open(single).count == 1


def test_bad_inputs_fail_cleanly_and_keep_existing_data(carphone_faceset, tmp_path):
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((256, 256, 3), np.uint8))
    proc = run_extract(f"--input={black}", f"--output={tmp_path / 'none'}", *ARGS, check=False)
    assert proc.returncode == 2 and "no face found" in proc.stderr
    assert not os.path.exists(tmp_path / "none")

    proc = run_extract(f"--input={tmp_path / 'missing.mp4'}", f"--output={tmp_path / 'x'}", check=False)
    assert proc.returncode == 2 and "missing.mp4" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    bogus = tmp_path / "bogus.mp4"
    bogus.write_text("not a video")
    proc = run_extract(f"--input={bogus}", f"--output={tmp_path / 'y'}", check=False)
    assert proc.returncode == 2 and "bogus.mp4" in proc.stderr

    # an output folder holding a different faceset (other size) is refused and left untouched
    existing = carphone_faceset[0]
    before = tree_digest(existing)
    proc = run_extract(f"--input={samples.carphone_path()}", f"--output={existing}",
                       "--face_type=whole_face", "--size=64", check=False)
    assert proc.returncode == 2 and existing in proc.stderr
    assert tree_digest(existing) == before

    # a non-empty folder that is not a faceset is refused and left untouched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = run_extract(f"--input={samples.carphone_path()}", f"--output={foreign}", *ARGS, check=False)
    assert proc.returncode == 2 and (foreign / "notes.txt").read_text() == "keep me"


def test_tracking_matches_per_frame_detection(carphone_faceset, tmp_path):
    """--track follows faces with one mesh pass; landmarks stay within 5% IOD of full detection."""
    ref = Faceset.open(carphone_faceset[0])
    out = str(tmp_path / "tracked")
    run_extract(f"--input={samples.carphone_path()}", f"--output={out}", "--track", *ARGS)
    got = Faceset.open(out)
    assert got.count == ref.count
    np.testing.assert_array_equal(got.read_range("frame_index", 0, got.count),
                                  ref.read_range("frame_index", 0, ref.count))
    a = ref.read_range("source_landmarks", 0, ref.count).astype(np.float64)
    b = got.read_range("source_landmarks", 0, got.count).astype(np.float64)
    iod = np.linalg.norm(a[:, 36:42].mean(1) - a[:, 42:48].mean(1), axis=1)
    err = np.linalg.norm(a - b, axis=2).mean(1) / iod
    assert np.mean(err) < 0.05 and np.max(err) < 0.15


def test_two_faces_in_one_frame(tmp_path):
    img = samples.astronaut_rgb()[:300, 80:380]
    both = np.concatenate([img, img[:, ::-1]], axis=1)  # the portrait and its mirror image
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), both[:, :, ::-1])
    out = str(tmp_path / "fs")
    run_extract(f"--input={path}", f"--output={out}", *ARGS)
    fs = Faceset.open(out)
    assert fs.count == 2
    np.testing.assert_array_equal(fs.read_range("face_index", 0, 2), [0, 1])
    np.testing.assert_array_equal(fs.read_range("frame_index", 0, 2), [0, 0])
    boxes = fs.read_range("source_rects", 0, 2)
    # the two crops come from the two halves of the image
    assert sorted(((boxes[:, 0] + boxes[:, 2]) / 2 > 300).tolist()) == [False, True]
    # mirror images: yaw of opposite sign
    yaw = fs.read_range("pose", 0, 2)[:, 1]
    assert abs(yaw[0] + yaw[1]) < np.radians(3)


def test_smoothing_reduces_landmark_jitter(carphone_faceset, tmp_path):
    def jitter(fs: Faceset) -> float:
        """Mean second difference of the landmarks over time, in units of IOD."""
        lm = fs.read_range("source_landmarks", 0, fs.count).astype(np.float64)
        iod = np.linalg.norm(lm[:, 36:42].mean(1) - lm[:, 42:48].mean(1), axis=1).mean()
        return float(np.linalg.norm(np.diff(lm, 2, axis=0), axis=2).mean() / iod)

    ref = Faceset.open(carphone_faceset[0])
    out = str(tmp_path / "smoothed")
    run_extract(f"--input={samples.carphone_path()}", f"--output={out}", "--smooth_landmarks", *ARGS)
    got = Faceset.open(out)
    assert got.count == ref.count
    assert jitter(got) < jitter(ref) / 1.5


def test_dlib_backend_uses_landmark_hull(tmp_path):
    """dlib has no dense mesh, so the mask is DFL's 68-point hull; it agrees with the mesh silhouette."""
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), samples.astronaut_rgb()[:, :, ::-1])
    masks = {}
    for det in ("dlib", "blazeface"):
        out = str(tmp_path / det)
        run_extract(f"--input={path}", f"--output={out}", f"--detector={det}", "--max_faces=1", *ARGS)
        fs = Faceset.open(out)
        assert fs.count == 1 and fs.manifest["producer"]["detector"] == det
        masks[det] = fs.read_range("masks", 0, 1)[0, ..., 0] > 127
    inter = (masks["dlib"] & masks["blazeface"]).sum()
    union = (masks["dlib"] | masks["blazeface"]).sum()
    assert inter / union > 0.75
