"""Video in and out through the ffmpeg binary that imageio-ffmpeg ships (no system install).

* `probe` reads a file's facts from one cheap ffmpeg pass: the stream is copied, not decoded,
  into the `framecrc` muxer, which lists every packet's timestamp; one frame is decoded to learn
  the output size and colour tags. The sorted timestamps are the frame index: frame `i` is the
  frame with the i-th smallest presentation time. That makes indices stable between a full
  decode and a seek (resume relies on it) and makes variable frame rate visible.
* `read_frames` streams RGB frames from ffmpeg's rawvideo pipe in constant memory, with the
  real timestamps (parsed from the `showinfo` filter on stderr) and no frame duplication or
  dropping.
* `VideoWriter` encodes H.264 (+ the audio of another file), tagged with colour metadata, to a
  temp name that is renamed only on success.
* `extract_frames` / `assemble_frames` and the `extract` / `assemble` commands are the
  frames <-> video tool (DFL's VideoEd).

Decoded YUV is converted with the stream's own colour matrix; untagged streams are taken as
BT.709 when HD (more than 576 lines or 1024 columns) and BT.601 otherwise, the same guess the
writer tags its output with, so a decode -> encode round trip keeps colours.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from typing import IO, Iterable, Iterator, Sequence

import numpy as np

from preprocessing.errors import UserError, run_app

log = logging.getLogger(__name__)

_NOPTS = -(2**63)  # AV_NOPTS_VALUE, printed by framecrc for packets without a timestamp
_DISCARD_FLAG = 0x4  # AV_PKT_FLAG_DISCARD: packet decoded only to be dropped (mp4 edit lists)
# Matrices the `scale` filter accepts under the same name ffmpeg reports for a stream.
_SCALE_MATRICES = {"bt709", "fcc", "bt470bg", "smpte170m", "smpte240m", "bt2020nc"}
_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
_MAX_LOGGED_DECODE_ERRORS = 10


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the extraction, merge and writer need to know about a video file.

    `frame_pts` holds every frame's presentation timestamp in `time_base` units, sorted (None
    when the container has no usable timestamps); `pts` values handed out by `read_frames` are
    `frame_pts * time_base - start_time` seconds.
    """

    path: str
    width: int
    height: int
    fps: float  # average: (frames - 1) / (last pts - first pts)
    time_base: str  # "1/30000"
    frame_count: int
    duration: float  # seconds of video, first frame start to last frame end
    vfr: bool
    pix_fmt: str
    color_matrix: str | None
    color_range: str | None
    color_primaries: str | None
    color_transfer: str | None
    has_audio: bool
    codec: str
    start_time: float = 0.0  # container start, subtracted from all timestamps
    audio_duration: float | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    frame_pts: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Frame:
    index: int  # rank of this frame's timestamp among all frames of the stream
    pts: float  # seconds from the container start
    image: np.ndarray  # RGB uint8 [H, W, 3]


# ---------------------------------------------------------------------------------------------
# ffmpeg's stderr
# ---------------------------------------------------------------------------------------------

# With `-loglevel level+info` every message starts "[context @ 0x..] [level] " or "[level] ".
_LOG_LINE = re.compile(r"^(?:\[[^\]]* @ [^\]]*\] )?\[(\w+)\] ?(.*)$")
_SHOWINFO_FRAME = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s.*?\bfmt:(\S+).*?\bs:(\d+)x(\d+)")
_SHOWINFO_TB = re.compile(r"config in time_base: (\d+)/(\d+)")
_SHOWINFO_COLOUR = re.compile(
    r"color_range:(\S+) color_space:(\S+) color_primaries:(\S+) color_trc:(\S+)")


def _split_level(line: str) -> tuple[str, str]:
    m = _LOG_LINE.match(line)
    return (m.group(1), m.group(2)) if m else ("info", line)


def _is_problem(level: str) -> bool:
    return level in ("warning", "error", "fatal", "panic")


