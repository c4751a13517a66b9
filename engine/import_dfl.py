"""`python -m engine.import_dfl`: a DeepFaceLab SAEHD or Quick96 model -> a new workdir.

  python -m engine.import_dfl --model_dir=DFL/workspace/model --name=new --workdir=runs/imported
  python -m engine.train --config=configs/workdir.py:runs/imported --src=... --dst=... --workdir=runs/imported
  python -m engine.merge --workdir=runs/imported --input=clip.mp4 --faceset=data_dst --output=out.mp4

Reads `NAME_SAEHD_data.dat` (or `NAME_Quick96_data.dat`) and the weight files next to it through
a restricted unpickler; see `engine.dfl.model_io` for what is and is not carried over.
"""
from __future__ import annotations

from typing import Sequence

from absl import flags

from preprocessing.errors import check_command_line, run_app

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "DFL's model folder (workspace/model).")
_NAME = flags.DEFINE_string("name", None, "The model's name: the NAME in NAME_SAEHD_data.dat.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The new run folder to write (must hold no checkpoint).")
_MODEL = flags.DEFINE_enum("model", None, ["SAEHD", "Quick96"], "DFL's model class (default: the one found).")


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, _MODEL_DIR, _NAME, _WORKDIR)
    from engine.dfl.model_io import import_model  # imports JAX: after flag parsing, so --help is fast

    got = import_model(_MODEL_DIR.value, _NAME.value, _WORKDIR.value, _MODEL.value)
    m = got.config.model
    print(f"imported {_NAME.value} ({m.archi}, {m.resolution} px {m.face_type}, ae {m.ae_dims} / e "
          f"{m.e_dims} / d {m.d_dims} / m {m.d_mask_dims}) at iteration {got.step}, optimiser state "
          f"{'imported' if got.optimizer_imported else 'fresh'}, into {_WORKDIR.value}\n"
          f"continue: python -m engine.train --config=configs/workdir.py:{_WORKDIR.value} "
          f"--src=SRC --dst=DST --workdir={_WORKDIR.value}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
