"""Faceset read-rate benchmark: bytes per face and random batch reads per image codec.

Builds facesets of N real-looking faces (crops of the astronaut portrait with jittered position,
scale, rotation and colour, plus jittered elliptical masks) through FacesetWriter, then reads
random batches of `faces` the way a training loader does and prints a table:

* cold:     page cache dropped (posix_fadvise DONTNEED on every file), TensorStore cache off,
            one epoch's worth of random batches: disk + decode;
* no-cache: files in the OS page cache, TensorStore cache off: decode cost (steady state);
* warm:     TensorStore cache holding the whole faceset (after one pass): copy cost.

MB/s counts decoded bytes delivered. Run: python -m benchmarks.faceset_read [--faces=2048]
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Sequence

import cv2
import numpy as np
from absl import app, flags

from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset, FacesetWriter
from preprocessing.faceset.store import IMAGE_CODECS
from preprocessing.samples import astronaut_rgb

_FACES = flags.DEFINE_integer("faces", 2048, "faces per faceset")
_SIZES = flags.DEFINE_list("sizes", ["128", "256"], "face sizes in pixels")
_CODECS = flags.DEFINE_list("codecs", ["raw", "lz4", "zstd"], f"image codecs, from {sorted(IMAGE_CODECS)}")
_BATCH = flags.DEFINE_integer("batch", 64, "faces per random batch")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "time spent per steady-state measurement")
_DIR = flags.DEFINE_string("dir", None, "where to build the facesets (default: a temporary folder)")


def face_crops(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n jittered face crops [n,size,size,3] and matching elliptical masks [n,size,size,1]."""
    rng = np.random.default_rng(seed)
    portrait = astronaut_rgb().astype(np.float32)
    faces = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size, 1), np.uint8)
    for i in range(n):
        cx, cy = 235 + rng.normal(0, 8), 135 + rng.normal(0, 8)
        side = 180 * np.exp(rng.normal(0, 0.08))
        angle = rng.normal(0, 8)
        m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
        m[:, 2] += (size / 2 - cx, size / 2 - cy)
        crop = cv2.warpAffine(portrait, m, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
        crop = crop * rng.uniform(0.8, 1.2, 3) + rng.uniform(-15, 15)
        faces[i] = np.clip(crop, 0, 255).astype(np.uint8)
        centre = (int(size * (0.5 + rng.normal(0, 0.02))), int(size * (0.55 + rng.normal(0, 0.02))))
        axes = (int(size * 0.3), int(size * 0.42))
        cv2.ellipse(masks[i], centre, axes, float(rng.normal(0, 8)), 0, 360, 255, -1)
    return faces, masks


def build(path: str, faces: np.ndarray, masks: np.ndarray, codec: str) -> float:
    """Writes a faceset of faces+masks (one face per frame); returns faces written per second."""
    start = time.perf_counter()
    with FacesetWriter(path, size=faces.shape[1], face_type=FaceType.WHOLE_FACE,
                       producer={"program": "benchmarks.faceset_read"}, arrays=["faces", "masks"],
                       image_codec=codec) as writer:
        source = writer.add_source({"path": "astronaut.png", "sha256": "0" * 64})
        for i in range(len(faces)):
            writer.add_frame(source, i, {"faces": faces[i:i + 1], "masks": masks[i:i + 1]})
    return len(faces) / (time.perf_counter() - start)


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def drop_page_cache(path: str) -> None:
    """Evicts the folder's (clean, fsynced) file pages so the next reads hit the disk."""
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def random_reads(faceset: Faceset, batch: int, rng: np.random.Generator, *,
                 batches: int | None = None, seconds: float | None = None) -> float:
    """Faces per second over `batches` random batches, or for `seconds`."""
    start, done = time.perf_counter(), 0
    while (batches is not None and done < batches * batch) or (
            seconds is not None and time.perf_counter() - start < seconds):
        faceset.read("faces", rng.integers(0, len(faceset), batch))
        done += batch
    return done / (time.perf_counter() - start)


_MODES = ("cold", "no-cache", "warm")


def measure(path: str, batch: int, seconds: float) -> dict[str, float]:
    rng = np.random.default_rng(0)
    drop_page_cache(path)
    cold = Faceset.open(path, cache_bytes=0)
    rates = {"cold": random_reads(cold, batch, rng, batches=max(1, len(cold) // batch))}
    rates["no-cache"] = random_reads(Faceset.open(path, cache_bytes=0), batch, rng, seconds=seconds)
    warm = Faceset.open(path, cache_bytes=8 << 30)
    warm.to_numpy("faces")
    rates["warm"] = random_reads(warm, batch, rng, seconds=seconds)
    return rates


def main(argv: Sequence[str]) -> None:
    del argv
    if _DIR.value:
        run(_DIR.value)
    else:
        with tempfile.TemporaryDirectory(prefix="faceset_read_") as root:
            run(root)


def run(root: str) -> None:
    print(f"{_FACES.value} faces per faceset, random batches of {_BATCH.value}, in {root} "
          f"({os.cpu_count()} CPUs)")
    print(f"{'size':>4} {'codec':>5} {'face B':>8} {'ratio':>5} {'mask B':>7} {'write/s':>8}"
          + "".join(f" {k + ' f/s':>13} {'MB/s':>6}" for k in _MODES))
    cold = {}
    for size in map(int, _SIZES.value):
        faces, masks = face_crops(_FACES.value, size)
        raw_bytes = size * size * 3
        for codec in _CODECS.value:
            path = os.path.join(root, f"{size}_{codec}")
            write_rate = build(path, faces, masks, codec)
            face_bytes = folder_bytes(os.path.join(path, "faces")) / len(faces)
            mask_bytes = folder_bytes(os.path.join(path, "masks")) / len(faces)
            rates = measure(path, _BATCH.value, _SECONDS.value)
            cold[f"{size}px {codec}"] = rates["cold"]
            print(f"{size:>4} {codec:>5} {face_bytes:>8.0f} {face_bytes / raw_bytes:>5.2f} "
                  f"{mask_bytes:>7.0f} {write_rate:>8.0f}"
                  + "".join(f" {rates[k]:>13.0f} {rates[k] * raw_bytes / 1e6:>6.0f}" for k in _MODES),
                  flush=True)
    print("done: cold random reads " + ", ".join(f"{k} {v:.0f} faces/s" for k, v in cold.items()))


if __name__ == "__main__":
    app.run(main)
