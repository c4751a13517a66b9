"""Swap-quality evaluation of a swapped video against its original: the library behind
`python -m engine.evaluate` (see that module for the metrics). Kept apart from the CLI so importing
it defines no absl flags."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from engine.evaluation import geometry_metrics as geo
from engine.evaluation import quality
from engine.evaluation.identity import MODEL_LICENCE, FaceEmbedder, cosine_similarity, faceset_identity
from engine.evaluation.report import summarise
from preprocessing.detect import create_detector
from preprocessing.errors import UserError
from preprocessing.masks import hull_mask
from preprocessing.video import Frame, VideoInfo, probe, read_frames


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    detector: str = "blazeface"
    identity_every: int = 1
    faceset_samples: int = 16
    progress: bool = False


def _open_pair(input_path: str, output_path: str) -> tuple[VideoInfo, VideoInfo]:
    """Probes both videos and refuses pairs whose frames cannot correspond one to one."""
    original, swapped = probe(input_path), probe(output_path)
    if swapped.frame_count != original.frame_count:
        raise UserError(f"{output_path}: {swapped.frame_count} frames, but {input_path} has "
                        f"{original.frame_count}; the swapped video needs one frame per input frame")
    if (swapped.width, swapped.height) != (original.width, original.height):
        raise UserError(f"{output_path}: {swapped.width}x{swapped.height} frames, but {input_path} "
                        f"has {original.width}x{original.height}")
    return original, swapped


def _paired_frames(original: VideoInfo, swapped: VideoInfo) -> Iterator[tuple[Frame, Frame]]:
    """Frame i of both videos, together; a decode that runs short of `probe`'s count is an error."""
    try:
        yield from zip(read_frames(original), read_frames(swapped), strict=True)
    except ValueError as e:  # raised by zip(strict=True) only: the body yields nothing else
        raise UserError(f"{swapped.path} / {original.path}: decoded frame counts differ ({e})") from None


def _frame_record(index: int) -> dict[str, Any]:
    keys = ("sim_src", "sim_dst", "pose_input", "pose_output", "pose_delta", "pose_error",
            "expression_error", "ssim", "mse", "psnr_db")
    return {"frame": index, "input_face": False, "output_face": False, **dict.fromkeys(keys)}


def evaluate_videos(input_path: str, output_path: str, src: str, dst: str | None = None,
                    opts: EvalOptions = EvalOptions()) -> dict[str, Any]:
    """All metrics for one swapped video: {"summary": ..., "frames": [per-frame records], ...}.

    Raises UserError for unreadable files, videos whose frames do not pair up, an empty faceset,
    or an input video with no face in any frame.
    """
    original, swapped = _open_pair(input_path, output_path)
    embedder = FaceEmbedder()
    src_identity = faceset_identity(embedder, src, opts.faceset_samples)
    dst_identity = faceset_identity(embedder, dst, opts.faceset_samples) if dst else None
    detectors = create_detector(opts.detector, max_faces=1), create_detector(opts.detector, max_faces=1)
    n, hw = original.frame_count, (original.height, original.width)
    tracks = np.full((2, n, 68, 2), np.nan)  # input, output
    labs = np.full((2, n, 3), np.nan)
    records = []
    for frame_in, frame_out in tqdm(_paired_frames(original, swapped), total=n, unit="frame",
                                    disable=not opts.progress):
        a, b, i = frame_in.image, frame_out.image, frame_in.index
        rec = _frame_record(i)
        faces = [d.detect(img) for d, img in zip(detectors, (a, b))]
        for k, found in enumerate(faces):
            if found:
                tracks[k, i] = found[0].landmarks
        rec["input_face"], rec["output_face"] = bool(faces[0]), bool(faces[1])
        if faces[0]:
            mask = hull_mask(hw, tracks[0, i])[..., 0] > 0
            mse = quality.masked_mse(a, b, mask)
            rec.update(ssim=quality.masked_ssim(a, b, mask), mse=mse, psnr_db=quality.psnr_from_mse(mse))
            labs[:, i] = quality.mean_lab(a, mask), quality.mean_lab(b, mask)
        if faces[0] and faces[1]:
            pose_in, pose_out = (geo.head_pose_degrees(tracks[k, i], hw) for k in (0, 1))
            rec.update(pose_input=pose_in, pose_output=pose_out, pose_delta=pose_out - pose_in,
                       pose_error=float(np.abs(pose_out - pose_in).mean()),
                       expression_error=geo.expression_error(tracks[1, i], tracks[0, i]))
            if i % opts.identity_every == 0:
                embedding = embedder.embed(b, tracks[1, i])
                dst_vector = dst_identity if dst_identity is not None else embedder.embed(a, tracks[0, i])
                rec.update(sim_src=float(cosine_similarity(embedding, src_identity)),
                           sim_dst=float(cosine_similarity(embedding, dst_vector)))
        records.append(rec)
    if not any(r["input_face"] for r in records):
        raise UserError(f"{input_path}: no face detected in any of its {n} frames")
    temporal = {
        "landmark_jitter_iod": {"input": geo.landmark_jitter(tracks[0]), "output": geo.landmark_jitter(tracks[1])},
        "colour_flicker_lab": {"input": quality.colour_flicker(labs[0]), "output": quality.colour_flicker(labs[1])},
    }
    return {
        "input": input_path, "output": output_path, "src": src, "dst": dst,
        "detector": opts.detector, "identity_model": MODEL_LICENCE,
        "options": dataclasses.asdict(opts),
        "summary": summarise(records, temporal),
        "frames": records,
    }


def summary_line(result: dict[str, Any]) -> str:
    s = result["summary"]
    return (f"evaluated {s['frames']} frames ({s['detected_fraction']:.0%} with an output face): identity "
            f"src {s['identity']['sim_src']:.3f} dst {s['identity']['sim_dst']:.3f} retrieval "
            f"{s['identity']['retrieval_accuracy']:.0%}; pose error {s['pose_error_deg']['mean']:.2f} deg; "
            f"expression {s['expression_error_iod']:.3f} IOD; SSIM {s['ssim']:.3f}; PSNR {s['psnr_db']:.1f} dB")
