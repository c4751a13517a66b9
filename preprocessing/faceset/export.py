"""`export`: a faceset's aligned faces as image files, optionally as DeepFaceLab DFLJPGs.

Files are named by face index (00000.png, 00001.png, ... in faceset order), like the files DFL's
sorter leaves behind. With `dfl=True` each JPEG carries DFL's metadata (face type, landmarks,
source frame name, rect and landmarks, the frame->face matrix, XSeg polygons and mask) so the
faces can go back into DeepFaceLab or DeepFaceLive.
"""
from __future__ import annotations

import dataclasses
import os
import time

import cv2
import numpy as np
from tqdm import tqdm

from preprocessing.errors import UserError
from preprocessing.faceset.dfljpg import write_dfljpg
from preprocessing.faceset.face_stats import BATCH
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.subset import read_polygons
from preprocessing.video import frame_filename

_XSEG_MASK_MAX_BYTES = 50_000  # DFL's cap: an APP15 segment holds at most 65533 bytes in all


@dataclasses.dataclass
class ExportSummary:
    output_dir: str
    faces: int
    masks: int
    dfl: bool
    seconds: float

    def line(self) -> str:
        kind = "DFLJPG" if self.dfl else "image"
        masks = f" and {self.masks} masks" if self.masks else ""
        return f"export: wrote {self.faces} {kind} files{masks} in {self.seconds:.1f}s -> {self.output_dir}"


def source_filename(source: dict, frame_index: int) -> str:
    """The frame's file name as DFL records it: the image's name, or DFL's frame naming for videos."""
    files = source.get("files")
    if files and 0 <= frame_index < len(files):
        return str(files[frame_index])
    if source.get("kind") == "image":
        return str(source.get("name"))
    return frame_filename(frame_index, "png")


def encode_xseg_mask(mask: np.ndarray) -> bytes:
    """DFL's xseg_mask encoding: a 1-channel PNG, or a JPEG of falling quality when the PNG is too big."""
    grey = np.ascontiguousarray(mask.reshape(mask.shape[0], mask.shape[1]))
    ok, buf = cv2.imencode(".png", grey)
    quality = 100
    while ok and len(buf) > _XSEG_MASK_MAX_BYTES and quality > 0:
        ok, buf = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, quality])
        quality -= 5
    if not ok:
        raise ValueError("OpenCV could not encode the XSeg mask")
    return buf.tobytes()


def _known(value: np.ndarray, as_list: bool = False) -> np.ndarray | list | None:
    """float64 copy of a stored value, or None when it is unknown (NaN: DFL leaves such keys out)."""
    a = np.asarray(value, np.float64)
    if not np.all(np.isfinite(a)):
        return None
    return a.tolist() if as_list else a


def dfl_metadata(fs: Faceset, face: dict[str, np.ndarray], polygons: list | None) -> dict:
    """DFL's metadata dict for one face (`face` maps array names to this face's values; it holds
    `xseg_masks` only when the face has a real XSeg mask)."""
    sid = int(face["source_id"])
    source = fs.sources[sid] if 0 <= sid < len(fs.sources) else {}
    return {
        "face_type": fs.face_type.dfl_name,
        "landmarks": np.asarray(face["landmarks"], np.float64).tolist(),
        "source_filename": source_filename(source, int(face["frame_index"])),
        "source_rect": _known(face["source_rects"]),
        "source_landmarks": _known(face["source_landmarks"], as_list=True),
        "image_to_face_mat": _known(face["matrices"]),
        "seg_ie_polys": {"polys": [{"type": int(p["type"]), "pts": np.asarray(p["pts"], np.float32)}
                                   for p in polygons]} if polygons else None,
        "xseg_mask": encode_xseg_mask(face["xseg_masks"]) if "xseg_masks" in face else None,
    }


def _prepare_folder(output_dir: str) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"{output_dir}: exists and is not a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise UserError(f"{output_dir}: folder is not empty; export writes into a new or empty folder")
    os.makedirs(output_dir, exist_ok=True)


def _write_image(path: str, image: np.ndarray, params: list[int]) -> None:
    """RGB [H, W, 3] or grey [H, W, 1] uint8 -> file (imencode + tofile copes with any path name)."""
    pixels = image[..., ::-1] if image.shape[-1] == 3 else image[..., 0]
    ok, buf = cv2.imencode(os.path.splitext(path)[1], np.ascontiguousarray(pixels), params)
    if not ok:
        raise UserError(f"{path}: could not encode the image")
    buf.tofile(path)


def export_faceset(fs: Faceset, output_dir: str, *, fmt: str = "png", masks: bool = False, dfl: bool = False,
                   quality: int = 90, progress: bool = True) -> ExportSummary:
    """Writes every face of `fs` into `output_dir` (see module doc)."""
    start = time.time()
    if fmt not in ("png", "jpg"):
        raise UserError(f"{output_dir}: unknown export format {fmt!r}; use png or jpg")
    _prepare_folder(output_dir)
    ext = "jpg" if dfl else fmt
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == "jpg" else []
    polygons = read_polygons(fs) if dfl else {}
    # A DFL import fills xseg_masks with the hull for faces that had none; do not pass those off as XSeg.
    no_xseg = set(fs.manifest.get("extras", {}).get("xseg_masks_missing", []))
    names = ["faces"] + (["masks"] if masks else [])
    if dfl:
        names += ["landmarks", "source_landmarks", "source_rects", "matrices", "source_id", "frame_index"]
        names += ["xseg_masks"] if "xseg_masks" in fs.array_names else []
    n = len(fs)
    with tqdm(total=n, desc="export", unit="face", disable=not progress) as bar:
        for first in range(0, n, BATCH):
            batch = fs.read_many(names, np.arange(first, min(n, first + BATCH)))
            for k in range(len(batch["faces"])):
                index = first + k
                stem = os.path.join(output_dir, f"{index:05d}")
                if dfl:
                    face = {name: batch[name][k] for name in names
                            if not (name == "xseg_masks" and index in no_xseg)}
                    write_dfljpg(f"{stem}.jpg", batch["faces"][k], dfl_metadata(fs, face, polygons.get(str(index))),
                                 quality=quality)
                else:
                    _write_image(f"{stem}.{ext}", batch["faces"][k], params)
                if masks:
                    _write_image(f"{stem}_mask.png", batch["masks"][k], [])
            bar.update(len(batch["faces"]))
    return ExportSummary(output_dir, n, n if masks else 0, dfl, time.time() - start)
