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

import json
import sys
import time
from typing import Sequence

from absl import flags

from engine.evaluation.pipeline import EvalOptions, evaluate_videos, summary_line
from engine.evaluation.report import to_json_safe, write_report
from preprocessing.detect import BACKENDS
from preprocessing.errors import UserError, check_command_line, run_app

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


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, quiet=False)
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
