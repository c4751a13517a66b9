"""Every command's first checks (preprocessing.errors.check_command_line), run as a user would:
a stray positional argument or a missing required flag is one `error:` line on stderr and exit
status 2, before any work starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (module, flags that satisfy its required ones, the first required flag it names when none is given)
COMMANDS = [
    ("engine.train", ["--workdir=W"], "--workdir"),
    ("engine.xseg_train", ["--workdir=W"], "--workdir"),
    ("engine.xseg_apply", ["--faceset=F"], "--faceset"),
    ("engine.merge", ["--workdir=W", "--input=I", "--faceset=F", "--output=O"], "--workdir"),
    ("engine.import_dfl", ["--model_dir=M", "--name=N", "--workdir=W"], "--model_dir"),
    ("engine.export", ["--workdir=W", "--format=dfl", "--output=O"], "--workdir"),
    ("engine.dataset_export", ["--pairs=P", "--output=O"], "--pairs"),
    ("engine.evaluate", [], None),
    ("preprocessing.extract", [], None),
    ("benchmarks.train_throughput", [], None),
]


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("module,required,first", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_stray_argument_and_missing_flag_are_one_line_errors(module, required, first):
    proc = _run(module, [*required, "stray"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "error: unexpected arguments: stray"
    if first is not None:
        proc = _run(module, [])
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip() == f"error: {first} is required"
