"""`resize`: a faceset at another face size and/or face type (DFL's faceset resizer, DFL_SPEC §1.12).

Same face type: faces are resized with Lanczos (as DFL), masks linearly; face-space landmarks,
polygons and the frame->face matrices are scaled by new/old size (so the matrices still map the
source landmarks onto the landmarks); the sharpness score is recomputed at the new size.

New face type: the crop square changes, so each face gets a new frame->face matrix from its
source landmarks. When the source video/folder is still where the manifest says and unchanged
(same sha256), the face is cut again from the source frame: the best quality, and no black
borders. Otherwise the stored face is re-warped (Lanczos); growing the face type then leaves black
borders, because that part of the frame was never stored (a warning says so). Landmarks,
polygons and XSeg masks are carried over by the old->new face affine; hull and eyes/mouth masks,
pose and sharpness are recomputed from the new landmarks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator

import cv2
import numpy as np

from preprocessing.align import convert_face_matrix, image_to_face_matrix, transform_points, warp_to_face
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import schema
from preprocessing.faceset.derived import derived_arrays
from preprocessing.faceset.face_stats import BATCH
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.subset import check_new_output, read_polygons, write_faces
from preprocessing.images import Source, open_source
from preprocessing.sharpness import blur_score

log = logging.getLogger(__name__)

# Faces converted per pass over the source frames: ~256 MiB of new crops. A faceset in frame order
# needs one pass over each source in total; a sorted one needs about one pass per chunk.
_CHUNK_BYTES = 256 << 20
_MASK_ARRAYS = ("masks", "eyes_mouth_masks", "xseg_labels", "xseg_masks")  # resized linearly
_XSEG_ARRAYS = ("xseg_labels", "xseg_masks")  # hand-made: warped and thresholded, not recomputed


@dataclasses.dataclass
class ResizeSummary:
    output: str
    count: int
    size: int
    face_type: FaceType
    from_source: int  # faces cut again from their source frames
    rewarped: int  # faces re-warped from the stored crop (new face type, source unavailable)
    seconds: float

    def line(self) -> str:
        how = ""
        if self.from_source or self.rewarped:
            how = f" ({self.from_source} cut from source frames, {self.rewarped} re-warped from stored faces)"
        return (f"resize: wrote {self.count} {self.face_type.dfl_name} faces at {self.size}px{how} "
                f"in {self.seconds:.1f}s -> {self.output}")


def _as_3x3(m: np.ndarray) -> np.ndarray:
    return np.concatenate([m, np.broadcast_to([[0.0, 0.0, 1.0]], (*m.shape[:-2], 1, 3))], axis=-2)


def plan_conversion(landmarks: np.ndarray, source_landmarks: np.ndarray, matrices: np.ndarray,
                    size: int, face_type: FaceType) -> tuple[np.ndarray, np.ndarray]:
    """(new frame->face matrices, old face->new face affines), float64 [N, 2, 3] each.

    The new matrix comes from the source landmarks, exactly as extraction builds it. Faces without
    source data (imported from DFL without it) are aligned from their face-space landmarks, which
    gives the same crop because alignment commutes with the similarity between frame and face.
    """
    n = len(landmarks)
    new = np.full((n, 2, 3), np.nan)
    old_to_new = np.empty((n, 2, 3))
    for i in range(n):
        if np.all(np.isfinite(source_landmarks[i])) and np.all(np.isfinite(matrices[i])):
            new[i], old_to_new[i] = convert_face_matrix(matrices[i], source_landmarks[i], size, face_type)
        else:
            old_to_new[i] = image_to_face_matrix(landmarks[i], size, face_type)
            new[i] = (_as_3x3(old_to_new[i]) @ _as_3x3(matrices[i].astype(np.float64)))[:2]
    return new, old_to_new


def available_sources(fs: Faceset) -> dict[int, Source]:
    """Sources still on disk and unchanged (sha256 match) -> their opened `Source`."""
    found = {}
    for sid, entry in enumerate(fs.sources):
        path = entry.get("path")
        if not path or not os.path.exists(path) or entry.get("kind") not in ("video", "images", "image"):
            continue
        try:
            source = open_source(path)
            if source.content_hash() == entry.get("sha256"):
                found[sid] = source
        except UserError as e:
            log.warning("%s; faces of this source are re-warped from the stored crops", e)
    return found


def crops_from_sources(sources: dict[int, Source], source_id: np.ndarray, frame_index: np.ndarray,
                       matrices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts each face again from its source frame: (crops [n, S, S, 3], found [n] bool).

    Frames are decoded once per source, in order, from the first frame needed to the last.
    """
    crops = np.zeros((len(source_id), size, size, 3), np.uint8)
    found = np.zeros(len(source_id), bool)
    for sid, source in sources.items():
        mine = np.flatnonzero(source_id == sid)
        if not len(mine):
            continue
        wanted = np.unique(frame_index[mine])
        last = int(wanted[-1])
        with contextlib.closing(source.iter_frames(int(wanted[0]))) as frames:
            for index, _pts, image in frames:
                if index > last:
                    break
                if image is None:
                    continue
                for k in mine[frame_index[mine] == index]:
                    crops[k] = warp_to_face(image, matrices[k], size)
                    found[k] = True
    return crops, found


