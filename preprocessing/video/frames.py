"""The frames <-> video tool (DFL's VideoEd): a video to numbered images and back.

`extract_frames` names the images as DFL does (`frame_filename`); `assemble_frames` takes the
audio, colour tags and frame rate from DFL's reference video.
"""
from __future__ import annotations

import contextlib
import os

from preprocessing.errors import UserError
from preprocessing.video.decode import read_frames
from preprocessing.video.encode import VideoWriter
from preprocessing.video.probing import probe

FRAME_FORMATS = {"png": [], "jpg": [95]}  # jpg quality 95 ~ ffmpeg's -q:v 2


def frame_filename(index: int, fmt: str) -> str:
    """DFL's naming: 1-based, zero-padded to 5 digits (00001.png is frame 0)."""
    return f"{index + 1:05d}.{fmt}"


def extract_frames(video: str, out_dir: str, fmt: str = "png", start: int = 0,
                   end: int | None = None, progress: bool = False) -> int:
    """Writes frames [start, end) of `video` as images into `out_dir`; returns the count."""
    import cv2
    from tqdm import tqdm

    if fmt not in FRAME_FORMATS:
        raise UserError(f"{out_dir}: unknown frame format {fmt!r}; use png or jpg")
    info = probe(video)
    os.makedirs(out_dir, exist_ok=True)
    existing = [n for n in os.listdir(out_dir) if n.lower().endswith(f".{fmt}")]
    if existing:
        raise UserError(f"{out_dir}: already holds {len(existing)} .{fmt} files; "
                        "extract into an empty folder")
    end = info.frame_count if end is None else min(end, info.frame_count)
    params = [cv2.IMWRITE_JPEG_QUALITY, *FRAME_FORMATS[fmt]] if fmt == "jpg" else []
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

    from preprocessing.images import list_images, read_image  # images imports this package

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
