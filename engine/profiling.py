"""Profiler windows over training steps, and a per-op time summary read from the trace file.

`--profile_steps=A:B` (engine.train, benchmarks.train_throughput) traces steps A..B inclusive, in
the 1-based numbering of metrics.jsonl: step A is the one that takes the counter from A-1 to A. The
loop calls `StepProfiler.before_step` before it fetches a batch and `after_step` once the step is
dispatched; the window waits for the work queued before it (so earlier steps do not leak in) and
for its last step's outputs (JAX dispatches asynchronously: without the wait the trace would stop
before the device finished). A resumed run that starts inside the window traces the rest of it.

`jax.profiler.start_trace(dir, create_perfetto_trace=True)` writes, under
DIR/plugins/profile/<timestamp>/, HOST.xplane.pb (TensorBoard's profile plugin, xprof) and
perfetto_trace.json.gz / HOST.trace.json.gz (Chrome trace-event JSON: ui.perfetto.dev). The summary
reads the JSON: every complete event ("ph": "X") whose args name an `hlo_op` is one execution of a
compiled XLA op.
* GPU/TPU: these events sit in processes named "/device:...". Where a device has an "XLA Ops"
  thread (one event per HLO op, the kernels it launched are on the "Stream" threads below it)
  only that thread counts, so no op is counted twice.
* CPU: the ops run in the "/host:CPU" process on XLA's thread pool (threads tf_XLAEigen/...,
  tf_XLAPjRtCpuClient/...); the names are HLO instructions (conv_general_dilated.4, fusion.12,
  all-reduce.3, ...). The thunk executor may run independent ops of one program concurrently, and
  forced host devices run at once, so summed op time can exceed the wall time; "busy" is the union
  of the op intervals per device, at most the window.
The "kind" table groups ops by name without the ".N" suffix (all convolutions, all fusions, all
all-reduces), which is what one compares between runs.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import time
from typing import Any, Callable, Iterable

import jax

from preprocessing.errors import UserError


def parse_profile_steps(text: str, max_steps: int = 0) -> tuple[int, int]:
    """'A:B' -> (A, B) with 1 <= A <= B (<= max_steps when that is set); a UserError otherwise."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--profile_steps={text!r}: expected FIRST:LAST step numbers, e.g. 10:15")
    first, last = int(parts[0]), int(parts[1])
    if not 1 <= first <= last:
        raise UserError(f"--profile_steps={text}: need 1 <= FIRST <= LAST")
    if max_steps and last > max_steps:
        raise UserError(f"--profile_steps={text}: LAST is beyond the run's last step ({max_steps})")
    return first, last


@dataclasses.dataclass
class OpTime:
    name: str
    total_us: float
    count: int


@dataclasses.dataclass
class TraceSummary:
    """What the trace says: per-op and per-kind totals over the window, and device busy time."""
    path: str
    scope: str  # "device" (GPU/TPU ops) or "host CPU" (XLA:CPU ops)
    window_us: float  # first to last event of the trace
    ops: list[OpTime]  # by total time, largest first
    kinds: list[OpTime]
    busy_us: dict[str, float]  # per device: union of its op intervals

    @property
    def op_total_us(self) -> float:
        return sum(op.total_us for op in self.ops)


def trace_file(path: str) -> str:
    """The trace-event JSON under `path`: a file, a run folder, or a --profile_dir (newest run)."""
    if os.path.isfile(path):
        return path
    found = (glob.glob(os.path.join(path, "*.json.gz"))
             or glob.glob(os.path.join(path, "plugins", "profile", "*", "*.json.gz")))
    if not found:
        raise UserError(f"{path}: no trace (*.json.gz, or plugins/profile/*/*.json.gz) found")
    newest_run = max(os.path.dirname(f) for f in found)  # run folders are named by timestamp
    in_run = [f for f in found if os.path.dirname(f) == newest_run]
    perfetto = [f for f in in_run if os.path.basename(f) == "perfetto_trace.json.gz"]
    return (perfetto or sorted(in_run))[0]


def _load_events(path: str) -> list[dict[str, Any]]:
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            data = json.load(f)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable trace-event JSON file ({e})") from None
    return data["traceEvents"] if isinstance(data, dict) else data


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _totals(named: Iterable[tuple[str, float]]) -> list[OpTime]:
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for name, dur in named:
        total[name] += dur
        count[name] += 1
    return sorted((OpTime(n, total[n], count[n]) for n in total), key=lambda o: -o.total_us)


