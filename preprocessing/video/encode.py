"""`VideoWriter` / `write_video`: H.264 (+ the audio of another file), tagged with colour
metadata, written to a temp name that is renamed only on success.

Untagged output is tagged BT.709 when HD and BT.601 otherwise (`probing.is_hd`), the guess the
decoder makes for untagged input, so a decode -> encode round trip keeps colours.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from fractions import Fraction
from typing import Iterable

import numpy as np

from preprocessing.errors import UserError
from preprocessing.video.ffmpeg import check_is_file, ffmpeg_exe, ffmpeg_reason
from preprocessing.video.probing import SCALE_MATRICES, VideoInfo, is_hd, parse_header

log = logging.getLogger(__name__)

_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


def _encode_filter(color: VideoInfo | None, width: int, height: int) -> str:
    """RGB -> yuv420p conversion with `color`'s matrix, and the colour tags for the stream.

    The tags go through `setparams` because ffmpeg takes them from the frames; the
    `-color_primaries` style output options are overridden by the filter's output."""
    hd = is_hd(width, height)
    default = "bt709" if hd else "smpte170m"
    matrix = color.color_matrix if color and color.color_matrix in SCALE_MATRICES else default
    primaries = color.color_primaries if color and color.color_primaries else default
    transfer = color.color_transfer if color and color.color_transfer else default
    return (f"scale=out_color_matrix={matrix}:out_range=tv,format=yuv420p,"
            f"setparams=colorspace={matrix}:color_primaries={primaries}:color_trc={transfer}"
            ":range=tv")


def _audio_codec(path: str) -> str:
    """Codec name of the first audio stream of `path` ('' if it has none)."""
    check_is_file(path, "media file")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          capture_output=True, text=True, errors="replace")
    lines = proc.stderr.splitlines()
    if not any(s.startswith("Input #0") for s in lines):
        reason = ffmpeg_reason(proc.stderr)
        raise UserError(f"{path}: not a readable media file (ffmpeg: {reason})")
    return parse_header(lines)[2]


class VideoWriter:
    """Encodes RGB frames to H.264 in an .mp4/.mov/.mkv, optionally with another file's audio.

    * `lossless=True` uses libx264rgb at crf 0: the RGB frames come back bit-exact (a YUV
      4:4:4 encode would still round each pixel through the colour matrix). Fewer players
      support it; it is meant for intermediate files.
    * otherwise yuv420p at `crf` (18 is visually lossless), tagged with `color`'s matrix,
      primaries and transfer, or BT.709 for HD / BT.601 for SD when unknown.
    * `audio_from`: the first audio stream of that file is copied when it is AAC, else encoded
      to AAC 192k, and kept whole (`-shortest` would cut the last video frame when the audio
      ends a few milliseconds early, as AAC priming makes it do).
    * `timestamps=True`: `write(frame, pts)` places frames by timestamp on the constant
      `fps` grid, repeating or dropping frames like ffmpeg's `-fps_mode cfr`, so a variable
      frame rate source keeps its audio in sync.
    * Odd sizes are padded by one edge row/column for yuv420p.
    The file appears under its name only after ffmpeg finished successfully.
    """

    def __init__(self, path: str, fps: float | Fraction, size: tuple[int, int], *,
                 audio_from: str | None = None, crf: int = 18, lossless: bool = False,
                 color: VideoInfo | None = None, timestamps: bool = False,
                 metadata: dict[str, str] | None = None):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _MUXERS:
            raise UserError(f"{path}: unsupported output type {ext!r}; use one of "
                            f"{', '.join(sorted(_MUXERS))}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        width, height = int(size[0]), int(size[1])
        self.path, self.size, self.timestamps = path, (width, height), timestamps
        self.fps = Fraction(fps).limit_denominator(1001)
        self._pad = (0, 0) if lossless else (height % 2, width % 2)
        self._pending: np.ndarray | None = None
        self._next_tick = 0
        self.frames_written = 0
        audio_codec = _audio_codec(audio_from) if audio_from else ""
        if audio_from and not audio_codec:
            log.info("%s: has no audio stream; writing video only", audio_from)

        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial",
                                         dir=folder)
        os.close(fd)
        self._log = tempfile.TemporaryFile()

        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-framerate", str(self.fps), "-i", "pipe:0"]
        if audio_codec:
            cmd += ["-i", audio_from, "-map", "0:v:0", "-map", "1:a:0"]
            cmd += (["-c:a", "copy"] if audio_codec == "aac" else
                    ["-c:a", "aac", "-b:a", "192k", "-ar", "48000"])
        if lossless:
            cmd += ["-c:v", "libx264rgb", "-crf", "0", "-pix_fmt", "rgb24"]
        else:
            cmd += ["-vf", _encode_filter(color, width, height),
                    "-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv420p"]
        for key, value in (metadata or {}).items():
            cmd += ["-metadata", f"{key}={value}"]
        if ext in (".mp4", ".mov"):
            cmd += ["-movflags", "+faststart"]
        cmd += ["-f", _MUXERS[ext], self._tmp]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._log)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray, pts: float | None = None) -> None:
        """Adds one RGB uint8 [H, W, 3] frame; `pts` (seconds) only with timestamps=True."""
        width, height = self.size
        if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected uint8 frame of shape {(height, width, 3)}, "
                             f"got {frame.dtype} {frame.shape}")
        if not self.timestamps:
            self._send(frame)
            return
        if pts is None:
            raise ValueError(f"{self.path}: writer was opened with timestamps=True; pass pts")
        tick = round(pts * self.fps)
        if self._pending is not None:
            while self._next_tick < tick:
                self._send(self._pending)
        self._pending = frame

    def _send(self, frame: np.ndarray) -> None:
        if any(self._pad):
            frame = np.pad(frame, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            reason = self._ffmpeg_log()
            self.abort()
            raise UserError(f"{self.path}: encoding failed (ffmpeg: {reason})") from None
        self.frames_written += 1
        self._next_tick += 1

    def _ffmpeg_log(self) -> str:
        self._log.seek(0)
        return ffmpeg_reason(self._log.read().decode("utf-8", "replace"))

    def close(self) -> None:
        """Finishes the file and moves it to its final name."""
        if self._pending is not None:
            self._send(self._pending)
            self._pending = None
        if self.frames_written == 0:
            self.abort()
            raise UserError(f"{self.path}: no frames to write")
        self._proc.stdin.close()
        if self._proc.wait() != 0:
            reason = self._ffmpeg_log()
            self.abort()
            raise UserError(f"{self.path}: encoding failed (ffmpeg: {reason})")
        self._log.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; a finished video is not
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Stops ffmpeg and deletes the partial file."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self._log.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


def write_video(path: str, frames: Iterable[np.ndarray], fps: float | Fraction,
                **kw) -> int:
    """Encodes an iterable of RGB frames (size taken from the first); returns the frame count."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise UserError(f"{path}: no frames to write")
    with VideoWriter(path, fps, (first.shape[1], first.shape[0]), **kw) as writer:
        writer.write(first)
        for frame in frames:
            writer.write(frame)
    return writer.frames_written
