"""Training metrics: `<workdir>/metrics.jsonl` plus TensorBoard event files in `<workdir>/tb/`.

Why both: the JSON lines are for scripts and tests (one object per logged step, readable with
nothing installed), the event files for watching a run in TensorBoard. tensorboardX writes them
without TensorFlow (flax/clu's writers need it); its writer thread keeps disk I/O off the step.

Each line is `{"step": int, "time": unix seconds, <name>: float | null, ...}`; a non-finite value
(a NaN loss the step's guard skipped) is written as null so the file stays strict JSON, and is left
out of TensorBoard, whose plots it would break.

After a crash the trainer resumes from its last checkpoint, so steps after it are logged twice.
`resume_step` removes them from both outputs: lines with a later step are dropped from the JSON
file, and TensorBoard is told to purge its events past that step.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from tensorboardX import SummaryWriter


class MetricsWriter:
    """Appends metrics for logged steps; does nothing except on the main process."""

    def __init__(self, workdir: str | os.PathLike, is_main_process: bool = True,
                 resume_step: int | None = None):
        self.enabled = is_main_process
        self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            self._drop_lines_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = SummaryWriter(
            os.path.join(os.fspath(workdir), "tb"), flush_secs=30,
            purge_step=None if resume_step is None else resume_step + 1)

    def _drop_lines_after(self, step: int) -> None:
        """Rewrites metrics.jsonl without records past `step` (atomically, via a temporary file)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        """Logs `values` (floats, NumPy or JAX scalars) for `step`; the JSON line is flushed now."""
        if not self.enabled:
            return
        floats = {name: float(v) for name, v in values.items()}
        record = {"step": int(step), "time": time.time()}
        record.update({k: v if math.isfinite(v) else None for k, v in floats.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, v in floats.items():
            if math.isfinite(v):
                self._tb.add_scalar(name, v, global_step=int(step), walltime=record["time"])

    def close(self) -> None:
        """Flushes and closes both outputs; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