def summarize_trace(path: str) -> TraceSummary:
    """Reads a trace (see `trace_file` for `path`) into per-op totals (see the module docstring)."""
    path = trace_file(path)
    events = _load_events(path)
    process = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name"}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    ops = [e for e in complete if "hlo_op" in e.get("args", {})]
    device_pids = {pid for pid, name in process.items() if name.startswith("/device:")}
    on_device = [e for e in ops if e["pid"] in device_pids]
    if on_device:
        ops_threads = {key for key, name in thread.items() if key[0] in device_pids and name == "XLA Ops"}
        ops_pids = {pid for pid, _ in ops_threads}
        ops = [e for e in on_device if e["pid"] not in ops_pids or (e["pid"], e.get("tid")) in ops_threads]
        scope = "device"
    else:
        scope = "host CPU"
    if complete:
        window = max(e["ts"] + e["dur"] for e in complete) - min(e["ts"] for e in complete)
    else:
        window = 0.0
    by_device: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for e in ops:
        device = process.get(e["pid"], str(e["pid"])) if scope == "device" else \
            f"cpu:{e['args'].get('device_ordinal', '?')}"
        by_device[device].append((e["ts"], e["ts"] + e["dur"]))
    names = [(e["args"]["hlo_op"], float(e["dur"])) for e in ops]
    return TraceSummary(
        path=path, scope=scope, window_us=float(window), ops=_totals(names),
        kinds=_totals((re.sub(r"\.\d+$", "", name), dur) for name, dur in names),
        busy_us={d: _union_us(iv) for d, iv in sorted(by_device.items())})


def format_summary(summary: TraceSummary, top: int = 15) -> str:
    """Two Markdown tables (top ops, op kinds) and a header line with the window and busy times."""
    window = summary.window_us or 1.0
    busy = ", ".join(f"{d} {b / 1e3:.1f} ms ({100 * b / window:.0f}%)" for d, b in summary.busy_us.items())
    lines = [f"trace {summary.path}: {len(summary.ops)} distinct XLA ops ({summary.scope}) over a "
             f"{summary.window_us / 1e3:.1f} ms window; op time {summary.op_total_us / 1e3:.1f} ms; "
             f"busy {busy or 'none'}"]
    for title, rows in (("op", summary.ops), ("kind", summary.kinds)):
        lines += ["", f"| {title} | total ms | count | mean us | share of window |", "|---|---|---|---|---|"]
        lines += [f"| {o.name} | {o.total_us / 1e3:.3f} | {o.count} | {o.total_us / o.count:.1f} | "
                  f"{100 * o.total_us / window:.1f}% |" for o in rows[:top]]
    return "\n".join(lines)


class StepProfiler:
    """Starts a jax.profiler trace before step FIRST and stops it after step LAST (see the docstring)."""

    def __init__(self, steps: tuple[int, int], logdir: str, top: int = 15,
                 report: Callable[[str], None] = print):
        self.first, self.last = steps
        self.logdir, self.top, self.report = logdir, top, report
        self.active = self.done = False
        self.wall_s = 0.0
        self.summary: TraceSummary | None = None
        self._start = 0.0

    def before_step(self, steps_done: int, pending: Any = None) -> None:
        """Call before fetching the batch of step steps_done + 1; `pending`: the work to wait for."""
        if self.active or self.done or not self.first <= steps_done + 1 <= self.last:
            return
        jax.block_until_ready(pending)
        if jax.process_count() > 1:  # processes sharing a workdir must not write the same trace file
            self.logdir = os.path.join(self.logdir, f"process{jax.process_index()}")
        os.makedirs(self.logdir, exist_ok=True)
        jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
        self.active, self._start = True, time.perf_counter()

    def after_step(self, steps_done: int, outputs: Any = None) -> None:
        """Call after dispatching step `steps_done`; stops and summarises after step LAST."""
        if self.active and steps_done >= self.last:
            jax.block_until_ready(outputs)
            self.stop()

    def trace(self, step: Callable[[], Any]) -> None:
        """Runs `step` (one training step, returning its outputs) LAST times, tracing FIRST..LAST:
        for benchmarks, which drive the step themselves."""
        outputs = None
        for done in range(self.last):
            self.before_step(done, outputs)
            outputs = step()
            self.after_step(done + 1, outputs)

    def stop(self) -> None:
        """Ends the window (also a run that stopped inside it) and prints the op summary."""
        if not self.active:
            return
        jax.profiler.stop_trace()
        self.wall_s = time.perf_counter() - self._start
        self.active, self.done = False, True
        self.summary = summarize_trace(self.logdir)
        self.report(f"profile of steps {self.first}:{self.last} ({self.wall_s * 1e3:.1f} ms wall) in "
                    f"{os.path.dirname(self.summary.path)}; open it in ui.perfetto.dev or TensorBoard "
                    f"(profile plugin)\n{format_summary(self.summary, self.top)}")
