"""The merge driver: stream frames, batch their faces to the compiled program, composite, emit.

Frames are read in chunks (`chunk_frames`), so memory stays constant however long the video is.
Each chunk's faces are grouped by region bucket and static options and sent to the device in
fixed-size batches (the last one padded), so the program compiles once per (bucket, static
options) and `compilations` counts exactly that. Results are composited in frame order: a frame
with one face gets its merged region pasted, several faces are layered as DFL does
(`final = final*(1-a_k) + merged_k*a_k`), and frames without a face pass through untouched.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine.merge import filters, geometry
from engine.merge.compile_options import fft_safe_jit
from engine.merge.face_merge import merge_faces
from engine.merge.faces import FaceTable
from engine.merge.model import MergeModel
from engine.merge.options import Keyframes, StaticOptions, split


class MergedFrame(NamedTuple):
    index: int
    pts: float | None
    image: np.ndarray  # uint8 [H, W, 3] (raw-predict: [r, r, 3])
    mask: np.ndarray  # uint8 [H, W] (raw-predict: [r, r]): the merge alpha, 0 where no face
    faces: int
    swapped: bool  # a face was put in (False: no face, or mode "original")


@dataclasses.dataclass
class _Job:
    """One face waiting for the device."""

    frame: int  # position within the chunk
    plan: geometry.FacePlan
    region: np.ndarray
    background: np.ndarray | None  # None: the region itself (no frame denoise/degrade)
    numeric: dict[str, float]
    key_id: int  # frame index * 64 + face index: the face's random stream (idt, sot)


@jax.jit
def _frame_background(frame: jax.Array, denoise_power: jax.Array, degrade_power: jax.Array) -> jax.Array:
    """The frame behind the face after DFL's image denoise and bicubic degrade (§4.3 step 7.5)."""
    image = frame.astype(jnp.float32) / 255.0
    image = filters.bicubic_degrade(filters.denoise(image, denoise_power), degrade_power)
    return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.uint8)


@jax.jit
def _color_degrade(frame: jax.Array, power: jax.Array) -> jax.Array:
    """DFL's colour degrade of the whole output frame (§4.3 step 7.6)."""
    image = filters.color_degrade(frame.astype(jnp.float32) / 255.0, power)
    return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.uint8)


class Merger:
    """Merges frames with one model, one dst face table and a keyframed option set."""

    def __init__(self, model: MergeModel, faces: FaceTable, keyframes: Keyframes, *, batch_size: int = 8,
                 seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.faces, self.keyframes = model, faces, keyframes
        self.batch_size, self._seed = batch_size, seed
        self._programs: dict[tuple[int, StaticOptions], Any] = {}

    @property
    def compilations(self) -> int:
        """How many times the face program was compiled (one per region bucket, static options, and
        whether frames are denoised/degraded behind the face)."""
        return len(self._programs)

    # ------------------------------------------------------------------ device program
    def _program(self, size: int, static: StaticOptions, backgrounds: bool):
        key = (size, static, backgrounds)
        if key not in self._programs:
            m, n, r = self.model, self.batch_size, self.model.resolution
            u8 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.uint8)
            f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
            batch = {"regions": u8((n, size, size, 3)),
                     "face_mats": f32((n, 2, 3)), "out_mats": f32((n, 2, 3)), "hulls": u8((n, r, r, 1))}
            if backgrounds:
                batch["backgrounds"] = u8((n, size, size, 3))
            num = {name: f32((n,)) for name in _DEVICE_NUMERIC}
            keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), n))
            fn = fft_safe_jit(functools.partial(merge_faces, m.graphdef, static=static, resolution=r,
                                                compute_dtype=m.dtype, xseg_graphdef=m.xseg_graphdef))
            self._programs[key] = fn.lower(m.params, batch, num, keys, m.xseg_params).compile()
        return self._programs[key]

    def _dispatch(self, jobs: list[_Job], static: StaticOptions) -> list[tuple[int, dict[str, jax.Array]]]:
        """Starts the device program on jobs of one bucket and static option set, in fixed-size
        batches; returns (jobs in the batch, device outputs) without waiting, so the host prepares
        the next batches while the device works."""
        size, n = jobs[0].plan.size, self.batch_size
        base = jax.random.key(self._seed)
        pending = []
        for start in range(0, len(jobs), n):
            part = jobs[start:start + n]
            padded = part + [part[-1]] * (n - len(part))
            batch = {
                "regions": np.stack([j.region for j in padded]),
                "face_mats": np.stack([j.plan.face_mat for j in padded]),
                "out_mats": np.stack([j.plan.out_mat for j in padded]),
                "hulls": np.stack([j.plan.hull for j in padded]),
            }
            if any(j.background is not None for j in part):
                batch["backgrounds"] = np.stack([j.region if j.background is None else j.background for j in padded])
            program = self._program(size, static, "backgrounds" in batch)
            num = {name: np.array([j.numeric[name] for j in padded], np.float32) for name in _DEVICE_NUMERIC}
            keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
                jnp.array([j.key_id for j in padded], jnp.uint32))
            pending.append((len(part), program(self.model.params, batch, num, keys, self.model.xseg_params)))
        return pending

    # ------------------------------------------------------------------ frames
    def merge(self, frames: Iterable[tuple[int, float | None, np.ndarray]],
              chunk_frames: int = 32) -> Iterator[MergedFrame]:
        """Merged frames in input order, from (index, pts, RGB uint8) frames.

        Two chunks are in flight: chunk k+1 is read, cut and dispatched to the device before
        chunk k's results are fetched and composited, so host and device work overlap."""
        in_flight: _Chunk | None = None
        chunk: list[tuple[int, float | None, np.ndarray]] = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == chunk_frames:
                started = self._start(chunk)
                if in_flight is not None:
                    yield from self._finish(in_flight)
                in_flight, chunk = started, []
        started = self._start(chunk) if chunk else None
        for pending in (in_flight, started):
            if pending is not None:
                yield from self._finish(pending)

    def _start(self, chunk: list[tuple[int, float | None, np.ndarray]]) -> "_Chunk":
        """Plans and cuts every face of the chunk and dispatches them to the device."""
        r = self.model.resolution
        groups: dict[tuple[int, StaticOptions], list[_Job]] = {}
        backgrounds, statics, jobs_of_frame = [], [], []
        for pos, (index, _pts, image) in enumerate(chunk):
            options = self.keyframes.options_for(index)
            static, numeric = split(options)
            statics.append((static, numeric))
            faces = self.faces.faces_of(index)
            background = image
            if faces and (numeric["image_denoise_power"] > 0 or numeric["bicubic_degrade_power"] > 0):
                background = np.array(_frame_background(image, numeric["image_denoise_power"],
                                                          numeric["bicubic_degrade_power"]))
            backgrounds.append(background)
            jobs = []
            for face in faces:
                plan = geometry.plan_face(face.landmarks, r, self.model.face_type, numeric["output_face_scale"])
                changed = background is not image
                job = _Job(pos, plan, geometry.cut_region(image, plan.x0, plan.y0, plan.size),
                           geometry.cut_region(background, plan.x0, plan.y0, plan.size) if changed else None,
                           _device_numeric(numeric, face.motion, changed),
                           key_id=index * 64 + face.face_index)
                groups.setdefault((plan.size, static), []).append(job)
                jobs.append(job)
            jobs_of_frame.append(jobs)
        dispatched = [(jobs, self._dispatch(jobs, static)) for (_size, static), jobs in groups.items()]
        return _Chunk(chunk, backgrounds, statics, jobs_of_frame, dispatched)

    def _finish(self, state: "_Chunk") -> list[MergedFrame]:
        """Fetches a dispatched chunk's results and composites its frames."""
        r = self.model.resolution
        results: dict[int, dict[str, np.ndarray]] = {}
        for jobs, pending in state.dispatched:
            outputs = [{k: v[i] for k, v in out.items()}
                       for count, out in jax.device_get(pending) for i in range(count)]
            results.update((id(job), out) for job, out in zip(jobs, outputs))

        merged = []
        for pos, (index, pts, image) in enumerate(state.frames):
            static, numeric = state.statics[pos]
            jobs = state.jobs_of_frame[pos]
            if static.mode == "raw-predict":
                face = results[id(jobs[0])] if jobs else None
                out = face["face"] if face else np.zeros((r, r, 3), np.uint8)
                mask = face["alpha"][..., 0] if face else np.zeros((r, r), np.uint8)
                merged.append(MergedFrame(index, pts, out, mask, len(jobs), bool(jobs)))
                continue
            out, mask = _composite(image, state.backgrounds[pos], jobs, results)
            if jobs and numeric["color_degrade_power"] > 0:
                out = np.array(_color_degrade(out, numeric["color_degrade_power"]))
            merged.append(MergedFrame(index, pts, out, mask, len(jobs), bool(jobs) and static.mode != "original"))
        return merged


