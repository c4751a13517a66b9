"""`python -m engine.merge`: put the trained model's swapped face into every frame of a video.

Example:
  python -m engine.merge --workdir=runs/liae --input=clip.mp4 --faceset=data_dst --output=result.mp4 \\
      --config=configs/merge.py:seamless --config.color_transfer=rct --mask_output=mask.mp4

--faceset must have been extracted from --input (checked by content hash). Frames without a face
are copied unchanged. Video output is H.264 with the input's audio, colour tags and frame timing
(--config.crf=0: lossless); an output path without an extension is a folder of PNGs. Every output
is marked synthetic (container metadata and a .provenance.json sidecar).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from engine.compile_cache import use_default_compilation_cache
from preprocessing.errors import UserError, check_command_line, run_app

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs", "merge.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{_DEFAULT_CONFIG}:overlay",
    "Merge config and mode, e.g. configs/merge.py:seamless; override fields with --config.erode=20 etc.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run folder (its newest checkpoint is used).")
_INPUT = flags.DEFINE_string("input", None, "The dst video, image folder or image.")
_FACESET = flags.DEFINE_string("faceset", None, "The dst faceset extracted from --input.")
_OUTPUT = flags.DEFINE_string("output", None, "result.mp4/.mov/.mkv, or a folder for PNG frames.")
_MASK_OUTPUT = flags.DEFINE_string("mask_output", None, "Also write the merge mask (video or PNG folder).")
_KEYFRAMES = flags.DEFINE_string("keyframes", None,
                                 "JSON list of {start, end, options} overriding merge options per frame range.")
_XSEG = flags.DEFINE_string("xseg", None, "XSeg run folder (python -m engine.xseg_train), for the xseg-* mask modes.")
_PREVIEW = flags.DEFINE_string("preview", None, "Side-by-side preview PNG (default: <output>.preview.png).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")
_C2PA_CERT = flags.DEFINE_string("c2pa_cert", None, "PEM certificate chain (signer first): sign a C2PA manifest "
                                 "declaring the output AI-generated (needs the [c2pa] extra; .mp4/.mov output).")
_C2PA_KEY = flags.DEFINE_string("c2pa_key", None, "PEM private key of --c2pa_cert.")

_PREVIEW_FRAMES = 4


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, _WORKDIR, _INPUT, _FACESET, _OUTPUT)
    if bool(_C2PA_CERT.value) != bool(_C2PA_KEY.value):
        raise UserError("--c2pa_cert and --c2pa_key go together")
    if _C2PA_CERT.value and os.path.splitext(_OUTPUT.value)[1].lower() not in (".mp4", ".mov"):
        raise UserError(f"{_OUTPUT.value}: a C2PA manifest needs an .mp4 or .mov output")
    use_default_compilation_cache()
    from engine.merge.run import MergeJob  # imports JAX: after flag parsing, so --help is fast

    cfg = _CONFIG.value
    from engine.merge.options import from_config
    options = from_config(cfg)
    job = MergeJob(workdir=_WORKDIR.value, input_path=_INPUT.value, faceset=_FACESET.value,
                   output=_OUTPUT.value, options=options, keyframes=_KEYFRAMES.value,
                   mask_output=_MASK_OUTPUT.value, batch_size=cfg.batch_size, chunk_frames=cfg.chunk_frames,
                   compute_dtype=cfg.compute_dtype, smooth_landmarks=cfg.smooth_landmarks,
                   step=cfg.step or None, crf=cfg.crf, seed=cfg.seed, xseg=_XSEG.value,
                   watermark=cfg.watermark)
    preview = _PREVIEW.value or os.path.normpath(_OUTPUT.value) + ".preview.png"
    stats = job.run(progress=_PROGRESS.value, preview=preview, preview_frames=_PREVIEW_FRAMES)
    if _C2PA_CERT.value:
        from engine.provenance import c2pa_manifest
        with open(stats["sidecar"], encoding="utf-8") as f, open(_C2PA_CERT.value, "rb") as c, \
                open(_C2PA_KEY.value, "rb") as k:
            c2pa_manifest.sign_file(_OUTPUT.value, json.load(f), c.read(), k.read())
    print(f"merged {stats['frames']} frames ({stats['frames_with_faces']} with faces, {stats['faces']} faces) "
          f"at {stats['fps']:.1f} frames/s into {_OUTPUT.value}; preview {preview}; "
          f"provenance {stats['sidecar']}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
