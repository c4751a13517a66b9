"""Swap-quality metrics for a swapped video against its original (issue 9, DFL_SPEC §5).

  python -m engine.evaluate --input=dst.mp4 --output=swapped.mp4 --src=data_src \
      [--dst=data_dst] [--report=eval_dir]

Frame i of --output is compared with frame i of --input (merge keeps the frame count). Per frame:
identity (dlib embeddings of the swapped face vs the src faceset's identity and vs the dst
identity: the --dst faceset's if given, else the original frame's face), pose and expression
error (swapped vs original landmarks), SSIM and PSNR inside the original face's hull mask (a
reconstruction score, meaningful for self-swaps); over the video: landmark jitter and colour
flicker of both videos, and the fraction of output frames with a detected face. --report writes
metrics.json and curves.png; without it the summary JSON goes to stdout.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any, Iterator, Sequence

import numpy as np
from absl import flags
from tqdm import tqdm

from engine.evaluation import geometry_metrics as geo
from engine.evaluation import quality
from engine.evaluation.identity import MODEL_LICENCE, FaceEmbedder, cosine_similarity, faceset_identity
from engine.evaluation.report import summarise, to_json_safe, write_report
from preprocessing.detect import BACKENDS, create_detector
from preprocessing.errors import UserError, run_app
from preprocessing.masks import hull_mask
from preprocessing.video import Frame, VideoInfo, probe, read_frames

_INPUT = flags.DEFINE_string("input", None, "The original (destination) video.")
_OUTPUT = flags.DEFINE_string("output", None, "The swapped video, one frame per --input frame.")
_SRC = flags.DEFINE_string("src", None, "Source faceset: the identity the swap should show.")
_DST = flags.DEFINE_string(
    "dst", None, "Destination faceset (optional): the dst identity; default: each original frame's face.")
_REPORT = flags.DEFINE_string(
    "report", None, "Folder for metrics.json and curves.png; default: summary JSON on stdout.")
_DETECTOR = flags.DEFINE_enum("detector", "blazeface", list(BACKENDS), "Face detector + landmarks for both videos.")
_IDENTITY_EVERY = flags.DEFINE_integer(
    "identity_every", 1, "Embed every N-th frame (dlib's ResNet costs ~150 ms per face on a CPU).", lower_bound=1)
_FACESET_SAMPLES = flags.DEFINE_integer(
    "faceset_samples", 16, "Faceset faces averaged into an identity vector.", lower_bound=1)
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")


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


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    for flag in (_INPUT, _OUTPUT, _SRC):
        if not flag.value:
            raise UserError(f"--{flag.name}: required "
                            "(usage: --input=DST_VIDEO --output=SWAPPED_VIDEO --src=SRC_FACESET)")
    started = time.perf_counter()
    opts = EvalOptions(detector=_DETECTOR.value, identity_every=_IDENTITY_EVERY.value,
                       faceset_samples=_FACESET_SAMPLES.value, progress=_PROGRESS.value)
    result = evaluate_videos(_INPUT.value, _OUTPUT.value, _SRC.value, _DST.value, opts)
    if _REPORT.value:
        json_path, _ = write_report(_REPORT.value, result)
        destination = json_path
    else:
        json.dump(to_json_safe(result["summary"]), sys.stdout, indent=1)
        print()
        destination = "stdout"
    print(f"{summary_line(result)}; {time.perf_counter() - started:.1f} s -> {destination}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
