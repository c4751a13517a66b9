"""Smoke tests of the training throughput and breakdown benchmarks and the GPU suite that runs them.

The suite's --smoke mode runs benchmarks.train_throughput and benchmarks.train_breakdown on one
tiny case (32 px, batch 2, 2 timed steps) on the CPU: one subprocess, shared by the tests below,
checks the script, the printed Markdown tables and the JSON. The numbers are checked against their stated definitions
(samples/s = 2 x batch / median step time, MFU against 790 TFLOP/s, ...) and against independent
counts of the model (parameters from an abstract model, FLOPs from engine.flops).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, STEPS, RESOLUTION = 2, 2, 32  # what gpu_suite.sh --smoke runs


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def _throughput(*flags: str, tmp: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "benchmarks.train_throughput", "--faces=8", f"--dir={tmp}", *flags])


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """(stdout, output folder) of one `gpu_suite.sh --smoke` run; no wheels are installed."""
    out = tmp_path_factory.mktemp("suite")
    env = dict(os.environ, PYTHON=sys.executable, WHEELS=str(out / "no_wheels"))
    proc = _run(["bash", "benchmarks/gpu_suite.sh", "--smoke", str(out)], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, out


@pytest.fixture(scope="module")
def result(suite):
    _, out = suite
    report = json.loads((out / "train_throughput.json").read_text())
    assert len(report["results"]) == 1
    return report, report["results"][0]


def test_suite_writes_table_json_and_environment(suite):
    stdout, out = suite
    assert "python 3." in (out / "env.txt").read_text()
    table = (out / "train_throughput.md").read_text().splitlines()
    assert table == [line for line in stdout.splitlines() if line in table]  # tee'd as printed
    header = next(i for i, line in enumerate(table) if line.startswith("| archi |"))
    assert _cells(table[header])[:5] == ["archi", "res", "batch", "dtype", "GFLOP/step"]
    assert {"e2e samples/s", "model samples/s", "e2e MFU", "e2e/model", "data/step"} <= set(_cells(table[header]))
    rows = table[header + 2:]
    assert len(rows) == 1 and _cells(rows[0])[:4] == ["tiny", str(RESOLUTION), str(BATCH), "float32"]
    assert "Traceback" not in (out / "train_throughput.log").read_text()


def test_table_row_shows_the_json_numbers(suite, result):
    _, out = suite
    _, r = result
    table = (out / "train_throughput.md").read_text().splitlines()
    row = dict(zip(_cells(table[-3]), _cells(table[-1])))
    assert float(row["e2e ms"]) == pytest.approx(r["end_to_end"]["step_ms"], abs=0.051)
    assert float(row["model samples/s"]) == pytest.approx(r["model_only"]["samples_per_s"], abs=0.051)
    assert float(row["GFLOP/step"]) == pytest.approx(r["flops_per_step"] / 1e9, abs=0.051)
    assert float(row["data/step"].rstrip("x")) == pytest.approx(r["data_over_step"], abs=0.051)


def test_numbers_follow_their_definitions(result):
    report, r = result
    assert report["machine"]["platform"] == "cpu" and report["steps"] == STEPS
    assert set(report["definitions"]) >= {"samples_per_s", "step_ms", "mfu", "e2e_over_model", "data_over_step"}
    for mode in ("end_to_end", "model_only"):
        t = r[mode]
        assert len(t["step_ms_all"]) == STEPS
        assert t["step_ms"] == pytest.approx(float(np.median(t["step_ms_all"])), rel=1e-12)
        assert 0 < t["step_ms"] < 60_000
        step_s = t["step_ms"] / 1e3
        assert t["samples_per_s"] == pytest.approx(2 * BATCH / step_s, rel=1e-12)
        assert t["tflops_per_s"] == pytest.approx(r["flops_per_step"] / step_s / 1e12, rel=1e-12)
        assert t["mfu"] == pytest.approx(t["tflops_per_s"] / 790, rel=1e-12)
    assert r["e2e_over_model"] == pytest.approx(r["model_only"]["step_ms"] / r["end_to_end"]["step_ms"], rel=1e-12)
    assert r["data_batches_per_s"] > 0
    assert r["data_over_step"] == pytest.approx(r["data_batches_per_s"] * r["end_to_end"]["step_ms"] / 1e3,
                                                rel=1e-12)
    # src + dst, each 10·DSSIM + 10·MSE + 10·mask MSE of values in [0, 1]: at most 60.
    assert math.isfinite(r["loss"]) and 0 < r["loss"] < 60
    assert r["data_mode"] == "resident" and r["dtype"] == "float32"  # the trainer's CPU rule


def test_model_counts_match_the_network(result):
    """Parameters and FLOPs are those of the tiny liae-ud network at the case's size."""
    from flax import nnx

    from configs.saehd import get_config
    from engine.flops import step_flops
    from engine.models import SAEHD, param_counts

    _, r = result
    cfg = get_config("tiny")
    cfg.model.resolution = RESOLUTION
    assert r["archi"] == "liae-ud" and r["dims"] == {"ae_dims": 32, "e_dims": 16, "d_dims": 16, "d_mask_dims": 8}
    model = nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0)))
    assert r["params"] == param_counts(model)["total"] > 0
    assert r["flops_per_step"] == step_flops(cfg.model, BATCH)["train_step"]
    # The stated rule, from the per-component counts of one face: 3 x the forward of the two trained
    # reconstructions (LIAE: encoder and inter_AB on src and dst, inter_B on dst, the decoder twice);
    # without style losses the step does not decode the swap.
    per_sample = step_flops(cfg.model, 1)["per_sample"]
    trained = BATCH * (2 * per_sample["encoder"] + 2 * per_sample["inter_AB"] + per_sample["inter_B"]
                       + 2 * per_sample["decoder"])
    assert r["flops_per_step"] == 3 * trained


