"""Video in and out through the ffmpeg binary that imageio-ffmpeg ships (no system install).

* `probe` (probing.py) reads a file's facts, including the timestamp table that indexes frames.
* `read_frames` (decode.py) streams RGB frames with their real timestamps, seeking on request.
* `VideoWriter` / `write_video` (encode.py) encode H.264 with colour tags and optional audio.
* `extract_frames` / `assemble_frames` (frames.py) and the `extract` / `assemble` commands
  (`python -m preprocessing.video`, __main__.py) are the frames <-> video tool (DFL's VideoEd).
* ffmpeg.py finds and runs ffmpeg and reads its stderr.
"""
from __future__ import annotations

from preprocessing.video.decode import Frame, read_frames
from preprocessing.video.encode import VideoWriter, write_video
from preprocessing.video.ffmpeg import ffmpeg_exe
from preprocessing.video.frames import assemble_frames, extract_frames, frame_filename
from preprocessing.video.probing import VideoInfo, probe

__all__ = ["Frame", "VideoInfo", "VideoWriter", "assemble_frames", "extract_frames",
           "ffmpeg_exe", "frame_filename", "probe", "read_frames", "write_video"]

