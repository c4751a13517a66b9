"""Video I/O (preprocessing.video) and extraction inputs (preprocessing.images).

References: OpenCV's own decoder (cv2.VideoCapture), hashlib, clips built by the ffmpeg CLI
with known timestamps, and hand-written expectations. Tolerances are stated where used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from preprocessing import images, samples, video
from preprocessing.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARPHONE_PTS = [i * 1001 / 30000 for i in range(120)]  # 29.97 fps, time base 1/30000


def ffmpeg(*args: str) -> None:
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True)


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def carphone() -> str:
    return samples.carphone_path()


@pytest.fixture(scope="module")
def carphone_frames(carphone) -> list[video.Frame]:
    return list(video.read_frames(carphone))


@pytest.fixture(scope="module")
def short_gop_clip(tmp_path_factory) -> str:
    """90 frames, a keyframe every 12 and 3 B-frames: seeks land between keyframes."""
    path = str(tmp_path_factory.mktemp("gop") / "gop.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=25", "-frames:v", "90",
           "-c:v", "libx264", "-g", "12", "-bf", "3", "-pix_fmt", "yuv420p", path)
    return path


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory) -> str:
    """20 frames at t_k = 0.04 k + 0.002 k^2 seconds (intervals grow), time base 1/90000."""
    path = str(tmp_path_factory.mktemp("vfr") / "vfr.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25", "-frames:v", "20",
           "-vf", "settb=1/90000,setpts=(0.04*N+0.002*N*N)/TB", "-fps_mode", "passthrough",
           "-enc_time_base:v", "1/90000", "-c:v", "libx264", "-pix_fmt", "yuv420p", path)
    return path


@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory) -> str:
    return samples.make_astronaut_clip(str(tmp_path_factory.mktemp("astro") / "astro.mp4"))


# ---------------------------------------------------------------------------------------------
# probe and read_frames
# ---------------------------------------------------------------------------------------------

def test_probe_carphone(carphone):
    info = video.probe(carphone)
    assert (info.width, info.height, info.frame_count) == (176, 144, 120)
    assert abs(info.fps - 29.97) < 0.01
    assert info.time_base == "1/30000"
    assert info.duration == pytest.approx(120 * 1001 / 30000, abs=1e-9)
    assert not info.has_audio and info.audio_duration is None
    assert not info.vfr
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")


def test_read_frames_match_opencv_decode(carphone, carphone_frames):
    cap = cv2.VideoCapture(carphone)
    reference = []
    while (ok_frame := cap.read())[0]:
        reference.append(ok_frame[1][:, :, ::-1])
    assert len(carphone_frames) == len(reference) == 120
    assert [f.index for f in carphone_frames] == list(range(120))
    np.testing.assert_allclose([f.pts for f in carphone_frames], CARPHONE_PTS, atol=1e-9)
    ours = np.stack([f.image for f in carphone_frames]).astype(np.int16)
    diff = np.abs(ours - np.stack(reference))
    # Both are ffmpeg decodes with BT.601 and swscale's default bicubic chroma upsampling;
    # measured 0. Allow 1 level for rounding differences between swscale code paths.
    assert carphone_frames[0].image.dtype == np.uint8
    assert diff.max() <= 1 and diff.mean() < 0.01


@pytest.mark.parametrize("start", [1, 50, 119])
def test_start_frame_gives_the_same_frames(carphone, carphone_frames, start):
    tail = list(video.read_frames(carphone, start_frame=start))
    assert [f.index for f in tail] == list(range(start, 120))
    for got, want in zip(tail, carphone_frames[start:]):
        assert got.pts == want.pts
        np.testing.assert_array_equal(got.image, want.image)


def test_start_frame_seeks_between_keyframes(short_gop_clip, monkeypatch):
    full = list(video.read_frames(short_gop_clip))
    assert len(full) == 90
    seeks = []
    decode = video.decode._decode
    monkeypatch.setattr(video.decode, "_decode",
                        lambda info, seek: seeks.append(seek) or decode(info, seek))
    for start in (11, 12, 13, 47, 89):
        seeks.clear()
        tail = list(video.read_frames(short_gop_clip, start))
        assert [f.index for f in tail] == list(range(start, 90))
        assert all(np.array_equal(a.image, b.image) and a.pts == b.pts
                   for a, b in zip(tail, full[start:]))
        # one decode that started at a seek, i.e. frames before `start` were not converted
        assert len(seeks) == 1 and seeks[0] == pytest.approx((start - 0.5) / 25, abs=1e-3)
    assert list(video.read_frames(short_gop_clip, 90)) == []


def test_variable_frame_rate_keeps_timestamps(vfr_clip):
    info = video.probe(vfr_clip)
    assert info.vfr and info.frame_count == 20 and info.time_base == "1/90000"
    expected = [0.04 * k + 0.002 * k * k for k in range(20)]
    assert info.fps == pytest.approx(19 / expected[-1], rel=1e-4)
    frames = list(video.read_frames(vfr_clip))
    assert [f.index for f in frames] == list(range(20))
    # setpts rounds each time to the 1/90000 time base
    np.testing.assert_allclose([f.pts for f in frames], expected, atol=1.2 / 90000)
    tail = list(video.read_frames(vfr_clip, 7))
    assert [f.pts for f in tail] == [f.pts for f in frames[7:]]


def test_constant_rate_clip_is_not_vfr(short_gop_clip):
    assert not video.probe(short_gop_clip).vfr


def test_abandoned_read_stops_ffmpeg(carphone, monkeypatch):
    started = []
    popen = subprocess.Popen

    def spy(*args, **kw):
        started.append(popen(*args, **kw))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", spy)
    frames = video.read_frames(carphone, 10)
    next(frames)
    frames.close()
    assert started and all(p.poll() is not None for p in started)


def test_corrupt_bytes_mid_stream_warn_and_continue(short_gop_clip, tmp_path, caplog):
    data = bytearray(open(short_gop_clip, "rb").read())
    rng = np.random.default_rng(0)
    middle = len(data) // 2
    for offset in range(middle, middle + 3000, 61):
        data[offset] = int(rng.integers(0, 256))
    path = str(tmp_path / "corrupt.mp4")
    open(path, "wb").write(bytes(data))
    with caplog.at_level(logging.WARNING, logger="preprocessing.video"):
        frames = list(video.read_frames(path))
    assert any("corrupt.mp4: ffmpeg:" in r.getMessage() for r in caplog.records)
    indices = [f.index for f in frames]
    assert len(frames) >= 80 and indices == sorted(set(indices)) and indices[-1] <= 89


def test_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(UserError, match=r"missing\.mp4: no such file$"):
        video.probe(missing)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(UserError) as e:
        video.read_frames(str(text))
    message = str(e.value)
    assert message.startswith(f"{text}: not a readable video (ffmpeg: ") and "\n" not in message
    with pytest.raises(UserError, match="is a folder"):
        video.probe(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def test_lossless_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (47, 63, 3), dtype=np.uint8) for _ in range(10)]  # odd size
    path = str(tmp_path / "lossless.mp4")
    assert video.write_video(path, frames, 30, lossless=True) == 10
    back = list(video.read_frames(path))
    assert len(back) == 10
    for got, want in zip(back, frames):
        np.testing.assert_array_equal(got.image, want)  # libx264rgb crf 0: exact, no YUV step
    assert os.listdir(tmp_path) == ["lossless.mp4"]


@pytest.mark.parametrize("size,matrix", [((320, 240), "smpte170m"), ((1280, 720), "bt709")])
def test_colour_tags_and_round_trip(tmp_path, size, matrix):
    width, height = size
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0),
                        (0, 255, 255), (255, 0, 255), (128, 128, 128), (200, 100, 50)])
    bars = np.repeat(colours.astype(np.uint8)[None, :, None, :], width // 8, axis=2)
    image = np.ascontiguousarray(np.repeat(bars.reshape(1, width, 3), height, axis=0))
    path = str(tmp_path / "bars.mp4")
    video.write_video(path, [image] * 2, 25, crf=10)
    info = video.probe(path)
    assert (info.color_matrix, info.color_primaries, info.color_transfer) == (matrix,) * 3
    assert info.color_range == "tv"
    decoded = next(video.read_frames(path)).image.astype(np.float64)
    bar_means = [decoded[:, k * width // 8 + 8:(k + 1) * width // 8 - 8].mean((0, 1))
                 for k in range(8)]
    # 8-bit limited-range 4:2:0 at crf 10, read back with the tagged matrix: measured 2 levels;
    # a matrix mix-up (601 vs 709) would shift saturated bars by 10-30 levels.
    assert np.abs(np.array(bar_means) - colours).max() <= 3


def test_writer_keeps_audio_of_the_reference(astronaut_clip, tmp_path):
    source = video.probe(astronaut_clip)
    assert source.has_audio and source.audio_duration == pytest.approx(4.0, abs=0.05)
    out = str(tmp_path / "merged.mp4")
    with video.VideoWriter(out, source.fps, (source.width, source.height),
                           audio_from=astronaut_clip, color=source) as writer:
        for frame in video.read_frames(astronaut_clip):
            writer.write(frame.image)
    info = video.probe(out)
    assert info.has_audio and info.frame_count == 120
    assert info.duration == pytest.approx(4.0, abs=1e-6)
    assert info.audio_duration == pytest.approx(info.duration, abs=0.05)
    assert info.color_matrix == source.color_matrix


def test_writer_timestamps_place_frames_on_the_rate_grid(tmp_path):
    path = str(tmp_path / "cfr.mkv")
    levels = [10, 60, 110, 160]
    with video.VideoWriter(path, 10, (32, 16), lossless=True, timestamps=True) as writer:
        for level, pts in zip(levels, [0.0, 0.1, 0.15, 0.4]):
            writer.write(np.full((16, 32, 3), level, np.uint8), pts)
    # ticks 0.0 0.1 0.2 0.3 0.4 show the latest frame at or before them (0.15 rounds to 0.2)
    shown = [int(f.image.mean()) for f in video.read_frames(path)]
    assert shown == [10, 60, 110, 110, 160]


def test_failed_write_leaves_no_file(tmp_path):
    path = str(tmp_path / "broken.mp4")
    with pytest.raises(RuntimeError):
        with video.VideoWriter(path, 25, (32, 32)) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("crash mid-encode")
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match=r"out\.avi: unsupported output type"):
        video.VideoWriter(str(tmp_path / "out.avi"), 25, (32, 32))


# ---------------------------------------------------------------------------------------------
# frames <-> video tool
# ---------------------------------------------------------------------------------------------

def test_extract_frames_range_as_jpg(carphone, carphone_frames, tmp_path):
    count = video.extract_frames(carphone, str(tmp_path), fmt="jpg", start=10, end=20)
    names = sorted(os.listdir(tmp_path))
    assert count == 10 and names == [f"{i:05d}.jpg" for i in range(11, 21)]
    first = cv2.imread(str(tmp_path / "00011.jpg"))[:, :, ::-1].astype(np.float64)
    assert np.abs(first - carphone_frames[10].image).mean() < 2.0  # JPEG quality 95
    with pytest.raises(UserError, match="already holds 10 .jpg files"):
        video.extract_frames(carphone, str(tmp_path), fmt="jpg")


def test_assemble_refuses_mixed_sizes(tmp_path):
    cv2.imwrite(str(tmp_path / "1.png"), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "2.png"), np.zeros((16, 18, 3), np.uint8))
    with pytest.raises(UserError, match=r"2\.png: size 18x16 differs"):
        video.assemble_frames(str(tmp_path), str(tmp_path / "out.mp4"), fps=25)
    assert not os.path.exists(tmp_path / "out.mp4")


def test_cli_extract_assemble_round_trip(carphone, carphone_frames, tmp_path):
    frames_dir, out = str(tmp_path / "frames"), str(tmp_path / "back.mp4")
    proc = run_cli("preprocessing.video", "extract", f"--input={carphone}",
                   f"--output_dir={frames_dir}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("extract: 120 frames in ")
    names = sorted(os.listdir(frames_dir))
    assert names[0] == "00001.png" and names[-1] == "00120.png" and len(names) == 120
    png = cv2.imread(os.path.join(frames_dir, "00051.png"))[:, :, ::-1]
    np.testing.assert_array_equal(png, carphone_frames[50].image)

    proc = run_cli("preprocessing.video", "assemble", f"--input_dir={frames_dir}",
                   f"--output={out}", "--fps=29.97", "--lossless")
    assert proc.returncode == 0, proc.stderr
    assert out in proc.stdout
    info = video.probe(out)
    assert (info.frame_count, info.width, info.height) == (120, 176, 144)
    assert abs(info.fps - 29.97) < 1e-3
    back = list(video.read_frames(out))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(back, carphone_frames))


def test_cli_missing_input_is_one_line_error(tmp_path):
    missing = str(tmp_path / "nope.mp4")
    proc = run_cli("preprocessing.video", "extract", f"--input={missing}",
                   f"--output_dir={tmp_path / 'd'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: no such file"]


# ---------------------------------------------------------------------------------------------
# extraction inputs: preprocessing.images
# ---------------------------------------------------------------------------------------------

def test_list_images_natural_order(tmp_path):
    for name in ["10.png", "2.png", "1.jpg", "b10.webp", "B3.PNG", "x.tiff", "notes.txt",
                 ".hidden.png", "frame.jpeg", "a.bmp", "c.tif"]:
        (tmp_path / name).write_bytes(b"x")
    names = [os.path.basename(p) for p in images.list_images(str(tmp_path))]
    assert names == ["1.jpg", "2.png", "10.png", "a.bmp", "B3.PNG", "b10.webp", "c.tif",
                     "frame.jpeg", "x.tiff"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no images \(png, jpg"):
        images.list_images(str(tmp_path / "empty"))


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_read_image_formats_and_channels(tmp_path, ext):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / f"c.{ext}"), rgb[:, :, ::-1])
    np.testing.assert_array_equal(images.read_image(str(tmp_path / f"c.{ext}")), rgb)
    grey = rgb[:, :, 0]
    cv2.imwrite(str(tmp_path / f"g.{ext}"), grey)
    np.testing.assert_array_equal(images.read_image(str(tmp_path / f"g.{ext}")),
                                  np.repeat(grey[:, :, None], 3, axis=2))


def test_read_image_alpha_and_16_bit(tmp_path):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgba[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "a.png")), rgba[:, :, :3])
    deep = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep[:, :, ::-1])
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "d.png")),
                                  np.round(deep / 257.0).astype(np.uint8))


def test_read_image_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.png: empty file \(0 bytes\)$"):
        images.read_image(str(tmp_path / "empty.png"))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(UserError, match=r"text\.jpg: not a readable image$"):
        images.read_image(str(tmp_path / "text.jpg"))
    with pytest.raises(UserError, match=r"empty\.png: empty file"):
        images.open_source(str(tmp_path / "empty.png"))


def test_image_folder_skips_a_bad_image_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(3)]
    for i, picture in enumerate(pictures):
        cv2.imwrite(str(tmp_path / f"{i * 2}.png"), picture[:, :, ::-1])
    (tmp_path / "1.png").write_bytes(b"")  # between 0.png and 2.png
    source = images.open_source(str(tmp_path))
    assert (source.kind, source.frame_count, source.fps) == ("images", 4, None)
    with caplog.at_level(logging.WARNING, logger="preprocessing.images"):
        got = list(source.iter_frames())
    assert [(i, pts) for i, pts, _ in got] == [(0, None), (1, None), (2, None), (3, None)]
    assert got[1][2] is None
    for (_, _, image), picture in zip([got[0], got[2], got[3]], pictures):
        np.testing.assert_array_equal(image, picture)
    assert any("1.png: empty file" in r.getMessage() for r in caplog.records)
    assert [i for i, _, _ in source.iter_frames(start=2)] == [2, 3]


def test_folder_hash_covers_names_and_bytes(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))
    first = images.open_source(str(tmp_path)).content_hash()
    cv2.imwrite(str(tmp_path / "2.png"), np.full((4, 4, 3), 9, np.uint8))
    changed = images.open_source(str(tmp_path)).content_hash()
    os.rename(tmp_path / "2.png", tmp_path / "3.png")
    renamed = images.open_source(str(tmp_path)).content_hash()
    assert len({first, changed, renamed}) == 3


def test_describe_video_and_single_image(carphone, carphone_frames, tmp_path):
    source = images.open_source(carphone)
    entry = json.loads(json.dumps(source.describe()))
    assert entry["sha256"] == hashlib.sha256(open(carphone, "rb").read()).hexdigest()
    assert {k: entry[k] for k in ("kind", "name", "frames", "width", "height", "time_base",
                                  "vfr", "has_audio", "files")} == {
        "kind": "video", "name": "carphone_pristine.mp4", "frames": 120, "width": 176,
        "height": 144, "time_base": "1/30000", "vfr": False, "has_audio": False, "files": None}
    assert abs(entry["fps"] - 29.97) < 0.01
    index, pts, image = next(source.iter_frames(start=30))
    assert (index, pts) == (30, carphone_frames[30].pts)
    np.testing.assert_array_equal(image, carphone_frames[30].image)

    still = tmp_path / "still.jpg"
    cv2.imwrite(str(still), np.zeros((20, 30, 3), np.uint8))
    entry = images.open_source(str(still)).describe()
    assert (entry["kind"], entry["frames"], entry["width"], entry["height"]) == ("image", 1, 30, 20)
    assert entry["sha256"] == hashlib.sha256(still.read_bytes()).hexdigest()


def test_open_source_errors(tmp_path):
    with pytest.raises(UserError, match=r"nothing\.mp4: no such file or folder"):
        images.open_source(str(tmp_path / "nothing.mp4"))
    (tmp_path / "fake.mp4").write_text("hello")
    with pytest.raises(UserError, match=r"fake\.mp4: not a readable video"):
        images.open_source(str(tmp_path / "fake.mp4"))
