"""`python -m engine.dataset_export`: a detector-training data set from real clips and their swaps.

Example:
  python -m engine.dataset_export --pairs=pairs.json --output=dataset --crf=23,40 --split=0.7,0.15,0.15 --seed=0

pairs.json lists {fake, mask, identity_src, identity_dst[, real]} per swap (format in
engine/dataset/pairs.py): fake and mask are what `python -m engine.merge --output --mask_output`
wrote, and the real clip defaults to the source named in the fake's provenance sidecar. The
output folder gets every clip re-encoded at each crf (FaceForensics++'s c23/c40), lossless binary
masks, frame and video labels, identities, model and merge settings, train/val/test splits with
no identity in two splits, and manifest.json with the sha256 of every file. The same inputs and
seed give the same bytes.
"""
from __future__ import annotations

from typing import Sequence

from absl import flags

from preprocessing.errors import check_command_line, run_app

_PAIRS = flags.DEFINE_string("pairs", None, "JSON list of {fake, mask, identity_src, identity_dst[, real]}.")
_OUTPUT = flags.DEFINE_string("output", None, "Data set folder to create (absent or empty).")
_CRF = flags.DEFINE_string("crf", "23,40", "H.264 crf of each compression variant, comma-separated.")
_SPLIT = flags.DEFINE_string("split", "0.7,0.15,0.15", "train,val,test fractions of the clips (by identity).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the identity split.")
_MASK_THRESHOLD = flags.DEFINE_float("mask_threshold", 0.5, "Merge alpha at and above which a pixel is fake.")


def main(argv: Sequence[str]) -> None:
    from engine.dataset.export import export, parse_crfs
    from engine.dataset.pairs import load_pairs
    from engine.dataset.splits import parse_fractions

    check_command_line(argv, _PAIRS, _OUTPUT)
    crfs, fractions = parse_crfs(_CRF.value), parse_fractions(_SPLIT.value)
    manifest = export(load_pairs(_PAIRS.value), _OUTPUT.value, crfs=crfs, fractions=fractions, seed=_SEED.value,
                      threshold=_MASK_THRESHOLD.value)
    counts = ", ".join(f"{name} {len(s['clips'])} clips / {len(s['identities'])} identities"
                       for name, s in manifest["splits"].items())
    print(f"wrote {len(manifest['clips'])} clips, {len(manifest['files'])} files to {_OUTPUT.value} ({counts})")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
