"""`read_frames`: RGB frames streamed from ffmpeg's rawvideo pipe in constant memory.

Frames come with their real timestamps (parsed from the `showinfo` filter on stderr) and with
no duplication or dropping; each is indexed by the rank of its timestamp in `probe`'s table,
so a read that starts later by seeking hands out the same frame `i` as a full decode.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import queue
import subprocess
import threading
from fractions import Fraction
from typing import IO, Iterator

import numpy as np

from preprocessing.errors import UserError
from preprocessing.video.ffmpeg import (SHOWINFO_FRAME, SHOWINFO_TB, ffmpeg_exe, is_problem,
                                        split_level)
from preprocessing.video.probing import SCALE_MATRICES, VideoInfo, is_hd, probe

log = logging.getLogger(__name__)

_MAX_LOGGED_DECODE_ERRORS = 10


@dataclasses.dataclass(frozen=True)
class Frame:
    index: int  # rank of this frame's timestamp among all frames of the stream
    pts: float  # seconds from the container start
    image: np.ndarray  # RGB uint8 [H, W, 3]


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
                self._handle(*split_level(raw.decode("utf-8", "replace").rstrip("\n")))
        finally:
            self.frames.put(None)  # end of stream: the reader stops waiting

    def _handle(self, level: str, text: str) -> None:
        if m := SHOWINFO_FRAME.search(text):
            self.quiet = False
            self.frames.put((int(m.group(2)), int(m.group(4)), int(m.group(5))))
        elif (tb := SHOWINFO_TB.search(text)) and self.time_base is None:
            self.time_base = Fraction(int(tb.group(1)), int(tb.group(2)))
        elif self.quiet and is_problem(level):
            log.debug("%s: ffmpeg (before the seek target): %s", self.path, text)
        elif is_problem(level) and text.strip():
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
    if info.color_matrix in SCALE_MATRICES:
        return info.color_matrix
    return "bt709" if is_hd(info.width, info.height) else "bt601"


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
