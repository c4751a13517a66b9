"""Where merged frames go: an H.264 video (source audio, colour tags, frame timing) or a PNG
sequence, plus the optional mask output, the preview sheet and the provenance record.

Provenance: every output says it is synthetic. Videos carry it in the container metadata
(`comment`, `description`); every output gets a JSON sidecar (`<output>.provenance.json`) naming
the source media, the model and step, the merge options and the tool version. Detector research
relies on knowing which files are face-swapped.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
from typing import Any

import cv2
import numpy as np

from preprocessing.errors import UserError
from preprocessing.images import Source
from preprocessing.video import VideoWriter
from preprocessing.video.frames import frame_filename

SYNTHETIC_MARK = "synthetic: face-swapped video made with faceswap-jax"
VIDEO_TYPES = (".mp4", ".mov", ".mkv")


def tool_version() -> str:
    try:
        return importlib.metadata.version("faceswap-jax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def is_video_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_TYPES


class FrameSink:
    """Writes RGB (or grey) uint8 frames to a video file or a folder of PNGs, atomically for videos."""

    def __init__(self, path: str, source: Source, size: tuple[int, int], *, audio: bool, crf: int,
                 metadata: dict[str, str] | None = None):
        self.path, self._video, self._folder, self._source = path, None, None, source
        if is_video_path(path):
            fps = source.fps or 25.0  # DFL's default for image sequences
            info = source.info
            self._video = VideoWriter(path, fps, size, audio_from=source.path if audio and info else None,
                                      crf=crf, lossless=crf == 0, color=info,
                                      timestamps=bool(info and info.vfr), metadata=metadata)
        elif os.path.splitext(path)[1]:
            raise UserError(f"{path}: output must be a video ({', '.join(VIDEO_TYPES)}) or a folder for PNGs")
        else:
            if os.path.isdir(path) and os.listdir(path):
                raise UserError(f"{path}: output folder exists and is not empty; choose another")
            os.makedirs(path, exist_ok=True)
            self._folder = path

    def write(self, index: int, pts: float | None, image: np.ndarray) -> None:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if self._video is not None:
            self._video.write(image, pts if self._video.timestamps else None)
            return
        if self._source.kind == "video":
            name = frame_filename(index, "png")
        else:  # keep the input images' names, as DFL does
            name = os.path.splitext(os.path.basename(self._source.files[index]))[0] + ".png"
        target = os.path.join(self._folder, name)
        if not cv2.imwrite(target, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise UserError(f"{target}: cannot write (disk full or no permission?)")

    def close(self) -> None:
        if self._video is not None:
            self._video.close()

    def abort(self) -> None:
        if self._video is not None:
            self._video.abort()


def provenance(source: Source, faceset: str, workdir: str, step: int, model_config: dict,
               options: dict[str, Any], keyframes: str | None) -> dict[str, Any]:
    return {
        "synthetic": True,
        "kind": "face-swap",
        "note": SYNTHETIC_MARK,
        "source": {"path": os.path.abspath(source.path), "sha256": source.content_hash(),
                   "frames": source.frame_count},
        "dst_faceset": os.path.abspath(faceset),
        "model": {"workdir": os.path.abspath(workdir), "step": step, "config": model_config},
        "merge_options": options,
        "keyframes": os.path.abspath(keyframes) if keyframes else None,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "faceswap-jax", "version": tool_version()},
    }


def container_metadata(record: dict[str, Any]) -> dict[str, str]:
    """The short form that goes into the video container."""
    model = record["model"]
    return {"comment": SYNTHETIC_MARK,
            "description": f"face-swapped with model {os.path.basename(model['workdir'])} step {model['step']}, "
                           f"mode {record['merge_options'].get('mode')}, faceswap-jax {record['tool']['version']}"}


def write_sidecar(output: str, record: dict[str, Any]) -> str:
    path = os.path.normpath(output) + ".provenance.json"
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(tmp, path)
    return path


def write_preview(path: str, pairs: list[tuple[np.ndarray, np.ndarray]], max_width: int = 1600) -> None:
    """A sheet of (original | merged) rows for a few frames, scaled to at most `max_width` px wide."""
    rows = [np.concatenate([a, b], axis=1) for a, b in pairs]
    width = max(r.shape[1] for r in rows)
    scale = min(1.0, max_width / width)
    rows = [cv2.resize(r, (round(r.shape[1] * scale), round(r.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            if scale < 1 else r for r in rows]
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    if not cv2.imwrite(path, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise UserError(f"{path}: cannot write preview")