def resized_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Same face type, new size: Lanczos faces, linear masks, scaled landmarks and matrices."""
    scale = size / batch["faces"].shape[1]
    out = dict(batch)
    out["faces"] = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LANCZOS4) for f in batch["faces"]])
    for name in _MASK_ARRAYS:
        if name in batch:
            out[name] = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)
                                  for m in batch[name]])[..., None]
    out["landmarks"] = batch["landmarks"] * np.float32(scale)
    out["matrices"] = (batch["matrices"].astype(np.float64) * scale).astype(np.float32)
    out["blur"] = np.array([blur_score(f, m) for f, m in zip(out["faces"], out["masks"])], np.float32)
    return out


def converted_batch(batch: dict[str, np.ndarray], faces: np.ndarray, new_matrices: np.ndarray,
                    old_to_new: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """New face type: `faces` are the new crops; everything face-space follows `old_to_new`."""
    out = dict(batch)
    out["faces"] = faces
    out["landmarks"] = np.stack([transform_points(lm, m) for lm, m in zip(batch["landmarks"], old_to_new)]
                                ).astype(np.float32)
    out["matrices"] = new_matrices.astype(np.float32)
    for name in _XSEG_ARRAYS:
        if name in batch:
            warped = [warp_to_face(m, a, size)[..., 0] for m, a in zip(batch[name], old_to_new)]
            out[name] = (np.stack(warped) >= 128).astype(np.uint8)[..., None] * 255
    out.update(derived_arrays(faces, out["landmarks"], size))
    return out


def _converted_polygons(polygons: dict[str, list], affines: np.ndarray) -> dict[str, list]:
    return {key: [{"type": p["type"], "pts": transform_points(np.asarray(p["pts"], np.float64).reshape(-1, 2),
                                                               affines[int(key)]).tolist()}
                  for p in polys]
            for key, polys in polygons.items()}


def _resized_batches(fs: Faceset, names: list[str], size: int) -> Iterator[dict[str, np.ndarray]]:
    for a in range(0, len(fs), BATCH):
        yield resized_batch(fs.read_many(names, np.arange(a, min(len(fs), a + BATCH))), size)


def _converted_batches(fs: Faceset, names: list[str], plan: dict[str, np.ndarray], size: int,
                       tally: dict[str, int]) -> Iterator[dict[str, np.ndarray]]:
    """New crops chunk by chunk: from the source frames where possible, else from the stored face.

    `tally` counts both kinds for the summary.
    """
    sources = available_sources(fs)
    n = len(fs)
    chunk = max(BATCH, _CHUNK_BYTES // (size * size * 3))
    for a in range(0, n, chunk):
        sl = slice(a, min(n, a + chunk))
        crops, found = crops_from_sources(sources, plan["source_id"][sl], plan["frame_index"][sl],
                                          plan["new_matrices"][sl], size)
        for b in range(0, len(crops), BATCH):
            idx = np.arange(a + b, min(sl.stop, a + b + BATCH))
            batch = fs.read_many(names, idx)
            faces, cut = crops[b:b + BATCH].copy(), found[b:b + BATCH]
            for k in np.flatnonzero(~cut):
                faces[k] = warp_to_face(batch["faces"][k], plan["old_to_new"][idx[k]], size,
                                        interpolation=cv2.INTER_LANCZOS4)
            tally["from_source"] += int(cut.sum())
            tally["rewarped"] += int((~cut).sum())
            yield converted_batch(batch, faces, plan["new_matrices"][idx], plan["old_to_new"][idx], size)


def resize_faceset(fs: Faceset, output: str, *, size: int, face_type: FaceType | None = None,
                   progress: bool = True) -> ResizeSummary:
    """Writes `fs` at `size` px and `face_type` (None = unchanged) as a new faceset at `output`."""
    start = time.time()
    if size < 1:
        raise UserError(f"{fs.path}: --size must be positive, got {size}")
    new_type = fs.face_type if face_type is None else FaceType(face_type)
    if FaceType.MARK_ONLY in (new_type, fs.face_type):
        raise UserError(f"{fs.path}: mark_only faces have no crop to resize or convert")
    check_new_output(output, not_same_as=fs.path)
    n = len(fs)
    names = [name for name in fs.array_names if name not in schema.WRITER_FILLED]
    tally = {"from_source": 0, "rewarped": 0}
    if new_type == fs.face_type:
        scale = size / fs.size
        old_to_new = np.broadcast_to(np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]]), (n, 2, 3))
        batches = _resized_batches(fs, names, size)
    else:
        plan = fs.read_many(["landmarks", "source_landmarks", "matrices", "source_id", "frame_index"], np.arange(n))
        plan["new_matrices"], old_to_new = plan_conversion(plan["landmarks"], plan["source_landmarks"],
                                                           plan["matrices"], size, new_type)
        plan["old_to_new"] = old_to_new
        batches = _converted_batches(fs, names, plan, size, tally)

    producer = {"program": "preprocessing.faceset resize", "input": os.path.abspath(fs.path),
                "from": {"size": fs.size, "face_type": fs.face_type.dfl_name}}
    write_faces(output, like=fs, indices=np.arange(n), batches=batches, producer=producer, size=size,
                face_type=new_type, polygons=_converted_polygons(read_polygons(fs), old_to_new),
                progress=progress, desc="resize")
    if tally["rewarped"]:
        borders = (f"; the larger {new_type.dfl_name} crop has black borders where the "
                   f"{fs.face_type.dfl_name} crop ended" if new_type > fs.face_type else "")
        log.warning("%s: %d faces were re-warped from their stored crops (source frames "
                    "unavailable)%s", output, tally["rewarped"], borders)
    return ResizeSummary(output, n, size, new_type, tally["from_source"], tally["rewarped"], time.time() - start)
