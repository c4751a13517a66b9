"""`python -m engine.train`: train a SAEHD model on a src and a dst faceset.

Example:
  python -m engine.train --config=configs/saehd.py:liae-ud --config.model.resolution=128 \\
      --src=data_src --dst=data_dst --workdir=runs/liae --max_steps=100000

Re-running the same command resumes from the last checkpoint in --workdir. Safe edits on resume
(learning rate, batch size, random_warp, lr_dropout, loss switches) are applied; an optimiser change
resets the optimiser state with a warning; a change of the model's shape is refused.
Ctrl-C or SIGTERM saves a checkpoint and exits cleanly.

Pretraining: --config.train.pretrain=True --pretrain_faceset=PATH instead of --src/--dst; rerun
with pretrain off and --src/--dst to switch to normal training (engine/pretrain.py).

Several hosts: run the same command on each with --coordinator_address, --num_processes and
--process_id (or the JAX_* environment variables, or --auto_distributed); see engine/distributed.py
and BUILD.md.
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from engine import distributed
from engine.compile_cache import use_default_compilation_cache
from preprocessing.errors import check_command_line, run_app

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "saehd.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{_DEFAULT_CONFIG}:liae-ud",
    "Config file and argument, e.g. configs/saehd.py:liae-ud or configs/saehd.py:tiny; override fields with "
    "--config.model.resolution=256 etc.")
_SRC = flags.DEFINE_string("src", None, "Source faceset (the identity to put in).")
_DST = flags.DEFINE_string("dst", None, "Destination faceset (the faces to replace).")
_PRETRAIN_FACESET = flags.DEFINE_string(
    "pretrain_faceset", None, "With --config.train.pretrain=True: the faceset src and dst both read "
    "(many varied faces); --src/--dst are then not needed. See engine/pretrain.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, config.json, metrics, previews.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop after this many steps (overrides train.max_steps).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")
_PROFILE_STEPS = flags.DEFINE_string(
    "profile_steps", None, "FIRST:LAST (e.g. 100:105): write a jax.profiler trace of these steps (1-based, "
    "inclusive) and print a per-op time summary; see BUILD.md \"Profiling\".")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Where --profile_steps writes (default WORKDIR/profile).")


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, _WORKDIR)  # --src/--dst, or --pretrain_faceset: engine/pretrain.py checks them
    cfg = _CONFIG.value
    if _MAX_STEPS.value is not None:
        cfg.train.max_steps = _MAX_STEPS.value
    use_default_compilation_cache()
    # These import JAX (touching no device yet): after flag parsing, so --help is fast.
    from engine.profiling import StepProfiler, parse_profile_steps
    from engine.trainer import Trainer, summarize

    profile_steps = (parse_profile_steps(_PROFILE_STEPS.value, cfg.train.max_steps)
                     if _PROFILE_STEPS.value is not None else None)
    distributed.initialize_from_flags()  # before anything touches a device

    profiler = StepProfiler(profile_steps, _PROFILE_DIR.value or os.path.join(_WORKDIR.value, "profile")) \
        if profile_steps else None
    trainer = Trainer(cfg, _SRC.value, _DST.value, _WORKDIR.value, progress=_PROGRESS.value, profiler=profiler,
                      pretrain_faceset=_PRETRAIN_FACESET.value)
    try:
        last = trainer.run()
    finally:
        trainer.close()
    if distributed.is_main_process():
        print(f"trained to step {int(trainer.state['step'])}: {summarize(last)}; "
              f"checkpoints and preview.png in {_WORKDIR.value}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
