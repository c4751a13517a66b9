"""benchmarks.scaling (HLO communication volume, the prediction model) and the profiler window.

The scaling program runs once, in a subprocess on 4 forced host devices, for the tiny preset on a
data mesh (4x1) and an fsdp mesh (1x4); its collective bytes are checked against the gradient
bytes counted independently from an abstract model (parameters x 4 B). The prediction model and
the HLO parser are checked against numbers worked out by hand. `engine.train --profile_steps=2:3`
traces a 3-step tiny run; the trace is read back independently (raw trace-event JSON).
"""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys

import pytest
from flax import nnx

from benchmarks.data_throughput import build
from benchmarks.hlo_collectives import collective_bytes, group_size, shape_bytes
from benchmarks.scaling_model import comm_s, predict
from configs.saehd import get_config
from engine.models import SAEHD
from engine.models.saehd import param_counts
from engine.profiling import parse_profile_steps, summarize_trace, trace_file
from preprocessing.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def faceset(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("scaling") / "faces")
    build(path, 16, 64)
    return path


@pytest.fixture(scope="module")
def scaling_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling_out")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--devices=4", "--device_counts=4", "--meshes=data,fsdp",
         "--scaling=weak", "--per_device_batch=2", "--steps=1", "--warmup=0", "--faces=16", "--hosts=2",
         f"--output={out / 'scaling.json'}", f"--dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((out / "scaling.json").read_text()), proc.stdout, (out / "scaling.md").read_text()


def test_data_mesh_all_reduces_the_gradient_once(scaling_report):
    report, stdout, md = scaling_report
    cfg = get_config("tiny")
    params = param_counts(nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0))))["total"]
    data = next(r for r in report["measured"] if r["mesh"] == [4, 1])
    assert data["params"] == params and data["gradient_bytes"] == 4 * params
    reduced = data["collective_operand_bytes"]["all-reduce"]
    # The gradient (4 B x params) plus a few scalars (losses, norms, the non-finite count): < 0.5%.
    assert 4 * params <= reduced <= 1.005 * 4 * params
    # Ring all-reduce over n = 4: each device sends 2(n-1)/n = 1.5 x the operand bytes.
    assert data["collective_wire_bytes_per_device"]["all-reduce"] == pytest.approx(1.5 * reduced, rel=1e-9)
    assert data["collective_operand_bytes"]["reduce-scatter"] == 0
    assert data["samples_per_s"] == pytest.approx(2 * 8 / (data["step_ms"] / 1e3), rel=1e-9)
    assert "MEASURED" in stdout and "PREDICTED" in stdout
    assert sum(line.startswith("|---") for line in md.splitlines()) == 2  # the two tables


def test_fsdp_mesh_gathers_instead_of_reducing_the_whole_gradient(scaling_report):
    report, _, _ = scaling_report
    fsdp = next(r for r in report["measured"] if r["mesh"] == [1, 4])
    ops, count = fsdp["collective_operand_bytes"], fsdp["collective_count"]
    assert count["all-gather"] > 0 and ops["all-gather"] > 0
    # Sharded parameters are not all-reduced whole: only the replicated small ones and partial sums are.
    assert ops["all-reduce"] < 0.5 * fsdp["gradient_bytes"]


def test_predicted_rows_follow_the_model(scaling_report):
    report, _, _ = scaling_report
    a = report["predicted_assumptions"]
    assert a["single_device_step_ms"] == 26.1 and a["gradient_bytes"] == 4 * a["params"]
    row = next(p for p in report["predicted"] if p["setting"] == "1 host NVLink" and p["mode"] == "weak")
    comm_ms = 2 * 7 / 8 * a["gradient_bytes"] / 360e9 * 1e3
    assert row["comm_ms"] == pytest.approx(comm_ms, rel=1e-9)
    assert row["efficiency"] == pytest.approx(26.1 / (26.1 + comm_ms), rel=1e-9)


def test_prediction_formula_by_hand():
    # 380 MB of fp32 gradients, 8 GPUs, 360 GB/s: 2 x 7/8 x 380e6 / 360e9 s = 1.847222 ms.
    weak = predict("nvlink", "weak", 26.1, 32, 380e6, 8, 1)
    assert weak.comm_ms == pytest.approx(1.8472222, rel=1e-6)
    assert weak.efficiency == pytest.approx(26.1 / 27.9472222, rel=1e-6)  # 0.93390
    assert weak.samples_per_s == pytest.approx(2 * 256 / 27.9472222e-3, rel=1e-6)
    strong = predict("nvlink", "strong", 26.1, 32, 380e6, 8, 1)
    assert strong.efficiency == pytest.approx(3.2625 / (3.2625 + 1.8472222), rel=1e-6)  # 0.63849
    # 2 hosts at 100 Gbit/s x 0.8 = 10 GB/s: + 2 x 1/2 x 380e6 / 10e9 s = 38 ms across the network.
    assert comm_s(380e6, 8, 2, 360.0, 100.0) == pytest.approx(1.8472222e-3 + 38e-3, rel=1e-6)
    half_hidden = predict("nvlink", "weak", 26.1, 32, 380e6, 8, 1, overlap=0.5)
    assert half_hidden.step_ms == pytest.approx(26.1 + 0.5 * 1.8472222, rel=1e-6)