def test_breakdown_reports_each_part_and_its_share_of_the_full_step(suite):
    """benchmarks.train_breakdown: medians of the timed rounds per part, share = part / full step,
    rest = full step - augment - losses - model, and a Markdown table that prints the JSON numbers."""
    stdout, out = suite
    report = json.loads((out / "train_breakdown.json").read_text())
    assert report["machine"]["platform"] == "cpu" and report["steps"] == STEPS
    (r,) = report["results"]
    assert (r["config"], r["resolution"], r["batch"], r["dtype"]) == ("tiny", RESOLUTION, BATCH, "float32")
    ms = r["ms"]
    parts = ("data", "augment", "losses", "model", "full step")
    for name in parts:
        assert len(r["ms_all"][name]) == STEPS
        assert ms[name] == pytest.approx(float(np.median(r["ms_all"][name])), rel=1e-12)
        assert 0 < ms[name] < 60_000
    assert ms["rest"] == pytest.approx(ms["full step"] - ms["augment"] - ms["losses"] - ms["model"], abs=1e-9)
    assert set(r["share"]) == set(ms)
    for name, value in ms.items():
        assert r["share"][name] == pytest.approx(value / ms["full step"], rel=1e-12)
    table = (out / "train_breakdown.md").read_text().splitlines()
    assert set(table) <= set(stdout.splitlines())  # tee'd as printed
    rows = {cells[0]: cells[1:] for cells in map(_cells, table) if cells[0] in ms}
    assert list(rows) == [*parts, "rest"]
    for name, (ms_cell, share_cell) in rows.items():
        assert float(ms_cell) == pytest.approx(ms[name], abs=0.0051)
        assert float(share_cell.rstrip("%")) == pytest.approx(100 * r["share"][name], abs=0.51)
    assert "Traceback" not in (out / "train_breakdown.log").read_text()


def test_failed_case_is_reported_and_the_run_goes_on(tmp_path):
    proc = _throughput("--cases=liae-ud:48:2,tiny:40:2", "--steps=1", "--warmup=0",
                       f"--output={tmp_path / 'r.json'}", tmp=str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'r.json'}: 2 of 2 case(s) failed"
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["config"], r["resolution"]) for r in results] == [("liae-ud", 48), ("tiny", 40)]
    assert all("multiple of 32" in r["error"] for r in results)
    assert sum("| error: UserError" in line for line in proc.stdout.splitlines()) == 2


def test_bad_flags_and_budget(tmp_path):
    proc = _throughput("--cases=liae-ud:128", tmp=str(tmp_path / "a"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: --cases: 'liae-ud:128' is not ARCHI:RESOLUTION:BATCH"
    proc = _throughput("--cases=tiny:32:2,tiny-df:32:2", "--budget_s=1e-9", f"--output={tmp_path / 'r.json'}",
                       tmp=str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 case(s): tiny:32:2, tiny-df:32:2" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["results"] == []