def _ffmpeg_reason(stderr: str) -> str:
    """ffmpeg's own one-line reason for failing, from its stderr."""
    lines = [_split_level(s)[1].strip() for s in stderr.splitlines()]
    lines = [s for s in lines if s]
    for s in reversed(lines):
        m = re.search(r"Error opening input: (.*)", s)
        if m:
            return m.group(1)
    return lines[-1] if lines else "no output"


def _check_is_file(path: str, what: str = "file") -> None:
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, expected a {what}")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")


# ---------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _StreamPackets:
    """One stream's packet list as the framecrc muxer prints it."""

    media_type: str = ""
    codec: str = ""
    time_base: Fraction = Fraction(1)
    pts: list[int] = dataclasses.field(default_factory=list)
    duration: list[int] = dataclasses.field(default_factory=list)


def _parse_framecrc(text: str) -> dict[int, _StreamPackets]:
    streams: dict[int, _StreamPackets] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            m = re.match(r"#(\w+) (\d+): (.*)", line)
            if m:
                s = streams.setdefault(int(m.group(2)), _StreamPackets())
                key, value = m.group(1), m.group(3).strip()
                if key == "tb":
                    s.time_base = Fraction(value)
                elif key == "media_type":
                    s.media_type = value
                elif key == "codec_id":
                    s.codec = value
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6:
            continue
        flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), 1)
        if flags & _DISCARD_FLAG:
            continue
        s = streams.setdefault(int(fields[0]), _StreamPackets())
        s.pts.append(int(fields[2]))
        s.duration.append(int(fields[3]))
    return streams


def _parse_header(stderr_lines: list[str]) -> tuple[float, float, str, dict[str, str]]:
    """(container duration, start time, codec of the first audio stream or '', format tags)
    from the "Input #0" block that ffmpeg prints."""
    duration = start = 0.0
    audio_codec = ""
    tags: dict[str, str] = {}
    in_input = seen_stream = False
    for line in stderr_lines:
        if line.startswith("Input #0"):
            in_input = True
        elif in_input and not line.startswith(" "):
            break  # "Stream mapping:", "Output #0", ...
        elif in_input:
            if m := re.match(r"\s+Duration: (\d+):(\d+):([\d.]+)", line):
                h, mi, s = m.groups()
                duration = int(h) * 3600 + int(mi) * 60 + float(s)
            if m := re.search(r"\bstart: (-?[\d.]+)", line):
                start = float(m.group(1))
            if line.lstrip().startswith("Stream #"):
                seen_stream = True
                if (m := re.search(r": Audio: (\w+)", line)) and not audio_codec:
                    audio_codec = m.group(1)
            elif not seen_stream and (m := re.match(r"    (\S[^:]*?)\s*: (.*)$", line)):
                tags[m.group(1)] = m.group(2)  # container metadata, 4-space indent
    return duration, start, audio_codec, tags


def _run_ffmpeg(args: Sequence[str], path: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args],
                          capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise UserError(f"{path}: not a readable video (ffmpeg: {_ffmpeg_reason(proc.stderr)})")
    return proc


def _hd(width: int, height: int) -> bool:
    return height > 576 or width > 1024


def _detect_vfr(pts: np.ndarray) -> bool:
    """True when frame intervals differ by more than timestamp rounding (1 unit, or 1 %)."""
    if len(pts) < 3:
        return False
    steps = np.diff(pts)
    median = float(np.median(steps))
    return bool(np.abs(steps - median).max() > max(1.0, 0.01 * median))