class _Chunk(NamedTuple):
    """A chunk of frames whose faces are on the device."""

    frames: list[tuple[int, float | None, np.ndarray]]
    backgrounds: list[np.ndarray]
    statics: list[tuple[StaticOptions, dict[str, float]]]
    jobs_of_frame: list[list[_Job]]
    dispatched: list[tuple[list[_Job], list[tuple[int, dict[str, jax.Array]]]]]


# Numeric inputs of the face program: the options it uses plus per-face motion and a frame flag.
_DEVICE_NUMERIC = ("erode", "blur", "hist_match_threshold", "blursharpen_amount", "motion_blur_power",
                   "motion_power", "motion_deg", "frame_ops")


def _device_numeric(numeric: dict[str, float], motion: tuple[float, float], frame_ops: bool) -> dict[str, float]:
    values = dict(numeric, motion_power=motion[0], motion_deg=motion[1], frame_ops=float(frame_ops))
    return {name: values[name] for name in _DEVICE_NUMERIC}


def _composite(image: np.ndarray, background: np.ndarray, jobs: list[_Job],
               results: dict[int, dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The output frame and its merge alpha (uint8 [H, W]) from a frame's merged regions."""
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.float32)
    if not jobs:
        return image, mask.astype(np.uint8)
    if len(jobs) == 1:  # DFL returns a single face's merge as is
        job = jobs[0]
        out = background if background is not image else image.copy()
        geometry.paste_region(out, results[id(job)]["region"], job.plan.x0, job.plan.y0)
        geometry.paste_region(mask, results[id(job)]["alpha"][..., 0].astype(np.float32), job.plan.x0, job.plan.y0)
        return out, mask.astype(np.uint8)
    final = background.astype(np.float32)
    for job in jobs:
        x0, y0, size = job.plan.x0, job.plan.y0, job.plan.size
        region = geometry.cut_region(final, x0, y0, size)
        alpha = results[id(job)]["alpha"].astype(np.float32) / 255.0
        region = region * (1.0 - alpha) + results[id(job)]["region"].astype(np.float32) * alpha
        geometry.paste_region(final, region, x0, y0)
        covered = geometry.cut_region(mask, x0, y0, size) + alpha[..., 0] * 255.0
        geometry.paste_region(mask, covered, x0, y0)
    out = np.round(np.clip(final, 0, 255)).astype(np.uint8)
    return out, np.round(np.clip(mask, 0, 255)).astype(np.uint8)
