"""Reproducible encodes: the same input and settings give the same bytes on any machine.

libx264 is deterministic for a fixed thread count, but ffmpeg picks the count from the CPU, so
every encode here runs with `-threads 1`. `+bitexact` keeps the muxer and encoder from writing
their version strings, and `-map_metadata -1` drops the input's tags (creation times). Audio is
dropped: the data set is about pixels, and an audio track would only have to be matched too.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from fractions import Fraction
from typing import Iterable

import numpy as np

from preprocessing.errors import UserError
from preprocessing.video import VideoInfo, ffmpeg_exe
from preprocessing.video.ffmpeg import ffmpeg_reason
from preprocessing.video.probing import SCALE_MATRICES, is_hd

_COMMON = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]
_OUTPUT = ["-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
           "-map_chapters", "-1", "-movflags", "+faststart", "-f", "mp4"]
VIDEO_SETTINGS = {"codec": "libx264", "preset": "medium", "pix_fmt": "yuv420p", "threads": 1, "audio": None}
MASK_SETTINGS = {"codec": "libx264rgb", "crf": 0, "preset": "medium", "pix_fmt": "rgb24", "threads": 1}


@functools.cache
def ffmpeg_version() -> str:
    """ffmpeg's first `-version` line: another build may encode differently, so the manifest says."""
    out = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _matrix(info: VideoInfo) -> str:
    """The YUV matrix to encode with: the source's own, else the decoder's guess for untagged video."""
    if info.color_matrix in SCALE_MATRICES:
        return info.color_matrix
    return "bt709" if is_hd(info.width, info.height) else "smpte170m"


def _run(cmd: list[str], target: str, stdin_frames: Iterable[np.ndarray] | None = None) -> int:
    """Runs an ffmpeg encode into a temp file renamed to `target` on success; returns frames piped."""
    tmp = target + ".partial"
    cmd = [ffmpeg_exe(), *_COMMON, *cmd, tmp]
    count = 0
    try:
        if stdin_frames is None:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            code, log = proc.returncode, proc.stderr
        else:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                for frame in stdin_frames:
                    proc.stdin.write(np.ascontiguousarray(frame).data)
                    count += 1
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped early; its log says why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            log = proc.stderr.read().decode("utf-8", "replace")
            code = proc.wait()
        if code != 0:
            raise UserError(f"{target}: encoding failed (ffmpeg: {ffmpeg_reason(log)})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


def transcode(info: VideoInfo, target: str, crf: int) -> None:
    """Re-encodes the video of `info` to H.264 yuv420p at `crf`, frame for frame (no drops or
    duplicates: the frame labels stay valid), keeping its colour matrix."""
    m = _matrix(info)
    vf = (f"scale=in_color_matrix={m}:out_color_matrix={m}:out_range=tv,format=yuv420p,"
          f"setparams=colorspace={m}:range=tv")
    _run(["-threads", "1", "-i", info.path, "-map", "0:v:0", "-vf", vf, "-fps_mode", "passthrough",
          "-c:v", "libx264", "-preset", VIDEO_SETTINGS["preset"], "-crf", str(crf), "-pix_fmt", "yuv420p",
          *_OUTPUT], target)


def write_mask_video(target: str, masks: Iterable[np.ndarray], size: tuple[int, int], fps: float) -> int:
    """Encodes bool [H, W] masks losslessly as 0/255 RGB frames (read back bit-exact); returns the count."""
    width, height = size
    rate = Fraction(fps or 25.0).limit_denominator(1001)
    frames = (np.repeat(np.where(m, np.uint8(255), np.uint8(0))[..., None], 3, axis=2) for m in masks)
    return _run(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(rate),
                 "-i", "pipe:0", "-c:v", "libx264rgb", "-preset", MASK_SETTINGS["preset"], "-crf", "0",
                 "-pix_fmt", "rgb24", *_OUTPUT], target, frames)
