"""The frames <-> video tool as a program (DFL's VideoEd).

Usage: python -m preprocessing.video extract --input=VIDEO --output_dir=DIR [--format=png|jpg]
                                             [--start=N] [--end=N]
       python -m preprocessing.video assemble --input_dir=DIR --output=VIDEO [--fps=F]
                                              [--audio_from=VIDEO] [--lossless] [--crf=18]
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from absl import flags

from preprocessing.errors import UserError, run_app
from preprocessing.video.frames import FRAME_FORMATS, assemble_frames, extract_frames

FLAGS = flags.FLAGS

flags.DEFINE_string("input", None, "extract: the video to split into frames.")
flags.DEFINE_string("output_dir", None, "extract: folder for the frames (created; must "
                    "not already hold frames of --format).")
flags.DEFINE_enum("format", "png", list(FRAME_FORMATS), "extract: image format.")
flags.DEFINE_integer("start", 0, "extract: first frame index (0-based).")
flags.DEFINE_integer("end", None, "extract: stop before this frame index (default: all).")
flags.DEFINE_string("input_dir", None, "assemble: folder of frames, in natural name order.")
flags.DEFINE_string("output", None, "assemble: the video to write (.mp4, .mov or .mkv).")
flags.DEFINE_float("fps", None, "assemble: frame rate (default: --audio_from's, else 25).")
flags.DEFINE_string("audio_from", None, "assemble: reference video whose audio, colour "
                    "tags and frame rate the output takes.")
flags.DEFINE_boolean("lossless", False, "assemble: bit-exact RGB H.264 (libx264rgb crf 0).")
flags.DEFINE_integer("crf", 18, "assemble: H.264 quality when not lossless (lower = better).")

_USAGE = "usage: python -m preprocessing.video extract|assemble --flags (see --help)"


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or argv[1] not in ("extract", "assemble"):
        raise UserError(f"{' '.join(argv[1:]) or 'no command'}: unknown command; {_USAGE}")

    def need(*names: str) -> None:
        for name in names:
            if FLAGS[name].value is None:
                raise UserError(f"--{name}: required for '{argv[1]}'")

    started = time.perf_counter()
    if argv[1] == "extract":
        need("input", "output_dir")
        count = extract_frames(FLAGS.input, FLAGS.output_dir, FLAGS.format, FLAGS.start,
                               FLAGS.end, progress=True)
        target = FLAGS.output_dir
    else:
        need("input_dir", "output")
        count = assemble_frames(FLAGS.input_dir, FLAGS.output, FLAGS.fps, FLAGS.audio_from,
                                FLAGS.lossless, FLAGS.crf, progress=True)
        target = FLAGS.output
    print(f"{argv[1]}: {count} frames in {time.perf_counter() - started:.1f} s -> {target}",
          file=sys.stdout)


def run() -> None:
    """Console-script entry (`fs-video`)."""
    run_app(main)


if __name__ == "__main__":
    run()