def test_hlo_collective_parser_on_written_hlo():
    hlo = """
  %p.1 = f32[64,32]{1,0} parameter(0)
  %fusion.2 = bf16[3,3,8,16]{3,2,1,0} fusion(%p.1), kind=kLoop
  %all-reduce.3 = (f32[64,32]{1,0}, bf16[3,3,8,16]{3,2,1,0}) all-reduce(%p.1, %fusion.2), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %all-gather-start.4 = (f32[16,32]{1,0}, f32[64,32]{1,0}) all-gather-start(%slice.5), replica_groups=[1,4]<=[4], dimensions={0}
  %slice.5 = f32[16,32]{1,0} slice(%p.1), slice={[0:16], [0:32]}
  %all-gather-done.6 = f32[64,32]{1,0} all-gather-done(%all-gather-start.4)
  ROOT %collective-permute.7 = f32[64,32]{1,0} collective-permute(%p.1), source_target_pairs={{0,1}}
"""
    c = collective_bytes(hlo, 4)
    assert c.operand_bytes["all-reduce"] == 64 * 32 * 4 + 3 * 3 * 8 * 16 * 2  # 8192 + 2304
    assert c.wire_bytes["all-reduce"] == pytest.approx(1.5 * 10496)
    # The slice is defined after its use in this text: operands are looked up after the whole parse.
    assert c.count["all-gather"] == 1 and c.operand_bytes["all-gather"] == 16 * 32 * 4
    assert c.wire_bytes["all-gather"] == pytest.approx(3 * 2048)
    assert c.operand_bytes["collective-permute"] == 8192 and c.count["reduce-scatter"] == 0
    assert shape_bytes("(f32[2,3]{1,0}, /*index=1*/pred[5]{0}, token[])") == 29
    assert group_size("replica_groups=mesh['data'=2,'fsdp'=4] {'fsdp':(2)2}", 8) == 2
    assert group_size("replica_groups=mesh['data'=2,'fsdp'=4] {'data','fsdp'}", 8) == 8


@pytest.mark.parametrize("text,max_steps", [("3:2", 0), ("a:b", 0), ("5", 0), ("0:2", 0), ("2:9", 5), ("1:2:3", 0)])
def test_bad_profile_steps_are_refused(text, max_steps):
    with pytest.raises(UserError, match="--profile_steps"):
        parse_profile_steps(text, max_steps)


def _train(faceset: str, workdir: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.train", "--config=configs/saehd.py:tiny", f"--src={faceset}",
                           f"--dst={faceset}", f"--workdir={workdir}", "--noprogress", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_bad_profile_steps_fail_the_cli_before_training(faceset, tmp_path):
    proc = _train(faceset, str(tmp_path / "run"), "--max_steps=3", "--profile_steps=2:4")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --profile_steps=2:4")
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_profile_window_traces_steps_2_to_3(faceset, tmp_path):
    workdir = tmp_path / "run"
    proc = _train(faceset, str(workdir), "--max_steps=3", "--profile_steps=2:3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    wall_ms = float(re.search(r"profile of steps 2:3 \(([\d.]+) ms wall\)", proc.stdout).group(1))
    assert "| op | total ms |" in proc.stdout and "| kind | total ms |" in proc.stdout
    path = trace_file(str(workdir / "profile"))
    assert path.endswith("perfetto_trace.json.gz")
    with gzip.open(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    step_runs = {e["args"]["run_id"] for e in events
                 if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == "jit_step_fn"}
    assert len(step_runs) == 2  # steps 2 and 3: step 1 ran before the window
    summary = summarize_trace(str(workdir / "profile"))
    assert summary.scope == "host CPU" and summary.ops
    assert 0 < summary.op_total_us <= wall_ms * 1e3
    assert 0 < summary.busy_us["cpu:0"] <= summary.window_us <= wall_ms * 1e3
    cli = subprocess.run([sys.executable, "-m", "engine.profile_summary", str(workdir / "profile"), "--top=3"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and f"{len(summary.ops)} distinct XLA ops" in cli.stdout
    assert cli.stdout.count("\n| ") == 2 * (3 + 1)  # two tables: header + 3 rows each


def test_trace_summary_counts_gpu_ops_once(tmp_path):
    """A written GPU-style trace: the "XLA Ops" line counts, the kernels under it on the stream do not."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 7, "tid": 1, "name": "thread_name", "args": {"name": "XLA Ops"}},
            {"ph": "M", "pid": 7, "tid": 2, "name": "thread_name", "args": {"name": "Stream #13"}}]
    op = lambda tid, name, ts, dur: {"ph": "X", "pid": 7, "tid": tid, "ts": ts, "dur": dur, "name": name,  # noqa: E731
                                     "args": {"hlo_op": name, "hlo_module": "jit_step_fn"}}
    events = meta + [op(1, "fusion.1", 0, 30), op(1, "fusion.1", 50, 30), op(1, "all-reduce.2", 70, 40),
                     op(2, "fusion.1", 0, 29), {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 200, "name": "host"}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = summarize_trace(str(path))
    assert s.scope == "device" and s.window_us == 200
    assert [(o.name, o.total_us, o.count) for o in s.ops] == [("fusion.1", 60, 2), ("all-reduce.2", 40, 1)]
    assert [(k.name, k.total_us) for k in s.kinds] == [("fusion", 60), ("all-reduce", 40)]
    assert s.busy_us == {"/device:GPU:0": 30 + 60}  # [0, 30] and [50, 110]
