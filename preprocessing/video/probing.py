"""`probe`: a video file's facts from one cheap ffmpeg pass.

The stream is copied, not decoded, into the `framecrc` muxer, which lists every packet's
timestamp; one frame is decoded to learn the output size and colour tags. The sorted timestamps
are the frame index: frame `i` is the frame with the i-th smallest presentation time. That
makes indices stable between a full decode and a seek (resume relies on it) and makes variable
frame rate visible.

Colour: decoded YUV is converted with the stream's own colour matrix; untagged streams are
taken as BT.709 when HD (`is_hd`: more than 576 lines or 1024 columns) and BT.601 otherwise,
the same guess the writer tags its output with, so a decode -> encode round trip keeps colours.
"""
from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

import numpy as np

from preprocessing.errors import UserError
from preprocessing.video.ffmpeg import (SHOWINFO_COLOUR, SHOWINFO_FRAME, check_is_file,
                                        run_ffmpeg, split_level)

_NOPTS = -(2**63)  # AV_NOPTS_VALUE, printed by framecrc for packets without a timestamp
_DISCARD_FLAG = 0x4  # AV_PKT_FLAG_DISCARD: packet decoded only to be dropped (mp4 edit lists)
# Matrices the `scale` filter accepts under the same name ffmpeg reports for a stream.
SCALE_MATRICES = {"bt709", "fcc", "bt470bg", "smpte170m", "smpte240m", "bt2020nc"}


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


def parse_header(stderr_lines: list[str]) -> tuple[float, float, str, dict[str, str]]:
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


def is_hd(width: int, height: int) -> bool:
    """Whether an untagged stream of this size is taken as BT.709 (else BT.601)."""
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
    check_is_file(path, "video file")
    proc = run_ffmpeg(
        ["-loglevel", "level+info", "-copyts", "-i", path,
         "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy", "-f", "framecrc", "pipe:1",
         "-map", "0:v:0", "-frames:v", "1", "-vf", "showinfo=checksum=0", "-f", "null", "-"],
        path)
    lines = [split_level(s)[1] for s in proc.stderr.splitlines()]
    text = "\n".join(lines)
    first = SHOWINFO_FRAME.search(text)
    if first is None:
        raise UserError(f"{path}: not a readable video (ffmpeg: no frame could be decoded)")
    colour = SHOWINFO_COLOUR.search(text)
    color_range, color_matrix, color_primaries, color_transfer = (
        (None if v in ("unknown", "unspecified") else v for v in colour.groups())
        if colour else (None,) * 4)
    container_duration, start, _, tags = parse_header(lines)
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