def _timing(video: _StreamPackets, decode_log: str,
            container_duration: float) -> tuple[float, float, np.ndarray | None]:
    """(average fps, video duration, sorted frame timestamps or None when unusable)."""
    pts = np.asarray(sorted(video.pts), np.int64)
    usable = len(pts) > 0 and pts[0] != _NOPTS and len(np.unique(pts)) == len(pts)
    if usable and len(pts) > 1:
        first, last = int(pts[0]), int(pts[-1])
        fps = float((len(pts) - 1) / ((last - first) * video.time_base))
        last_duration = max(video.duration[video.pts.index(last)], 0)
        return fps, float((last + last_duration - first) * video.time_base), pts
    # no usable timestamps (raw streams): the decoder's nominal rate
    m = re.search(r"config in time_base: \S+ frame_rate: (\d+)/(\d+)", decode_log)
    fps = float(Fraction(int(m.group(1)), int(m.group(2)) or 1)) if m else 0.0
    duration = container_duration or (len(video.pts) / fps if fps else 0.0)
    return fps, duration, pts if usable else None


def probe(path: str) -> VideoInfo:
    """Facts about a video file; UserError if it is missing or ffmpeg cannot decode it."""
    _check_is_file(path, "video file")
    proc = _run_ffmpeg(
        ["-loglevel", "level+info", "-copyts", "-i", path,
         "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy", "-f", "framecrc", "pipe:1",
         "-map", "0:v:0", "-frames:v", "1", "-vf", "showinfo=checksum=0", "-f", "null", "-"],
        path)
    lines = [_split_level(s)[1] for s in proc.stderr.splitlines()]
    text = "\n".join(lines)
    first = _SHOWINFO_FRAME.search(text)
    if first is None:
        raise UserError(f"{path}: not a readable video (ffmpeg: no frame could be decoded)")
    colour = _SHOWINFO_COLOUR.search(text)
    color_range, color_matrix, color_primaries, color_transfer = (
        (None if v in ("unknown", "unspecified") else v for v in colour.groups())
        if colour else (None,) * 4)
    container_duration, start, _, tags = _parse_header(lines)
    streams = _parse_framecrc(proc.stdout)
    video, audio = streams[0], streams.get(1)  # framecrc numbers the mapped streams
    fps, duration, pts = _timing(video, text, container_duration)
    audio_duration = None
    if audio is not None and audio.pts:
        ends = [p + d for p, d in zip(audio.pts, audio.duration)]
        audio_duration = float((max(ends) - min(audio.pts)) * audio.time_base)
    tb = video.time_base
    return VideoInfo(
        path=path, width=int(first.group(4)), height=int(first.group(5)), fps=fps,
        time_base=f"{tb.numerator}/{tb.denominator}", frame_count=len(video.pts),
        duration=duration, vfr=pts is not None and _detect_vfr(pts), pix_fmt=first.group(3),
        color_matrix=color_matrix, color_range=color_range, color_primaries=color_primaries,
        color_transfer=color_transfer, has_audio=audio is not None, codec=video.codec,
        start_time=start, audio_duration=audio_duration, tags=tags, frame_pts=pts)


# ---------------------------------------------------------------------------------------------
# read_frames
# ---------------------------------------------------------------------------------------------

class _StderrWatcher(threading.Thread):
    """Drains ffmpeg's stderr: showinfo frame records go to a queue, problems to the log.

    It must run concurrently with the stdout reads, or ffmpeg blocks on a full stderr pipe.
    """

    def __init__(self, stream: IO[bytes], path: str, after_seek: bool):
        super().__init__(daemon=True)
        self.stream, self.path = stream, path
        # After a seek, ffmpeg decodes from the previous keyframe and drops the frames before
        # the target; errors about those (e.g. open-GOP references) are not worth a warning.
        self.quiet = after_seek
        self.frames: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
        self.time_base: Fraction | None = None
        self.last_problem = ""
        self.problems = 0

    def run(self) -> None:
        try:
            for raw in self.stream:
                self._handle(*_split_level(raw.decode("utf-8", "replace").rstrip("\n")))
        finally:
            self.frames.put(None)  # end of stream: the reader stops waiting

    def _handle(self, level: str, text: str) -> None:
        if m := _SHOWINFO_FRAME.search(text):
            self.quiet = False
            self.frames.put((int(m.group(2)), int(m.group(4)), int(m.group(5))))
        elif (tb := _SHOWINFO_TB.search(text)) and self.time_base is None:
            self.time_base = Fraction(int(tb.group(1)), int(tb.group(2)))
        elif self.quiet and _is_problem(level):
            log.debug("%s: ffmpeg (before the seek target): %s", self.path, text)
        elif _is_problem(level) and text.strip():
            self.problems += 1
            self.last_problem = text.strip()
            if self.problems <= _MAX_LOGGED_DECODE_ERRORS:
                log.warning("%s: ffmpeg: %s", self.path, self.last_problem)


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _input_matrix(info: VideoInfo) -> str:
    if info.color_matrix in _SCALE_MATRICES:
        return info.color_matrix
    return "bt709" if _hd(info.width, info.height) else "bt601"


