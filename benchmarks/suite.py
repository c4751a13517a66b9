"""Every benchmark program in one run, sized by --size, collected into one JSON and one Markdown file.

  python -m benchmarks.suite --size=ci|cpu|gpu --output=DIR [--only=train_throughput,merge_throughput]
      [--jobs=N] [--torch_python=/tmp/torch311/bin/python]

Each program (extract_throughput, faceset_read, data_throughput, train_throughput, merge_throughput,
xseg_throughput, compare_torch; scaling and memory_savers at the cpu and gpu sizes only) runs as its own subprocess, because their absl flags overlap (two
of them define --steps differently) and each must start JAX afresh; for the same reason the suite
parses its own flags with argparse, so importing it registers no absl flags. The flags per size:
* ci: tiny networks, a few faces, one or two steps: checks that every program runs and reports
  (about a minute on 2 cores); its figures are measurements, but of toy sizes;
* cpu: the development-machine sizes recorded in RESULTS.md (res 64, batches 2-4);
* gpu: the sizes of the GPU tables (res 128/256, batches 16-64), headline cases first.
--jobs runs that many programs at once (default: 2 for ci, where speed matters more than
isolation, else 1: concurrent programs slow each other down); the JSON records it.

Outputs in DIR, rewritten after every table row a program prints (so a run cut short keeps each
measured case): suite.json, suite.md, and per program NAME.out (its stdout), NAME.log (stderr)
and NAME.json when the program writes one (--output). suite.json holds per program: the command,
status (pending, running, ok, failed, timeout), return code, seconds, the tables it printed
parsed into rows of {column: value} (numbers as numbers), its other output lines ("notes"), and
its own JSON. compare_torch needs torch (see its docstring); without it the suite records
"torch absent: ..." in its notes and goes on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple, Sequence

from preprocessing.errors import UserError, cli_main


class Program(NamedTuple):
    """A benchmark module, how its table is printed, and its flags and time limit per size."""
    name: str  # benchmarks.<name>
    table: str  # "markdown" (| a | b |) or "aligned" (right-aligned columns under a header line)
    writes_json: bool  # takes --output=FILE
    flags: dict[str, list[str]]
    timeout_s: dict[str, float]


_TINY_TRAIN = ["--cases=tiny:32:2", "--steps=2", "--warmup=1", "--faces=16"]
# In priority order for --size=gpu (and longest first, which balances --jobs=2 for ci).
PROGRAMS = (
    Program("train_throughput", "markdown", True, {
        "ci": _TINY_TRAIN,
        "cpu": ["--archis=liae-ud,df-ud", "--resolutions=64", "--batches=2,4", "--steps=10", "--faces=64"],
        "gpu": ["--cases=liae-ud:128:32,df-ud:128:32,liae-ud:256:16,df-ud:256:16,liae:128:32",
                "--steps=20", "--warmup=3", "--faces=512", "--budget_s=240"],
    }, {"ci": 120, "cpu": 1200, "gpu": 420}),
    Program("compare_torch", "markdown", True, {
        "ci": _TINY_TRAIN + ["--torch_modes=eager"],
        "cpu": ["--cases=liae-ud:64:2,liae-ud:64:4", "--steps=6", "--warmup=2", "--faces=64",
                "--torch_modes=eager,eager-bf16,compile"],
        "gpu": ["--cases=liae-ud:128:32,df-ud:128:32,liae:128:32", "--steps=20", "--warmup=3", "--faces=512",
                "--torch_modes=eager-bf16,compile-bf16,eager,compile"],
    }, {"ci": 120, "cpu": 3600, "gpu": 900}),
    Program("merge_throughput", "markdown", False, {
        "ci": ["--sizes=176x144", "--modes=overlay", "--frames=2", "--resolution=32", "--batch_size=2"],
        "cpu": ["--frames=8"],
        "gpu": ["--sizes=1920x1080,1280x720", "--frames=32"],
    }, {"ci": 120, "cpu": 1200, "gpu": 600}),
    Program("xseg_throughput", "markdown", False, {
        "ci": ["--presets=tiny", "--steps=2", "--apply_batch=4"],
        "cpu": ["--presets=tiny", "--steps=10"],
        "gpu": ["--presets=tiny,full", "--steps=20"],
    }, {"ci": 120, "cpu": 900, "gpu": 600}),
    Program("extract_throughput", "markdown", False, {
        "ci": ["--frames_1080p=1", "--size=64"],
        "cpu": ["--frames_1080p=30"],
        "gpu": ["--frames_1080p=120"],
    }, {"ci": 120, "cpu": 900, "gpu": 600}),
    Program("data_throughput", "aligned", False, {
        "ci": ["--faces=16", "--sizes=64", "--batches=4", "--modes=resident,streamed", "--seconds=0.2",
               "--resolution=64"],
        "cpu": ["--faces=256", "--sizes=128", "--batches=4,8", "--seconds=1", "--resolution=64"],
        "gpu": ["--faces=2048"],
    }, {"ci": 120, "cpu": 900, "gpu": 600}),
    Program("faceset_read", "aligned", False, {
        "ci": ["--faces=16", "--sizes=64", "--codecs=raw", "--batch=8", "--seconds=0.2"],
        "cpu": ["--faces=512", "--sizes=128", "--seconds=1"],
        "gpu": ["--faces=2048"],
    }, {"ci": 120, "cpu": 900, "gpu": 600}),
    # No ci size: its PREDICTED table holds model figures, and ci prints measurements only.
    Program("scaling", "markdown", True, {
        "cpu": ["--devices=4", "--model=tiny:32", "--device_counts=1,2,4", "--per_device_batch=2", "--steps=5",
                "--warmup=2", "--faces=64"],
        "gpu": ["--model=liae:128", "--per_device_batch=32", "--steps=10", "--warmup=3", "--faces=512"],
    }, {"cpu": 1200, "gpu": 420}),
    # No ci size: each of its ~8 variants compiles a training step (about 6 minutes on 2 cores).
    Program("memory_savers", "markdown", True, {
        "cpu": ["--cases=tiny:32:8", "--steps=5", "--warmup=1", "--faces=64"],
        "gpu": ["--cases=liae-ud:128:16", "--sections=remat,offload,gan,fsdp,allreduce", "--steps=10",
                "--faces=256", "--budget_s=400"],
    }, {"cpu": 1500, "gpu": 600}),
)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def cell_value(text: str) -> Any:
    """'12' -> 12, '1.5' -> 1.5, anything else (e.g. '86%', 'tiny') stays a string."""
    text = text.strip()
    if not _NUMBER.match(text):
        return text
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)


def unique(columns: Sequence[str]) -> list[str]:
    """Repeated column names get " (2)", " (3)", ... so that rows can be dicts (faceset_read repeats MB/s)."""
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if seen[c] == 1 else f"{c} ({seen[c]})")
    return out


def parse_markdown(lines: Sequence[str]) -> tuple[list[dict], list[str]]:
    """Markdown tables (a header row followed by |---|) as {columns, rows}; other lines as notes."""
    tables: list[dict] = []
    notes: list[str] = []
    for i, line in enumerate(lines):
        text = line.strip()
        if not text.startswith("|"):
            if text:
                notes.append(text)
            continue
        cells = [c.strip() for c in text.strip("|").split("|")]
        if _SEPARATOR.match(text):
            continue
        if i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1].strip()):
            tables.append({"columns": unique(cells), "rows": []})
        elif tables:
            columns = tables[-1]["columns"]
            tables[-1]["rows"].append({c: cell_value(v) for c, v in zip(columns, cells + [""] * len(columns))})
        else:
            notes.append(text)
    return tables, notes


def parse_aligned(lines: Sequence[str]) -> tuple[list[dict], list[str]]:
    """Right-aligned tables: rows start with a number; column names are the header line cut at the
    ends of the first row's values (header and values share their widths)."""
    tables: list[dict] = []
    notes: list[str] = []
    for i, line in enumerate(lines):
        tokens = line.split()
        is_row = bool(tokens) and bool(_NUMBER.match(tokens[0])) and i > 0
        if is_row and (not tables or len(tokens) != len(tables[-1]["columns"])):
            ends = [m.end() for m in re.finditer(r"\S+", line)]
            header = lines[i - 1]
            if notes and notes[-1] == header.strip():
                notes.pop()
            starts = [0] + ends[:-1]
            tables.append({"columns": unique([header[a:b].strip() for a, b in zip(starts, ends)]), "rows": []})
        if is_row:
            tables[-1]["rows"].append(dict(zip(tables[-1]["columns"], map(cell_value, tokens))))
        elif line.strip():
            notes.append(line.strip())
    return tables, notes


