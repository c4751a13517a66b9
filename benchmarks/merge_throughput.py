"""Merge throughput: the compiled merge program against DFL's per-face OpenCV algorithm.

  python -m benchmarks.merge_throughput [--sizes=176x144,1280x720,1920x1080] [--modes=overlay,rct,seamless]
      [--frames=24] [--archi=liae-ud --resolution=128]

For each frame size (one face per frame) and mode it times, side by side in one run:
* ours: `engine.merge.program.Merger.merge` over in-memory frames (region cut, device program,
  compositing; decoding and encoding excluded, they are the same ffmpeg work for both);
* reference: `benchmarks.merge_reference.merge_face`, DFL's steps with OpenCV on whole frames
  (cv2.warpAffine, cv2.resize, cv2.seamlessClone) and NumPy colour transfer, calling the same
  network one face at a time (jitted, on the default device) as DFL's merger does.
Both use the same model (random weights: speed does not depend on them). Modes: overlay (no
colour transfer), rct (overlay + rct), seamless. frames/s is frames merged per second after one
warm-up pass; ratio = ours / reference (targets: >= 1 on a 2-core CPU, >= 20 on one GPU at 1080p).

Frames: the astronaut clip's frames scaled so the face spans ~1/4 of the frame height and centred
on a canvas of the size; its landmarks come from one detection per frame (the real detector).
"""
from __future__ import annotations

import platform
import time
from typing import Sequence

import cv2
import jax
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.merge_reference import merge_face
from configs.merge import get_config as merge_config
from configs.saehd import get_config as saehd_config
from engine.merge.faces import Face, FaceTable
from engine.merge.model import MergeModel
from engine.merge.options import Keyframes, from_config
from engine.merge.program import Merger
from engine.trainer import compute_dtype, init_model
from preprocessing import samples
from preprocessing.detect.pipeline import BlazeFaceMeshDetector
from preprocessing.face_types import FaceType

_SIZES = flags.DEFINE_list("sizes", ["176x144", "1280x720", "1920x1080"], "Frame sizes WxH.")
_MODES = flags.DEFINE_list("modes", ["overlay", "rct", "seamless"], "overlay | rct | seamless.")
_FRAMES = flags.DEFINE_integer("frames", 24, "Frames timed per case.")
_ARCHI = flags.DEFINE_string("archi", "liae-ud", "Model architecture.")
_RESOLUTION = flags.DEFINE_integer("resolution", 0, "Model resolution (0: 128 on GPU, 64 on CPU).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Faces per device call.")
_MODE_OPTIONS = {"overlay": dict(mode="overlay", color_transfer="none"),
                 "rct": dict(mode="overlay", color_transfer="rct"),
                 "seamless": dict(mode="seamless", color_transfer="none")}


def make_model(resolution: int) -> MergeModel:
    cfg = saehd_config(_ARCHI.value)
    cfg.model.resolution = resolution
    dtype = compute_dtype("auto")
    graphdef, params = init_model(cfg, dtype)
    return MergeModel(graphdef, params, resolution, FaceType.FULL, 0, cfg.to_dict(), dtype)


def make_frames(width: int, height: int, count: int) -> tuple[list[np.ndarray], FaceTable]:
    """`count` frames of the astronaut clip on a width x height canvas, with detected landmarks."""
    detector = BlazeFaceMeshDetector()
    frames, by_frame = [], {}
    scale = height / 1.6 / samples.CLIP_SIZE[1]  # the clip's face spans ~150 of its 384 px
    side = max(8, int(samples.CLIP_SIZE[0] * scale))
    for i, image in enumerate(samples.astronaut_frames(count)):
        canvas = np.zeros((height, width, 3), np.uint8)
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        y0, x0 = (height - side) // 2, (width - side) // 2
        canvas[y0:y0 + side, x0:x0 + side] = small[:height - y0, :width - x0]
        faces = detector.detect(canvas)
        if faces:
            by_frame[i] = [Face(0, faces[0].landmarks.astype(np.float64), (0.0, 0.0))]
        frames.append(canvas)
    if not by_frame:
        raise RuntimeError(f"no face found in the {width}x{height} benchmark frames")
    return frames, FaceTable(by_frame)


def time_ours(merger: Merger, frames: list[np.ndarray]) -> float:
    def run():
        for _ in merger.merge(((i, None, f) for i, f in enumerate(frames)), chunk_frames=32):
            pass
    run()  # compile + warm-up
    start = time.perf_counter()
    run()
    return len(frames) / (time.perf_counter() - start)


def time_reference(model: MergeModel, table: FaceTable, frames: list[np.ndarray], options: dict) -> float:
    swap = jax.jit(lambda p, x: nnx.merge(model.graphdef, p).swap(x))

    def predict(face):
        return tuple(np.asarray(o[0], np.float32) for o in swap(model.params, face[None].astype(model.dtype)))

    def run():
        for i, frame in enumerate(frames):
            for face in table.faces_of(i):
                merge_face(frame, face.landmarks, predict, model.resolution, model.face_type,
                           mode=options["mode"], color_transfer=options["color_transfer"],
                           mask_mode="learned-prd*learned-dst")
    run()
    start = time.perf_counter()
    run()
    return len(frames) / (time.perf_counter() - start)


def main(argv: Sequence[str]) -> None:
    del argv
    device = jax.devices()[0]
    resolution = _RESOLUTION.value or (64 if device.platform == "cpu" else 128)
    model = make_model(resolution)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, device: {device.device_kind}, "
          f"model {_ARCHI.value} {resolution}px full face, {_FRAMES.value} frames per case, batch {_BATCH.value}")
    print("| frame | mode | ours frames/s | OpenCV reference frames/s | ratio |")
    print("|---|---|---|---|---|")
    for size in _SIZES.value:
        width, height = (int(v) for v in size.lower().split("x"))
        frames, table = make_frames(width, height, _FRAMES.value)
        for mode in _MODES.value:
            cfg = merge_config("overlay")
            cfg.update(mask_mode="learned-prd*learned-dst", **_MODE_OPTIONS[mode])
            options = from_config(cfg)
            merger = Merger(model, table, Keyframes(options, []), batch_size=_BATCH.value)
            ours = time_ours(merger, frames)
            ref = time_reference(model, table, frames, _MODE_OPTIONS[mode])
            print(f"| {width}x{height} | {mode} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