def _decode(info: VideoInfo, seek_seconds: float | None) -> Iterator[Frame]:
    """All frames from `seek_seconds` on (None: from the start), indexed by timestamp rank.

    Frames that ffmpeg could not decode leave a gap in the indices and a warning."""
    path = info.path
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info",
           "-copyts"]
    if seek_seconds is not None:
        cmd += ["-ss", f"{seek_seconds:.6f}"]
    cmd += ["-i", path, "-map", "0:v:0",
            "-vf", f"showinfo=checksum=0,scale=in_color_matrix={_input_matrix(info)},format=rgb24",
            "-fps_mode", "passthrough", "-enc_time_base:v", "demux",
            "-f", "rawvideo", "pipe:1"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=False)
    watcher = _StderrWatcher(proc.stderr, path, after_seek=seek_seconds is not None)
    watcher.start()
    stream_tb = Fraction(info.time_base)
    frame_bytes = info.width * info.height * 3
    next_index = 0 if seek_seconds is None else None  # after a seek: whatever comes first
    try:
        while True:
            buf = _read_exact(proc.stdout, frame_bytes)
            if len(buf) < frame_bytes:
                if buf:
                    log.warning("%s: truncated last frame dropped", path)
                break
            record = watcher.frames.get()
            if record is None:
                break
            pts, w, h = record
            if (w, h) != (info.width, info.height):
                raise UserError(f"{path}: frame size changes mid-stream ({info.width}x"
                                f"{info.height} -> {w}x{h}); not supported")
            stream_pts = round(pts * (watcher.time_base or stream_tb) / stream_tb)
            index = _rank(info.frame_pts, stream_pts)
            if index is None:  # not in the container's list: count in decode order
                index = -1 if next_index is None else next_index  # -1: caller decodes afresh
            elif next_index is not None and index > next_index:
                log.warning("%s: frames %d..%d could not be decoded; skipped",
                            path, next_index, index - 1)
            next_index = index + 1
            seconds = float(stream_pts * stream_tb) - info.start_time
            image = np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
            yield Frame(index=index, pts=seconds, image=image)
        proc.wait()
        watcher.join()
        if proc.returncode != 0:
            raise UserError(f"{path}: decoding failed (ffmpeg: {watcher.last_problem})")
        if watcher.problems > _MAX_LOGGED_DECODE_ERRORS:
            log.warning("%s: ffmpeg reported %d problems in all", path, watcher.problems)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()
        watcher.join()
        proc.stderr.close()


def _rank(frame_pts: np.ndarray | None, pts: int) -> int | None:
    """Index of timestamp `pts` in the sorted table; None when it is not listed."""
    if frame_pts is not None:
        i = int(np.searchsorted(frame_pts, pts))
        if i < len(frame_pts) and frame_pts[i] == pts:
            return i
    return None


def read_frames(video: str | VideoInfo, start_frame: int = 0) -> Iterator[Frame]:
    """Streams the frames of a video (path, or `probe`'s result) from index `start_frame` on.

    Starting later seeks to just before that frame's timestamp (ffmpeg decodes from the
    previous keyframe but converts nothing earlier); if the first frame after the seek is not
    frame `start_frame`, the file is decoded from the start instead, so frame `i` is always
    the same image.
    """
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    return _read_from(video if isinstance(video, VideoInfo) else probe(video), start_frame)


