"""Sample media: the bundled files and the generated astronaut clip (preprocessing.samples).

References: hashlib / filecmp for copies, OpenCV phase correlation for the motion, a float64
NumPy FFT of the audio decoded by the ffmpeg CLI for the tone.
"""
from __future__ import annotations

import filecmp
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from preprocessing import samples, video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return samples.make_astronaut_clip(str(tmp_path_factory.mktemp("clip") / "astro.mp4"))


@pytest.fixture(scope="module")
def decoded(clip) -> np.ndarray:
    return np.stack([f.image for f in video.read_frames(clip)])


def test_bundled_media():
    assert os.path.getsize(samples.carphone_path()) > 100_000
    portrait = samples.astronaut_rgb()
    assert portrait.shape == (512, 512, 3) and portrait.dtype == np.uint8
    # the orange suit at the bottom left: red well above blue
    r, g, b = portrait[400:450, 50:100].reshape(-1, 3).mean(0)
    assert r > b + 80
    faces, non_faces = samples.lfw_subset()
    assert faces.shape == non_faces.shape == (100, 25, 25)
    assert 0.0 <= faces.min() and faces.max() <= 1.0


def test_clip_format_and_audio_stream(clip):
    info = video.probe(clip)
    assert (info.width, info.height, info.frame_count) == (384, 384, 120)
    assert info.fps == pytest.approx(30.0, abs=1e-6) and not info.vfr
    assert info.codec == "h264" and info.has_audio
    assert info.audio_duration == pytest.approx(4.0, abs=0.05)
    assert info.tags["comment"].startswith("faceswap-jax astronaut_motion v1")


def test_clip_is_the_deterministic_frames_encoded(decoded):
    first = list(samples.astronaut_frames(frames=120))
    again = list(samples.astronaut_frames(frames=3))
    other_seed = next(samples.astronaut_frames(frames=1, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert np.abs(other_seed.astype(int) - first[0]).mean() > 5
    mse = np.mean((decoded.astype(np.float64) - np.stack(first)) ** 2)
    assert 10 * np.log10(255.0**2 / mse) > 38.0  # H.264 crf 18 of a smooth portrait


def test_motion_is_smooth_and_keeps_the_head_in_frame(decoded):
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float64) for f in decoded]
    window = cv2.createHanningWindow((384, 384), cv2.CV_64F)
    steps = np.array([cv2.phaseCorrelate(a, b, window)[0] for a, b in zip(grey, grey[1:])])
    path = np.cumsum(steps, axis=0)
    assert np.ptp(path, axis=0).max() > 10.0  # it moves ...
    assert np.linalg.norm(steps, axis=1).max() < 3.0  # ... by less than 3 px per frame ...
    assert np.abs(np.diff(steps, axis=0)).max() < 1.0  # ... without jerks
    # the head (hair top to chin, ear to ear in the portrait) maps inside every frame
    head = np.array([[150, 15], [300, 15], [150, 195], [300, 195]], np.float64)[:, None]
    phases = np.random.default_rng(0).uniform(0.0, 2.0 * np.pi, 9)
    for i in range(120):
        corners = cv2.perspectiveTransform(head, samples._motion(i / 30, phases, (384, 384)))
        assert corners.min() > 5 and corners.max() < 384 - 5


def test_lighting_drifts(decoded):
    means = decoded.reshape(120, -1, 3).mean(1)  # per frame, per channel
    brightness = means.mean(1)
    warmth = means[:, 0] - means[:, 2]
    assert np.ptp(brightness) > 8.0 and np.abs(np.diff(brightness)).max() < 2.0
    assert np.ptp(warmth) > 5.0


def test_audio_is_a_440_hz_tone_with_an_envelope(clip):
    pcm = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", clip, "-map", "0:a:0",
                          "-f", "s16le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, check=True).stdout
    audio = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768.0
    assert len(audio) == pytest.approx(4 * 48000, abs=2048)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak = np.fft.rfftfreq(len(audio), 1 / 48000)[np.argmax(spectrum)]
    assert abs(peak - 440.0) < 1.0
    rms = [np.sqrt(np.mean(audio[s:s + 4800] ** 2)) for s in range(4800, len(audio) - 9600, 4800)]
    assert max(rms) > 2.5 * min(rms)  # envelope 0.25 +- 0.2: peaks 0.45, troughs 0.05


def test_cli_writes_both_clips_then_keeps_them(tmp_path):
    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "preprocessing.samples",
                               f"--output={tmp_path}"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    first = run()
    assert first.returncode == 0, first.stderr
    assert "wrote 2" in first.stdout
    assert filecmp.cmp(tmp_path / "carphone.mp4", samples.carphone_path(), shallow=False)
    assert video.probe(str(tmp_path / "astronaut_motion.mp4")).frame_count == 120
    stamps = {n: os.stat(tmp_path / n).st_mtime_ns for n in os.listdir(tmp_path)}
    second = run()
    assert second.returncode == 0 and "wrote 0" in second.stdout
    assert {n: os.stat(tmp_path / n).st_mtime_ns for n in os.listdir(tmp_path)} == stamps
    missing = subprocess.run([sys.executable, "-m", "preprocessing.samples"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: --output")
