"""One merge job end to end: check the inputs, stream frames through the `Merger`, write outputs.

Everything that can be refused is checked before the model is compiled: options and their ranges,
the keyframe file, the input media, the faceset's origin, the checkpoint, the output path.
"""
from __future__ import annotations

import os
import time
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from engine.merge import outputs
from engine.merge.faces import FaceTable
from engine.merge.model import load_model, with_xseg
from engine.merge.options import NAMES, Keyframes, uses_xseg, validate
from engine.merge.program import Merger
from engine.provenance import watermark
from preprocessing.errors import UserError
from preprocessing.faceset import Faceset
from preprocessing.images import open_source


class MergeJob:
    def __init__(self, *, workdir: str, input_path: str, faceset: str, output: str, options: dict[str, Any],
                 keyframes: str | None = None, mask_output: str | None = None, batch_size: int = 8,
                 chunk_frames: int = 32, compute_dtype: str = "auto", smooth_landmarks: bool = False,
                 step: int | None = None, crf: int = 18, seed: int = 0, xseg: str | None = None,
                 watermark: bool = True):
        missing = set(NAMES) - set(options)
        if missing:
            raise UserError(f"merge config lacks {', '.join(sorted(missing))}")
        if batch_size < 1 or chunk_frames < 1 or not 0 <= crf <= 51:
            raise UserError("batch_size and chunk_frames must be >= 1 and crf in 0..51")
        self.options = validate(options, "--config")
        self.keyframes_path = keyframes
        self.keyframes = Keyframes.load(self.options, keyframes)
        self.source = open_source(input_path)
        for out in (output, mask_output):
            if out and os.path.abspath(out) == os.path.abspath(input_path):
                raise UserError(f"{out}: output would overwrite the input")
        self.faceset_path = faceset
        self.faces = FaceTable.from_faceset(Faceset.open(faceset), self.source, smooth=smooth_landmarks)
        if not len(self.faces):
            raise UserError(f"{faceset}: no faces from {input_path}; nothing to merge")
        xseg_modes = sorted(m for m in self.keyframes.values("mask_mode") if uses_xseg(m))
        if xseg_modes and not xseg:
            raise UserError(f"mask_mode {xseg_modes[0]} needs a trained XSeg: pass --xseg=XSEG_RUN_DIR "
                            "(python -m engine.xseg_train)")
        self.model = load_model(workdir, step, compute_dtype)
        if xseg_modes:
            self.model = with_xseg(self.model, xseg)
        self.workdir, self.output, self.mask_output, self.crf = workdir, output, mask_output, crf
        self.merger = Merger(self.model, self.faces, self.keyframes, batch_size=batch_size, seed=seed)
        self.chunk_frames = chunk_frames
        self.watermark = watermark

    def _frame_size(self) -> tuple[int, int]:
        if self.options["mode"] == "raw-predict":
            return self.model.resolution, self.model.resolution
        if self.source.size:
            return self.source.size
        first = next(self.source.iter_frames(0))[2]  # a folder: the first image's size
        return first.shape[1], first.shape[0]

    def run(self, progress: bool = True, preview: str | None = None, preview_frames: int = 4) -> dict[str, Any]:
        record = outputs.provenance(self.source, self.faceset_path, self.workdir, self.model.step,
                                    self.model.config, self.options, self.keyframes_path)
        meta = outputs.container_metadata(record)
        # Frames with a swapped face carry an invisible watermark (tool + model id); frames without
        # one are passed through bit for bit, as the input had them.
        payload = watermark.payload_for_record(record) if self.watermark else None
        size = self._frame_size()
        sink = outputs.FrameSink(self.output, self.source, size, audio=True, crf=self.crf, metadata=meta)
        mask_sink = None
        with_faces = self.faces.frames_with_faces
        wanted = set(with_faces[int(i)] for i in np.linspace(0, len(with_faces) - 1, min(preview_frames,
                                                                                          len(with_faces))))
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        counts = {"frames": 0, "frames_with_faces": 0, "faces": 0}
        start = time.perf_counter()
        try:
            if self.mask_output:
                mask_sink = outputs.FrameSink(self.mask_output, self.source, size, audio=False, crf=self.crf,
                                              metadata=meta)
            originals: dict[int, np.ndarray] = {}

            def frames():
                for index, pts, image in self.source.iter_frames(0):
                    if image is None:
                        raise UserError(f"{self.source.path}: frame {index} is unreadable")
                    if index in wanted:
                        originals[index] = image
                    yield index, pts, image

            with tqdm(total=self.source.frame_count, unit="frame", disable=not progress, dynamic_ncols=True) as bar:
                for frame in self.merger.merge(frames(), self.chunk_frames):
                    image = frame.image
                    if payload is not None and frame.swapped and watermark.fits(*image.shape[:2]):
                        image = np.asarray(watermark.embed(image, payload))
                    sink.write(frame.index, frame.pts, image)
                    if mask_sink:
                        mask_sink.write(frame.index, frame.pts, frame.mask)
                    if frame.index in originals:
                        pairs.append((_fit(originals.pop(frame.index), frame.image), frame.image))
                    counts["frames"] += 1
                    counts["frames_with_faces"] += frame.faces > 0
                    counts["faces"] += frame.faces
                    bar.update(1)
            sink.close()
            if mask_sink:
                mask_sink.close()
        except BaseException:
            sink.abort()
            if mask_sink:
                mask_sink.abort()
            raise
        elapsed = time.perf_counter() - start
        record["frames"] = counts
        sidecar = outputs.write_sidecar(self.output, record)
        if self.mask_output:
            outputs.write_sidecar(self.mask_output, record)
        if preview and pairs:
            outputs.write_preview(preview, pairs)
        return dict(counts, seconds=elapsed, fps=counts["frames"] / max(elapsed, 1e-9), sidecar=sidecar,
                    compilations=self.merger.compilations)


def _fit(original: np.ndarray, merged: np.ndarray) -> np.ndarray:
    """The original frame at the merged frame's size (raw-predict outputs face-sized frames)."""
    if original.shape == merged.shape:
        return original
    return cv2.resize(original, (merged.shape[1], merged.shape[0]), interpolation=cv2.INTER_AREA)