def _read_from(info: VideoInfo, start_frame: int) -> Iterator[Frame]:
    if start_frame >= info.frame_count:
        return
    pts, first = info.frame_pts, []
    if start_frame > 0 and pts is not None:
        halfway = Fraction(int(pts[start_frame - 1]) + int(pts[start_frame]), 2)
        decoder = _decode(info, float(halfway * Fraction(info.time_base)) - info.start_time)
        frame = next(decoder, None)
        if frame is None or frame.index != start_frame:  # not where expected: start over
            decoder.close()
            decoder = _decode(info, None)
        else:
            first = [frame]
    else:
        decoder = _decode(info, None)
    with contextlib.closing(decoder):
        for frame in itertools.chain(first, decoder):
            if frame.index >= start_frame:
                yield frame


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def _encode_filter(color: VideoInfo | None, width: int, height: int) -> str:
    """RGB -> yuv420p conversion with `color`'s matrix, and the colour tags for the stream.

    The tags go through `setparams` because ffmpeg takes them from the frames; the
    `-color_primaries` style output options are overridden by the filter's output."""
    hd = _hd(width, height)
    default = "bt709" if hd else "smpte170m"
    matrix = color.color_matrix if color and color.color_matrix in _SCALE_MATRICES else default
    primaries = color.color_primaries if color and color.color_primaries else default
    transfer = color.color_transfer if color and color.color_transfer else default
    return (f"scale=out_color_matrix={matrix}:out_range=tv,format=yuv420p,"
            f"setparams=colorspace={matrix}:color_primaries={primaries}:color_trc={transfer}"
            ":range=tv")


def _audio_codec(path: str) -> str:
    """Codec name of the first audio stream of `path` ('' if it has none)."""
    _check_is_file(path, "media file")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          capture_output=True, text=True, errors="replace")
    lines = proc.stderr.splitlines()
    if not any(s.startswith("Input #0") for s in lines):
        reason = _ffmpeg_reason(proc.stderr)
        raise UserError(f"{path}: not a readable media file (ffmpeg: {reason})")
    return _parse_header(lines)[2]


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
        return _ffmpeg_reason(self._log.read().decode("utf-8", "replace"))

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


# ---------------------------------------------------------------------------------------------
# frames <-> video tool
# ---------------------------------------------------------------------------------------------

_FRAME_FORMATS = {"png": [], "jpg": [95]}  # jpg quality 95 ~ ffmpeg's -q:v 2


def frame_filename(index: int, fmt: str) -> str:
    """DFL's naming: 1-based, zero-padded to 5 digits (00001.png is frame 0)."""
    return f"{index + 1:05d}.{fmt}"


def extract_frames(video: str, out_dir: str, fmt: str = "png", start: int = 0,
                   end: int | None = None, progress: bool = False) -> int:
    """Writes frames [start, end) of `video` as images into `out_dir`; returns the count."""
    import cv2
    from tqdm import tqdm

    if fmt not in _FRAME_FORMATS:
        raise UserError(f"{out_dir}: unknown frame format {fmt!r}; use png or jpg")
    info = probe(video)
    os.makedirs(out_dir, exist_ok=True)
    existing = [n for n in os.listdir(out_dir) if n.lower().endswith(f".{fmt}")]
    if existing:
        raise UserError(f"{out_dir}: already holds {len(existing)} .{fmt} files; "
                        "extract into an empty folder")
    end = info.frame_count if end is None else min(end, info.frame_count)
    params = [cv2.IMWRITE_JPEG_QUALITY, *_FRAME_FORMATS[fmt]] if fmt == "jpg" else []
    count = 0
    with contextlib.closing(read_frames(info, start)) as frames, \
            tqdm(total=max(end - start, 0), disable=not progress, unit="frame") as bar:
        for frame in frames:
            if frame.index >= end:
                break
            ok, data = cv2.imencode(f".{fmt}", frame.image[:, :, ::-1], params)
            if not ok:
                raise UserError(f"{out_dir}: cannot encode frame {frame.index} as {fmt}")
            data.tofile(os.path.join(out_dir, frame_filename(frame.index, fmt)))
            count += 1
            bar.update(1)
    return count


