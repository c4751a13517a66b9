"""The ffmpeg binary that imageio-ffmpeg ships (no system install): finding it, running it and
reading its stderr.

With `-loglevel level+info` every stderr line carries its level, which tells decode problems
from chatter; the `showinfo` filter's records on stderr carry each frame's timestamp, size and
colour tags. A failed run is reported as a `UserError` naming the file and giving ffmpeg's own
one-line reason.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
from typing import Sequence

from preprocessing.errors import UserError

# With `-loglevel level+info` every message starts "[context @ 0x..] [level] " or "[level] ".
_LOG_LINE = re.compile(r"^(?:\[[^\]]* @ [^\]]*\] )?\[(\w+)\] ?(.*)$")
SHOWINFO_FRAME = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s.*?\bfmt:(\S+).*?\bs:(\d+)x(\d+)")
SHOWINFO_TB = re.compile(r"config in time_base: (\d+)/(\d+)")
SHOWINFO_COLOUR = re.compile(
    r"color_range:(\S+) color_space:(\S+) color_primaries:(\S+) color_trc:(\S+)")


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def split_level(line: str) -> tuple[str, str]:
    """(level, message) of one stderr line; lines without a level count as info."""
    m = _LOG_LINE.match(line)
    return (m.group(1), m.group(2)) if m else ("info", line)


def is_problem(level: str) -> bool:
    return level in ("warning", "error", "fatal", "panic")


def ffmpeg_reason(stderr: str) -> str:
    """ffmpeg's own one-line reason for failing, from its stderr."""
    lines = [split_level(s)[1].strip() for s in stderr.splitlines()]
    lines = [s for s in lines if s]
    for s in reversed(lines):
        m = re.search(r"Error opening input: (.*)", s)
        if m:
            return m.group(1)
    return lines[-1] if lines else "no output"


def check_is_file(path: str, what: str = "file") -> None:
    """UserError unless `path` is an existing file (ffmpeg's own message would be vaguer)."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, expected a {what}")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")


def run_ffmpeg(args: Sequence[str], path: str) -> subprocess.CompletedProcess:
    """Runs ffmpeg on the video `path` to completion; UserError if it fails."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args],
                          capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise UserError(f"{path}: not a readable video (ffmpeg: {ffmpeg_reason(proc.stderr)})")
    return proc
