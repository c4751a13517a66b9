"""Extraction as a library: a video, an image folder or one image -> a resumable faceset.

Flow: the main thread decodes frames in order and hands them to a pool of detector threads (OpenCV's
dnn and image functions release the GIL, so threads run in parallel without copying frames between
processes); results come back in frame order; the main thread optionally smooths landmarks over
time, builds the per-face records (alignment, crop, masks, pose, sharpness) and feeds the single
faceset writer, which commits whole shards. A rerun of the same command resumes from the writer's
committed progress.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import shutil
import threading
import time
from typing import Any, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from preprocessing.debug_draw import draw_debug
from preprocessing.detect import DetectedFace, create_detector
from preprocessing.errors import UserError
from preprocessing.face_record import face_record, stack_records
from preprocessing.face_types import FaceType
from preprocessing.faceset import FacesetWriter
from preprocessing.images import Source, open_source
from preprocessing.landmark_tracks import LandmarkTracks

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtractOptions:
    face_type: FaceType = FaceType.WHOLE_FACE
    size: int = 256
    detector: str = "blazeface"
    jobs: int = 0  # 0 = one detector thread per CPU core
    debug_dir: str | None = None
    min_face_size: float = 32.0
    max_faces: int = 0  # 0 = all faces of a frame
    tiles: str = "auto"
    smooth_landmarks: bool = False
    track: bool = False  # follow faces between frames (faster; see _DetectorPool)
    overwrite: bool = False
    shard_faces: int = 256
    progress: bool = True


@dataclasses.dataclass
class ExtractSummary:
    output: str
    frames: int  # frames processed in this run
    faces: int  # faces written in this run
    total_faces: int  # faces in the faceset
    frames_without_face: int
    seconds: float
    resumed_from: int  # first frame processed in this run

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        resumed = f", resumed at frame {self.resumed_from}" if self.resumed_from else ""
        return (
            f"extracted {self.faces} faces from {self.frames} frames in {self.seconds:.1f}s "
            f"({fps:.1f} frames/s{resumed}); {self.frames_without_face} frames without a face; "
            f"faceset {self.output} holds {self.total_faces} faces"
        )


def _prepare_output(output: str, overwrite: bool) -> bool:
    """Returns True when `output` already holds a faceset (so the writer resumes it)."""
    manifest = os.path.join(output, "manifest.json")
    if os.path.isfile(manifest):
        if not overwrite:
            return True
        shutil.rmtree(output)  # only a folder that is a faceset is ever removed
        return False
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"{output}: exists and is not a folder")
    if os.path.isdir(output) and os.listdir(output):
        raise UserError(f"{output}: folder is not empty and holds no faceset; choose another --output")
    return False


class _DetectorPool:
    """One detector per worker thread, built lazily in the thread that uses it.

    Work comes in runs of consecutive frames. With tracking on, the first frame of a run is
    detected afresh and the others follow its faces (one FaceMesh pass each instead of detector +
    refinement); runs are aligned to absolute frame numbers so results do not depend on threads.
    """

    def __init__(self, opts: ExtractOptions):
        self._opts = opts
        self._local = threading.local()

    def _detector(self):
        det = getattr(self._local, "detector", None)
        if det is None:
            options: dict[str, Any] = {"min_face_size": self._opts.min_face_size, "max_faces": self._opts.max_faces}
            if self._opts.detector == "blazeface":
                options.update(tiles=self._opts.tiles, redetect_every=TRACK_RUN)
            det = self._local.detector = create_detector(self._opts.detector, **options)
        return det

    def detect_run(self, images: list[np.ndarray | None]) -> list[list[DetectedFace] | None]:
        """Faces of each frame of a run (None for a frame whose detection failed)."""
        det, out, previous = self._detector(), [], None
        tracking = self._opts.track and self._opts.detector == "blazeface"
        for image in images:
            faces = None
            if image is not None:
                try:
                    faces = det.detect(image, previous=previous) if tracking else det.detect(image)
                except Exception as e:  # one broken frame must not stop a long run
                    log.warning("detection failed on a frame (%s); skipped", e)
            out.append(faces)
            previous = faces
        return out


TRACK_RUN = 8  # frames per tracking run: the detector runs at least this often


def _ordered_detections(
    frames: Iterator[tuple[int, float | None, np.ndarray | None]], pool: _DetectorPool, jobs: int, run: int
) -> Iterator[tuple[int, float | None, np.ndarray | None, list[DetectedFace] | None]]:
    """Runs detection on a bounded window of frame runs in parallel, yielding results in frame order.

    A run ends where `index % run == 0` starts the next one, so the split is the same for every
    thread count (and for a resumed extraction, from the next run boundary on).
    """
    window: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        def drain_one():
            batch, fut = window.popleft()
            for (index, pts, image), faces in zip(batch, fut.result()):
                yield index, pts, image, faces

        def submit(batch):
            window.append((batch, ex.submit(pool.detect_run, [image for _, _, image in batch])))

        batch: list = []
        for item in frames:
            if batch and item[0] % run == 0:
                submit(batch)
                batch = []
                if len(window) > jobs + 1:
                    yield from drain_one()
            batch.append(item)
        if batch:
            submit(batch)
        while window:
            yield from drain_one()


def extract(input_path: str, output: str, opts: ExtractOptions, producer_args: dict | None = None) -> ExtractSummary:
    """Extracts every face of `input_path` into the faceset folder `output` (resuming if it exists)."""
    start_time = time.time()
    source = open_source(input_path)
    resume = _prepare_output(output, opts.overwrite)
    created = not resume
    jobs = opts.jobs or os.cpu_count() or 1
    cv2.setNumThreads(1)  # parallelism comes from the detector threads
    producer = {
        "program": "preprocessing.extract",
        "detector": opts.detector,
        "args": producer_args or {},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    writer = FacesetWriter(
        output, size=opts.size, face_type=opts.face_type, producer=producer,
        resume=resume, shard_faces=opts.shard_faces,
    )
    counts = {"frames": 0, "faces": 0, "no_face": 0}
    first = 0
    try:
        with writer:
            sid = writer.add_source(source.describe())
            first = writer.frames_done(sid)
            if first >= source.frame_count:
                print(f"{output}: already complete ({writer.count} faces from {source.frame_count} frames)")
            _extract_frames(source, first, writer, sid, opts, jobs, counts)
    except BaseException:
        if created and writer.count == 0:
            shutil.rmtree(output, ignore_errors=True)
        raise
    total_faces = writer.count
    if total_faces == 0:
        if created:
            shutil.rmtree(output, ignore_errors=True)
        raise UserError(f"{input_path}: no face found (no faceset written)")
    return ExtractSummary(output, counts["frames"], counts["faces"], total_faces, counts["no_face"],
                          time.time() - start_time, first)


def _extract_frames(source: Source, first: int, writer: FacesetWriter, sid: int, opts: ExtractOptions,
                    jobs: int, counts: dict[str, int]) -> None:
    """The main loop: detections in frame order -> (smoothed) landmarks -> face records -> writer."""
    if opts.debug_dir:
        os.makedirs(opts.debug_dir, exist_ok=True)
    tracks = LandmarkTracks() if opts.smooth_landmarks else None
    frame_rate = source.fps or 30.0
    detections_in_order = _ordered_detections(
        source.iter_frames(first), _DetectorPool(opts), jobs, TRACK_RUN if opts.track else 1)
    with tqdm(total=source.frame_count, initial=first, unit="frame", disable=not opts.progress,
              desc=os.path.basename(source.path)) as bar:
        t0 = time.time()
        for index, pts, image, detections in detections_in_order:
            records = []
            if image is not None and detections:
                if tracks is not None:
                    detections = tracks.smooth(pts if pts is not None else index / frame_rate, detections)
                candidates = (face_record(image, d, opts.size, opts.face_type) for d in detections)
                records = [r for r in candidates if r is not None]
            writer.add_frame(sid, index, stack_records(records, opts.size))
            if opts.debug_dir and image is not None:
                _write_debug(opts.debug_dir, source, index, image, records, opts.size)
            counts["frames"] += 1
            counts["faces"] += len(records)
            counts["no_face"] += not records
            bar.update(1)
            bar.set_postfix_str(f"{counts['faces']} faces, {counts['faces'] / max(time.time() - t0, 1e-6):.1f} faces/s",
                                refresh=False)


def _write_debug(debug_dir: str, source: Source, index: int, image: np.ndarray, records: list, size: int) -> None:
    name = os.path.splitext(os.path.basename(source.files[index]))[0] if source.kind == "images" else f"{index:06d}"
    drawn = draw_debug(image, records, size)
    cv2.imwrite(os.path.join(debug_dir, f"{name}.jpg"), drawn[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
