"""`python -m engine.profile_summary TRACE`: re-print the per-op time summary of a profiler trace.

TRACE is a --profile_dir (its newest run), a run folder (…/plugins/profile/<timestamp>) or a
trace-event JSON file (perfetto_trace.json.gz, HOST.trace.json.gz). See engine/profiling.py for
what is counted.
"""
from __future__ import annotations

from typing import Sequence

from absl import flags

from engine.profiling import format_summary, summarize_trace
from preprocessing.errors import UserError, run_app

_TOP = flags.DEFINE_integer("top", 15, "rows per table")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        raise UserError("usage: python -m engine.profile_summary TRACE_DIR_OR_FILE [--top=N]")
    if _TOP.value < 1:
        raise UserError(f"--top={_TOP.value}: must be >= 1")
    print(format_summary(summarize_trace(argv[1]), _TOP.value))


if __name__ == "__main__":
    run_app(main)
