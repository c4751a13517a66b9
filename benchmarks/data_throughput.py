"""Input-pipeline benchmark: how fast TrainData.next_batch() delivers device batches.

For faceset sizes 128 and 256 px and global batch sizes 8..64 it times next_batch() (src and
dst, every array on the device: jax.block_until_ready on each batch) in three modes:

* resident:  both facesets on the device, batches gathered there by index;
* streamed:  TensorStore batch reads on `--prefetch` background threads, TensorStore's 1 GiB
             cache of decoded faces as TrainData opens it (a faceset this small ends up cached);
* no-cache:  streamed with that cache off, so every face is decoded again from the OS page
             cache: the steady state of a faceset much larger than the cache.

Columns: load = seconds to open both facesets (base matrices, upload if resident); batches/s
(one batch = B src + B dst faces); faces/s = 2 * B * batches/s; "3x steps/s" = the fastest train
step this rate still feeds three times over (the issue's target for the input pipeline). The
src and dst sides read the same faceset (built from jittered astronaut crops, see
benchmarks/faceset_read.py), so both sides cost what a real one would.

Run: python -m benchmarks.data_throughput [--faces=2048 --sizes=128,256 --batches=8,16,32,64]
(--faces, --sizes, --seconds and --dir are benchmarks.faceset_read's flags, shared because its
face_crops builds the data; its --batch and --codecs do not apply here.)
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Iterator, Sequence

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks.faceset_read import face_crops
from configs.saehd import get_config
from engine import parallel
from engine.data import TrainData
from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset, FacesetWriter
from preprocessing.pose import LANDMARKS_68_3D

FLAGS = flags.FLAGS
_BATCHES = flags.DEFINE_list("batches", ["8", "16", "32", "64"], "global batch sizes")
_MODES = flags.DEFINE_list("modes", ["resident", "streamed", "no-cache"], "pipeline modes")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "batches in flight per streamed side")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "model resolution (base matrices only)")


def build(path: str, n: int, size: int) -> None:
    """A whole_face faceset of n jittered astronaut crops with masks, plausible landmarks and
    poses (yaw spread evenly over [-1, 1] rad, so uniform_yaw has bins to draw from)."""
    faces, masks = face_crops(n, size)
    rng = np.random.default_rng(1)
    landmarks = (LANDMARKS_68_3D[None, :, :2] * 0.25 * size + size / 2
                 + rng.normal(0, 0.01 * size, (n, 1, 2))).astype(np.float32)
    pose = np.zeros((n, 3), np.float32)
    pose[:, 1] = np.linspace(-1.0, 1.0, n)
    with FacesetWriter(path, size=size, face_type=FaceType.WHOLE_FACE,
                       producer={"program": "benchmarks.data_throughput"},
                       arrays=["faces", "masks", "eyes_mouth_masks", "landmarks", "pose"]) as writer:
        source = writer.add_source({"path": "astronaut.png", "sha256": "0" * 64})
        for i in range(n):
            writer.add_frame(source, i, {"faces": faces[i:i + 1], "masks": masks[i:i + 1],
                                         "eyes_mouth_masks": masks[i:i + 1] // 2,
                                         "landmarks": landmarks[i:i + 1], "pose": pose[i:i + 1]})


@contextlib.contextmanager
def tensorstore_cache(cache_bytes: int | None) -> Iterator[None]:
    """Makes Faceset.open use `cache_bytes` (None: leave TrainData's default alone)."""
    if cache_bytes is None:
        yield
        return
    original = Faceset.open.__func__
    Faceset.open = classmethod(lambda cls, path, **kw: original(cls, path, cache_bytes=cache_bytes))
    try:
        yield
    finally:
        Faceset.open = classmethod(original)


def measure(path: str, mode: str, batch: int, seconds: float) -> tuple[float, float]:
    """(load seconds, batches per second) of next_batch() in one mode."""
    cfg = get_config("tiny")
    cfg.train.batch_size = batch
    cfg.data.prefetch = _PREFETCH.value
    cfg.data.device_budget_mb = 1 << 20 if mode == "resident" else 0
    mesh = parallel.make_mesh(cfg.mesh)
    start = time.perf_counter()
    with tensorstore_cache(0 if mode == "no-cache" else None):
        data = TrainData(path, path, cfg, mesh, FaceType.FULL, _RESOLUTION.value, seed=0)
    load = time.perf_counter() - start
    with data:
        for _ in range(3):  # compile the gather, fill the prefetch queue
            jax.block_until_ready(data.next_batch())
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            jax.block_until_ready(data.next_batch())
            done += 1
        return load, done / (time.perf_counter() - start)


def run(root: str) -> None:
    print(f"{FLAGS.faces} faces per faceset, prefetch {_PREFETCH.value}, {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs, in {root}")
    print(f"{'size':>4} {'mode':>9} {'batch':>5} {'load s':>6} {'batches/s':>9} {'faces/s':>8} "
          f"{'3x steps/s':>10}")
    for size in map(int, FLAGS.sizes):
        path = os.path.join(root, f"faces_{size}")
        build(path, FLAGS.faces, size)
        for mode in _MODES.value:
            for batch in map(int, _BATCHES.value):
                load, rate = measure(path, mode, batch, FLAGS.seconds)
                print(f"{size:>4} {mode:>9} {batch:>5} {load:>6.2f} {rate:>9.1f} "
                      f"{2 * batch * rate:>8.0f} {rate / 3:>10.1f}", flush=True)


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # TrainData's per-faceset lines would break the table
    if FLAGS.dir:
        run(FLAGS.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="data_throughput_") as root:
            run(root)


if __name__ == "__main__":
    app.run(main)
