"""`python -m engine.provenance verify FILE`: say whether a file is marked as a face-swap.

FILE is a video, an image or a folder of PNG frames. The report lists the container comment
and description (videos), the sidecar FILE.provenance.json, a C2PA manifest (with the [c2pa]
extra), and the pixel watermark voted over
the frames with its bit accuracy. Exit status: 0 if any marker was found, 1 if none, 2 if the
input cannot be read.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import flags, logging

from preprocessing.errors import UserError, run_app

_MAX_FRAMES = flags.DEFINE_integer("max_frames", 300, "Read at most this many frames for the watermark (0: all).")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 3 or argv[1] != "verify":
        raise UserError("usage: python -m engine.provenance verify FILE")
    if _MAX_FRAMES.value < 0:
        raise UserError("--max_frames must be >= 0")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from engine.provenance.verify import examine  # imports JAX: after flag parsing, so --help is fast

    findings = examine(argv[2], max_frames=_MAX_FRAMES.value)
    print("\n".join(findings.lines()))
    sys.exit(0 if findings.markers else 1)


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