def assemble_frames(in_dir: str, out_video: str, fps: float | None = None,
                    audio_from: str | None = None, lossless: bool = False, crf: int = 18,
                    progress: bool = False) -> int:
    """Encodes the images of `in_dir` (natural order) into `out_video`; returns the count.

    `audio_from` is DFL's reference video: it gives the audio, the colour tags and, when
    `fps` is None, the frame rate (25 without a reference).
    """
    from tqdm import tqdm

    from preprocessing.images import list_images, read_image  # images imports this module

    files = list_images(in_dir)
    reference = probe(audio_from) if audio_from else None
    if fps is None:
        fps = reference.fps if reference else 25.0
    first = read_image(files[0])
    height, width = first.shape[:2]
    with VideoWriter(out_video, fps, (width, height), audio_from=audio_from, crf=crf,
                     lossless=lossless, color=reference) as writer:
        writer.write(first)
        for path in tqdm(files[1:], disable=not progress, unit="frame"):
            image = read_image(path)
            if image.shape != first.shape:
                raise UserError(f"{path}: size {image.shape[1]}x{image.shape[0]} differs from "
                                f"the first frame's {width}x{height}")
            writer.write(image)
    return writer.frames_written


def _define_flags() -> None:
    """Flags exist only when this module runs as a program, so others can import it."""
    from absl import flags

    flags.DEFINE_string("input", None, "extract: the video to split into frames.")
    flags.DEFINE_string("output_dir", None, "extract: folder for the frames (created; must "
                        "not already hold frames of --format).")
    flags.DEFINE_enum("format", "png", list(_FRAME_FORMATS), "extract: image format.")
    flags.DEFINE_integer("start", 0, "extract: first frame index (0-based).")
    flags.DEFINE_integer("end", None, "extract: stop before this frame index (default: all).")
    flags.DEFINE_string("input_dir", None, "assemble: folder of frames, in natural name order.")
    flags.DEFINE_string("output", None, "assemble: the video to write (.mp4, .mov or .mkv).")
    flags.DEFINE_float("fps", None, "assemble: frame rate (default: --audio_from's, else 25).")
    flags.DEFINE_string("audio_from", None, "assemble: reference video whose audio, colour "
                        "tags and frame rate the output takes.")
    flags.DEFINE_boolean("lossless", False, "assemble: bit-exact RGB H.264 (libx264rgb crf 0).")
    flags.DEFINE_integer("crf", 18, "assemble: H.264 quality when not lossless (lower = better).")


_USAGE = "usage: python -m preprocessing.video extract|assemble --flags (see --help)"


def main(argv: Sequence[str]) -> None:
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) != 2 or argv[1] not in ("extract", "assemble"):
        raise UserError(f"{' '.join(argv[1:]) or 'no command'}: unknown command; {_USAGE}")

    def need(*names: str) -> None:
        for name in names:
            if FLAGS[name].value is None:
                raise UserError(f"--{name}: required for '{argv[1]}'")

    started = time.perf_counter()
    if argv[1] == "extract":
        need("input", "output_dir")
        count = extract_frames(FLAGS.input, FLAGS.output_dir, FLAGS.format, FLAGS.start,
                               FLAGS.end, progress=True)
        target = FLAGS.output_dir
    else:
        need("input_dir", "output")
        count = assemble_frames(FLAGS.input_dir, FLAGS.output, FLAGS.fps, FLAGS.audio_from,
                                FLAGS.lossless, FLAGS.crf, progress=True)
        target = FLAGS.output
    print(f"{argv[1]}: {count} frames in {time.perf_counter() - started:.1f} s -> {target}",
          file=sys.stdout)


def run() -> None:
    """Console-script entry (`fs-video`)."""
    _define_flags()
    run_app(main)


if __name__ == "__main__":
    run()