class Suite:
    """The report being built; each program's thread updates it and rewrites the files."""

    def __init__(self, out_dir: str, size: str, programs: Sequence[Program], jobs: int, torch_python: str | None):
        self.out_dir, self.size, self.lock = out_dir, size, threading.Lock()
        self.report: dict[str, Any] = {
            "size": size, "jobs": jobs, "started": _now(), "finished": None, "seconds": None,
            "machine": {"node": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "programs": [{"name": p.name, "status": "pending", "command": command(p, size, out_dir, torch_python)}
                         for p in programs]}
        self.started = time.perf_counter()

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.report["programs"] if e["name"] == name)

    def update(self, name: str, **fields: Any) -> None:
        with self.lock:
            self.entry(name).update(fields)
            self.write()

    def finish(self) -> None:
        with self.lock:
            self.report.update(finished=_now(), seconds=time.perf_counter() - self.started)
            self.write()

    def write(self) -> None:
        """Atomic rewrites of suite.json and suite.md (call with the lock held)."""
        for name, text in (("suite.json", json.dumps(self.report, indent=1)), ("suite.md", markdown(self.report))):
            path = os.path.join(self.out_dir, name)
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command(program: Program, size: str, out_dir: str, torch_python: str | None) -> list[str]:
    cmd = [sys.executable, "-m", f"benchmarks.{program.name}", *program.flags[size]]
    if program.writes_json:
        cmd.append(f"--output={os.path.join(out_dir, program.name + '.json')}")
    if program.name == "compare_torch" and torch_python:
        cmd.append(f"--torch_python={torch_python}")
    return cmd


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    out = [f"# Benchmark suite, size {report['size']}", "",
           f"{report['started']}, {m['node']} ({m['platform']}, {m['cpus']} CPUs, Python {m['python']}), "
           f"{report['jobs']} program(s) at a time" + (f", {report['seconds']:.0f} s" if report["seconds"] else "")]
    for e in report["programs"]:
        seconds = f", {e['seconds']:.1f} s" if e.get("seconds") is not None else ""
        out += ["", f"## {e['name']} ({e['status']}{seconds})", "", "`" + " ".join(e["command"][1:]) + "`", ""]
        out += [f"    {note}" for note in e.get("notes", [])]
        for table in e.get("tables", []):
            out += ["", "| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
            out += ["| " + " | ".join(str(row.get(c, "")) for c in table["columns"]) + " |" for row in table["rows"]]
    return "\n".join(out) + "\n"


def run_program(suite: Suite, program: Program) -> None:
    """Runs one program, re-parsing its stdout after every line so each table row is saved at once."""
    name, size = program.name, suite.size
    entry = suite.entry(name)
    parse = parse_markdown if program.table == "markdown" else parse_aligned
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start, lines = time.perf_counter(), []
    suite.update(name, status="running")
    with open(os.path.join(suite.out_dir, name + ".log"), "w") as log, \
            open(os.path.join(suite.out_dir, name + ".out"), "w") as out, \
            subprocess.Popen(entry["command"], stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                             start_new_session=True) as proc:
        timed_out = threading.Event()

        def stop() -> None:  # the program's whole process group: torch workers, ffmpeg
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(program.timeout_s[size], stop)
        timer.start()
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                lines.append(line.rstrip("\n"))
                tables, notes = parse(lines)
                suite.update(name, tables=tables, notes=notes, seconds=time.perf_counter() - start)
            proc.wait()
        finally:
            timer.cancel()
    status = "timeout" if timed_out.is_set() else ("ok" if proc.returncode == 0 else "failed")
    fields: dict[str, Any] = {"status": status, "returncode": proc.returncode,
                              "seconds": time.perf_counter() - start}
    json_path = os.path.join(suite.out_dir, name + ".json")
    if program.writes_json and os.path.exists(json_path):
        with open(json_path) as f:
            fields["json"] = json.load(f)
    if status != "ok":
        with open(os.path.join(suite.out_dir, name + ".log")) as f:
            fields["error_tail"] = f.read().strip().splitlines()[-5:]
    suite.update(name, **fields)
    print(f"{name}: {status} in {fields['seconds']:.1f} s, "
          f"{sum(len(t['rows']) for t in suite.entry(name).get('tables', []))} table row(s)", flush=True)


def run_suite(out_dir: str, size: str, names: Sequence[str] | None, jobs: int,
              torch_python: str | None = None) -> dict[str, Any]:
    """Runs the chosen programs, `jobs` at a time in PROGRAMS order; returns the final report."""
    known = [p.name for p in PROGRAMS]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise UserError(f"--only: unknown program(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    sizeless = [p.name for p in PROGRAMS if names and p.name in names and size not in p.flags]
    if sizeless:
        raise UserError(f"--only: {', '.join(sizeless)} has no --size={size}")
    programs = [p for p in PROGRAMS if size in p.flags and (not names or p.name in names)]
    os.makedirs(out_dir, exist_ok=True)
    suite = Suite(out_dir, size, programs, jobs, torch_python)
    with suite.lock:
        suite.write()
    queue = list(programs)
    queue_lock = threading.Lock()

    def worker() -> None:
        while True:
            with queue_lock:
                if not queue:
                    return
                program = queue.pop(0)
            run_program(suite, program)

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    suite.finish()
    return suite.report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("ci", "cpu", "gpu"), default="ci", help="benchmark sizes (see the docstring)")
    p.add_argument("--output", required=True, help="folder for suite.json, suite.md and each program's files")
    p.add_argument("--only", type=lambda v: v.split(","), help="comma-separated programs (default: all)")
    p.add_argument("--jobs", type=int, default=0, help="programs run at once (0: 2 for --size=ci, else 1)")
    p.add_argument("--torch_python", help="passed to compare_torch: an interpreter that has torch")
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    jobs = args.jobs or (2 if args.size == "ci" else 1)
    report = run_suite(args.output, args.size, args.only, jobs, args.torch_python)
    print(markdown(report), flush=True)
    failed = [e["name"] for e in report["programs"] if e["status"] != "ok"]
    if failed:
        raise UserError(f"{len(failed)} program(s) did not finish: {', '.join(failed)} "
                        f"(see their .log files in {args.output})")


if __name__ == "__main__":
    cli_main(main)(sys.argv[1:])
