"""Ours against a PyTorch SAEHD on the same shapes, in one invocation: samples/s and the ratios.

For each case (train_throughput's --cases / --archis --resolutions --batches) it
1. checks that benchmarks/baselines/torch_saehd.py builds the network with exactly the parameter
   counts of engine.models.saehd (per component and in total; a mismatch fails the case);
2. times ours with benchmarks.train_throughput.measure: the full step (Trainer.train_step fed by
   TrainData: augmentation on the device, DSSIM + MSE + mask losses, AdaBelief) and the model-only
   step (network + MSE + optimiser on random device inputs);
3. times the PyTorch baseline's full step (DataLoader workers augmenting with OpenCV on the CPU,
   the same losses, Adam) and model-only step in each --torch_modes (eager, eager-bf16 autocast,
   compile, compile-bf16), in a subprocess run by --torch_python, on the same 256 px faces
   (benchmarks.faceset_read.face_crops, the faces ours trains on).
samples/s = src + dst faces per second (2 x batch / median step time); "ours/this" = our samples/s
over the row's, for the full and the model-only step (> 1: ours is faster). Our dtype follows
--compute_dtype (auto: fp32 on CPU, bf16 on GPU).

torch is optional: without it (--torch_python cannot import torch, cv2 and numpy) the program
prints "torch absent: ..." and measures nothing. On the 2-core development machines torch exists
only for Python 3.11: `python3.11 -m venv /tmp/torch311 && /tmp/torch311/bin/pip install
torch==2.13.0 numpy opencv-python-headless`, then pass --torch_python=/tmp/torch311/bin/python.

Run: python -m benchmarks.compare_torch --cases=liae-ud:64:2,liae-ud:64:4 --steps=10
     --torch_python=/tmp/torch311/bin/python [--torch_modes=eager,eager-bf16,compile --output=cmp.json]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from importlib.util import find_spec
from typing import Any, Sequence

import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.data_throughput import build
from benchmarks.faceset_read import face_crops
from benchmarks.train_throughput import (FACESET_SIZE, Case, cases_from_flags, failed_case, machine, measure,
                                         run_in_workdir, write_json)
from configs.saehd import get_config
from engine.models.saehd import SAEHD, param_counts
from preprocessing.errors import UserError, check_command_line, cli_main

FLAGS = flags.FLAGS
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None,
                                    "interpreter that has torch (default: this one, if it has torch)")
_TORCH_MODES = flags.DEFINE_list("torch_modes", ["eager", "eager-bf16", "compile"],
                                 "torch modes: eager, eager-bf16, compile, compile-bf16")
_CHANNELS_LAST = flags.DEFINE_bool("channels_last", False, "torch model and inputs in channels_last")
_TORCH_WORKERS = flags.DEFINE_integer("torch_workers", None,
                                      "DataLoader workers per side (default: the baseline's, cores / 2)")
_TORCH_TIMEOUT = flags.DEFINE_float("torch_timeout_s", 3600.0, "limit per torch subprocess")

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baselines", "torch_saehd.py")
_DIMS = ("ae_dims", "e_dims", "d_dims", "d_mask_dims")
_COLUMNS = ("archi", "res", "batch", "implementation", "full ms", "full samples/s", "model-only ms",
            "model-only samples/s", "ours/this full", "ours/this model-only")


def torch_python() -> str | None:
    """--torch_python, else this interpreter when it can import torch, else None."""
    if _TORCH_PYTHON.value:
        return _TORCH_PYTHON.value
    return sys.executable if find_spec("torch") else None


def torch_version(python: str | None) -> tuple[str | None, str]:
    """(torch version, '') when `python` imports torch, cv2 and numpy; else (None, why not)."""
    if python is None:
        return None, f"{sys.executable} has no torch and no --torch_python was given"
    try:
        done = subprocess.run([python, "-c", "import cv2, numpy, torch; print(torch.__version__)"],
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{python}: {e}"
    if done.returncode:
        return None, f"{python} cannot import torch, cv2 and numpy: {done.stderr.strip().splitlines()[-1:]}"
    return done.stdout.strip(), ""


def model_dims(case: Case) -> dict[str, Any]:
    cfg = get_config(case.archi)
    cfg.model.resolution = case.resolution
    return {"archi": cfg.model.archi, "resolution": case.resolution, **{k: cfg.model[k] for k in _DIMS}}


def our_param_counts(case: Case) -> dict[str, int]:
    cfg = get_config(case.archi)
    cfg.model.resolution = case.resolution
    return param_counts(nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0))))


def baseline_command(python: str, case: Case, faces_npz: str, params_only: bool) -> list[str]:
    dims = model_dims(case)
    cmd = [python, BASELINE, f"--batch={case.batch}", f"--faces_npz={faces_npz}",
           f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}", f"--modes={','.join(_TORCH_MODES.value)}",
           *(f"--{k}={v}" for k, v in dims.items())]
    if _CHANNELS_LAST.value:
        cmd.append("--channels_last")
    if _TORCH_WORKERS.value is not None:
        cmd.append(f"--workers={_TORCH_WORKERS.value}")
    if params_only:
        cmd.append("--params_only")
    return cmd


def run_baseline(cmd: list[str], on_result) -> dict[str, int]:
    """Runs the baseline, calls on_result for each RESULT line as it comes; returns its PARAMS."""
    params: dict[str, int] = {}
    with tempfile.TemporaryFile("w+") as stderr, \
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True) as proc:
        timer = threading.Timer(_TORCH_TIMEOUT.value, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                tag, _, payload = line.partition(" ")
                if tag == "PARAMS":
                    params = json.loads(payload)
                elif tag == "RESULT":
                    on_result(json.loads(payload))
            proc.wait()
        finally:
            timer.cancel()
        if timer.finished.is_set() and proc.returncode:
            raise RuntimeError(f"the torch baseline ran past --torch_timeout_s={_TORCH_TIMEOUT.value:.0f}")
        if proc.returncode:
            stderr.seek(0)
            raise RuntimeError(f"torch baseline exited {proc.returncode}: {stderr.read().strip().splitlines()[-1:]}")
    return params


def ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    return ours["samples_per_s"] / theirs["samples_per_s"]


def table_header() -> str:
    return "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS)


def table_row(case: Case, name: str, full: dict | None, model: dict | None, ours: dict | None,
              error: str = "") -> str:
    cells = [case.archi, str(case.resolution), str(case.batch), name]
    if error:
        return "| " + " | ".join(cells + [f"error: {error}"] + [""] * (len(_COLUMNS) - 5)) + " |"
    for t in (full, model):
        cells += [f"{t['step_ms']:.1f}", f"{t['samples_per_s']:.2f}"]
    cells += [f"{ratio(ours['full'], full):.2f}", f"{ratio(ours['model_only'], model):.2f}"]
    return "| " + " | ".join(cells) + " |"


def compare(case: Case, python: str, root: str, faces_npz: str, faceset: str, index: int) -> dict[str, Any]:
    """One case: the parameter check, ours, then each torch mode; prints each row when measured."""
    result: dict[str, Any] = {"config": case.archi, "resolution": case.resolution, "batch": case.batch,
                              "dims": model_dims(case), "torch": []}
    ours_params = our_param_counts(case)
    torch_params = run_baseline(baseline_command(python, case, faces_npz, params_only=True), lambda r: None)
    result["params"] = ours_params
    if torch_params != ours_params:
        raise RuntimeError(f"parameter counts differ: ours {ours_params}, torch {torch_params}")
    measured = measure(case, faceset, os.path.join(root, f"run{index}"))
    ours = {"dtype": measured["dtype"], "full": measured["end_to_end"], "model_only": measured["model_only"]}
    result["ours"] = ours
    print(table_row(case, f"ours (JAX {ours['dtype']})", ours["full"], ours["model_only"], ours), flush=True)

    def on_result(r: dict[str, Any]) -> None:
        name = f"torch {r['mode']}" + (" channels_last" if _CHANNELS_LAST.value else "")
        if "error" in r:
            print(table_row(case, name, None, None, None, r["error"]), flush=True)
        else:
            r["ours_over_this"] = {"full": ratio(ours["full"], r["full"]),
                                   "model_only": ratio(ours["model_only"], r["model_only"])}
            print(table_row(case, name, r["full"], r["model_only"], ours), flush=True)
        result["torch"].append(r)

    run_baseline(baseline_command(python, case, faces_npz, params_only=False), on_result)
    return result


def run(root: str, python: str, version: str) -> list[dict[str, Any]]:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave device memory to torch too
    cases = cases_from_flags()
    faceset, faces_npz = os.path.join(root, "faceset"), os.path.join(root, "faces.npz")
    build(faceset, FLAGS.faces, FACESET_SIZE)
    faces, masks = face_crops(FLAGS.faces, FACESET_SIZE)  # the faces `build` wrote, for the torch side
    np.savez(faces_npz, faces=faces, masks=masks)
    info = machine()
    print(f"{info['devices']} x {info['device_kind']} ({info['platform']}), {info['cpus']} CPUs, jax "
          f"{info['jax']}, torch {version} ({python}); {FLAGS.steps} timed steps after {FLAGS.warmup}; "
          f"samples = src + dst faces; ours/this = our samples/s / the row's", flush=True)
    print(table_header(), flush=True)
    report = {"machine": info, "torch": version, "torch_python": python, "steps": FLAGS.steps,
              "warmup": FLAGS.warmup, "faces": FLAGS.faces, "channels_last": _CHANNELS_LAST.value,
              "results": []}
    for i, case in enumerate(cases):
        try:
            result = compare(case, python, root, faces_npz, faceset, i)
        except Exception as e:  # a case that fails must not cost the other cases
            result = failed_case(case, e)
            print(table_row(case, "-", None, None, None, result["error"]), flush=True)
        report["results"].append(result)
        if FLAGS.output:
            write_json(FLAGS.output, report)
    return report["results"]


def main(argv: Sequence[str]) -> None:
    check_command_line(argv)
    python = torch_python()
    version, why = torch_version(python)
    if version is None:
        print(f"torch absent: {why}; comparison skipped", flush=True)
        if FLAGS.output:
            write_json(FLAGS.output, {"torch": "absent", "reason": why, "results": []})
        return
    results = run_in_workdir(lambda root: run(root, python, version), "compare_torch_")
    failed = [r for r in results if "error" in r]
    if failed:
        raise UserError(f"compare_torch: {len(failed)} of {len(results)} case(s) failed")


if __name__ == "__main__":
    app.run(cli_main(main))
