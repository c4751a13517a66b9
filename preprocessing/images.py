"""Extraction input: a video file, a folder of images, or a single image, behind one interface.

`open_source(path)` decides which it is and returns a `Source` whose `iter_frames(start)`
yields `(index, pts_seconds_or_None, rgb)` and whose `describe()` is the JSON entry the
faceset manifest records (with a content hash, so a resumed run can tell the input changed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
from typing import Any, Iterator

import numpy as np

from preprocessing import video
from preprocessing.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_HASH_CHUNK = 1 << 20


def natural_key(name: str) -> list[Any]:
    """Sort key that orders '2.png' before '10.png' (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part.casefold()
            for part in re.split(r"(\d+)", name)]


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str) -> list[str]:
    """Paths of the images in `folder`, naturally sorted; hidden files (._x.png) are skipped."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder")
    names = [n for n in os.listdir(folder)
             if is_image_file(n) and not n.startswith(".")
             and os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise UserError(f"{folder}: no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]: grey expanded, alpha dropped, 16-bit scaled, EXIF rotation applied."""
    import cv2

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    data = np.fromfile(path, np.uint8)  # imdecode, unlike imread, copes with any path name
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if bgr is None or bgr.size == 0:
        raise UserError(f"{path}: not a readable image")
    if bgr.dtype == np.uint16:
        bgr = np.round(bgr / 257.0).astype(np.uint8)
    elif bgr.dtype != np.uint8:  # float TIFF: assume [0, 1]
        bgr = np.round(np.clip(bgr, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _hash_file(digest: "hashlib._Hash", path: str) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)


@dataclasses.dataclass
class Source:
    """One extraction input. `files` lists the images (empty for a video); `size` is
    (width, height), None for a folder, whose images may differ in size."""

    path: str
    kind: str  # 'video' | 'images' | 'image'
    files: list[str]
    info: video.VideoInfo | None = None
    size: tuple[int, int] | None = None
    _sha256: str | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def frame_count(self) -> int:
        return self.info.frame_count if self.info else len(self.files)

    @property
    def fps(self) -> float | None:
        return self.info.fps if self.info else None

    @property
    def time_base(self) -> str | None:
        return self.info.time_base if self.info else None

    def iter_frames(self, start: int = 0) -> Iterator[tuple[int, float | None, np.ndarray | None]]:
        """(index, pts seconds or None, RGB) from frame `start` on.

        An unreadable image in a folder is logged and yielded with image None, so indices
        stay tied to file positions (resume relies on it); callers skip it.
        """
        if self.info:
            with contextlib.closing(video.read_frames(self.info, start)) as frames:
                for frame in frames:
                    yield frame.index, frame.pts, frame.image
            return
        for index in range(start, len(self.files)):
            try:
                image = read_image(self.files[index])
            except UserError as e:
                if self.kind == "image":
                    raise
                log.warning("%s; skipped", e)
                image = None
            yield index, None, image

    def content_hash(self) -> str:
        """sha256 of the file, or of a folder's image names and bytes in order (cached)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            if self.kind == "images":
                for path in self.files:
                    name = os.path.basename(path).encode()
                    digest.update(len(name).to_bytes(8, "little") + name)
                    digest.update(os.path.getsize(path).to_bytes(8, "little"))
                    _hash_file(digest, path)
            else:
                _hash_file(digest, self.path)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def describe(self) -> dict[str, Any]:
        """JSON-able manifest entry."""
        info = self.info
        width, height = self.size or (None, None)
        return {
            "path": os.path.abspath(self.path),
            "kind": self.kind,
            "name": os.path.basename(os.path.normpath(self.path)),
            "sha256": self.content_hash(),
            "frames": self.frame_count,
            "fps": self.fps,
            "time_base": self.time_base,
            "width": width,
            "height": height,
            "vfr": info.vfr if info else False,
            "color_matrix": info.color_matrix if info else None,
            "has_audio": info.has_audio if info else False,
            "files": [os.path.basename(p) for p in self.files] if self.kind == "images" else None,
        }


def open_source(path: str) -> Source:
    """A video file, a folder of images or a single image; UserError if it is none of these."""
    if os.path.isdir(path):
        return Source(path, "images", list_images(path))
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file or folder")
    if is_image_file(path):
        height, width = read_image(path).shape[:2]  # a single bad image is an error
        return Source(path, "image", [path], size=(width, height))
    info = video.probe(path)
    return Source(path, "video", [], info, size=(info.width, info.height))
