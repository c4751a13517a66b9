"""`python -m engine.xseg_apply`: predict XSeg masks for a whole faceset (DFL_SPEC §2.4).

  python -m engine.xseg_apply --workdir=runs/xseg --faceset=data_dst          # writes xseg_masks
  python -m engine.xseg_apply --workdir=runs/xseg --faceset=data_dst --remove # drops it

See `engine.xseg.apply` for what is predicted and how it is stored.
"""
from __future__ import annotations

import time
from typing import Sequence

from absl import flags

from engine.compile_cache import use_default_compilation_cache
from preprocessing.errors import UserError, check_command_line, run_app

_WORKDIR = flags.DEFINE_string("workdir", None, "An engine.xseg_train run folder (its newest checkpoint is used).")
_FACESET = flags.DEFINE_string("faceset", None, "The faceset to write xseg_masks into.")
_REMOVE = flags.DEFINE_boolean("remove", False, "Remove the faceset's xseg_masks instead.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Faces per jitted prediction.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, _FACESET)
    use_default_compilation_cache()
    # Imports JAX: after the cache default (JAX reads it at import) and flag parsing (fast --help).
    from engine.xseg.apply import MASK_ARRAY, apply_xseg

    if _REMOVE.value:
        from preprocessing.faceset.edit import remove_array

        remove_array(_FACESET.value, MASK_ARRAY)
        print(f"removed {MASK_ARRAY} from {_FACESET.value}")
        return
    if not _WORKDIR.value:
        raise UserError("--workdir is required")
    start = time.perf_counter()
    count = apply_xseg(_WORKDIR.value, _FACESET.value, _BATCH.value, _PROGRESS.value)
    elapsed = time.perf_counter() - start
    print(f"wrote {MASK_ARRAY} for {count} faces in {elapsed:.1f} s ({count / elapsed:.1f} faces/s) "
          f"into {_FACESET.value}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
