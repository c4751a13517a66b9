"""`python -m engine.xseg_train`: train an XSeg face-segmentation model on labelled faces.

Examples:
  python -m engine.xseg_train --config=configs/xseg.py --faceset=data_src --faceset=data_dst \\
      --workdir=runs/xseg
  python -m engine.xseg_train --config=configs/xseg.py:tiny --config.pseudo_labels=mesh \\
      --faceset=data_src --workdir=runs/xseg_boot --max_steps=2000

Labelled faces are those with `xseg_labelled` == 1 (their `xseg_labels` are the targets);
--config.pseudo_labels=mesh adds every other face with its landmark/FaceMesh mask (a bootstrap
without pretrained weights). Rerunning the same command resumes; Ctrl-C or SIGTERM saves and exits.
Apply the result with `python -m engine.xseg_apply --workdir=... --faceset=...`.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from engine.compile_cache import use_default_compilation_cache
from preprocessing.errors import UserError, check_command_line, run_app

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "xseg.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Config file and preset, e.g. configs/xseg.py or configs/xseg.py:tiny; "
    "override fields with --config.model.resolution=128 etc.")
_FACESETS = flags.DEFINE_multi_string("faceset", None, "A faceset to take faces from (repeatable).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, config.json, metrics, preview.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop after this many steps (overrides train.max_steps).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, _WORKDIR)
    if not _FACESETS.value:
        raise UserError("--faceset is required (repeat it for several facesets)")
    cfg = _CONFIG.value
    if _MAX_STEPS.value is not None:
        cfg.train.max_steps = _MAX_STEPS.value
    use_default_compilation_cache()
    from engine.xseg.trainer import XsegTrainer  # imports JAX: after flag parsing, so --help is fast

    start = time.perf_counter()
    trainer = XsegTrainer(cfg, list(_FACESETS.value), _WORKDIR.value, progress=_PROGRESS.value)
    try:
        last = trainer.run()
    finally:
        trainer.close()
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"trained XSeg to step {int(trainer.state['step'])} in {time.perf_counter() - start:.0f} s"
          f"{': ' + summary if summary else ''}; checkpoints and preview.png in {_WORKDIR.value}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
