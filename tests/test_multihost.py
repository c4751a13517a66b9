"""Multi-process training on one machine: 2 local CPU processes (gloo collectives) stand in for 2
hosts. `python -m engine.train` started twice with --coordinator_address/--num_processes/
--process_id must train exactly like one process with the same global batch; the cross-process
decisions (engine.distributed.agree / any_process) and each process's batch rows are checked in a
small 2-process script. References: the 1-process run's metrics, and the values each process fed in.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from preprocessing import samples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
# Losses of 2 processes (1 CPU device each) vs 1 process (1 device), same global batch 4: float32
# reductions in another order (the gradient all-reduce). Measured <= 1.2e-5 relative over 6 steps on
# a 2-core x86 CPU; a process training on the other's rows or on the whole batch moves them ~1e-2.
MULTIHOST_RTOL = 2e-4
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int, out_dir: str) -> list[subprocess.CompletedProcess]:
    """`args` run as `processes` cooperating JAX processes (one CPU device each); waits for all."""
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    procs = []
    for pid in range(processes):
        out = open(os.path.join(out_dir, f"p{pid}.out"), "w+")
        err = open(os.path.join(out_dir, f"p{pid}.err"), "w+")
        flags = [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}", f"--process_id={pid}"]
        procs.append((subprocess.Popen([*args, *flags], cwd=REPO, env=env, stdout=out, stderr=err), out, err))
    results = []
    try:
        for proc, out, err in procs:
            rc = proc.wait(timeout=TIMEOUT)
            out.seek(0)
            err.seek(0)
            results.append(subprocess.CompletedProcess(proc.args, rc, out.read(), err.read()))
    finally:
        for proc, out, err in procs:
            if proc.poll() is None:
                proc.kill()
            out.close()
            err.close()
    return results


@pytest.fixture(scope="module")
def faceset(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("faceset") / "carphone64")
    proc = subprocess.run([sys.executable, "-m", "preprocessing.extract", f"--input={samples.carphone_path()}",
                           f"--output={out}", "--size=64", "--face_type=whole_face"],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return out


def train_args(faceset: str, workdir: str, max_steps: int = STEPS) -> list[str]:
    # every_minutes > 0 puts the broadcast time-based checkpoint decision on every step's path.
    return [sys.executable, "-m", "engine.train", "--config=configs/saehd.py:tiny", "--config.log.every_steps=1",
            "--config.checkpoint.every_minutes=60", "--noprogress", f"--src={faceset}", f"--dst={faceset}",
            f"--workdir={workdir}", f"--max_steps={max_steps}"]


def losses(workdir: str) -> dict[str, list[float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return {key: [r[key] for r in records] for key in ("loss", "src_loss", "dst_loss", "val_loss")}


def test_two_processes_train_and_resume_like_one(faceset, tmp_path):
    """1 process trains STEPS steps; 2 processes train half of them, stop (both save their shards
    of the checkpoint), and resume to STEPS: the same losses at every step."""
    one = str(tmp_path / "one")
    proc = subprocess.run(train_args(faceset, one), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    two = str(tmp_path / "two")
    logs = tmp_path / "logs"
    logs.mkdir()
    for max_steps in (STEPS // 2, STEPS):
        results = launch(train_args(faceset, two, max_steps), 2, str(logs))
        for r in results:
            assert r.returncode == 0, r.stderr[-3000:]
    assert all(f"resumed from step {STEPS // 2}" in r.stdout for r in results)
    reference, got = losses(one), losses(two)
    for key in reference:
        np.testing.assert_allclose(got[key], reference[key], rtol=MULTIHOST_RTOL, err_msg=key)
    # One process reports and writes the single-copy outputs; both took part in the checkpoint.
    assert f"trained to step {STEPS}" in results[0].stdout and "trained to step" not in results[1].stdout
    assert os.path.exists(os.path.join(two, "preview.png")) and os.path.exists(os.path.join(two, "config.json"))
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == [str(STEPS // 2), str(STEPS)]
    assert os.path.exists(os.path.join(two, "checkpoints", str(STEPS), "meta"))


AGREE = textwrap.dedent("""
    import json, sys
    from absl import flags
    from engine import distributed
    flags.FLAGS(sys.argv)
    assert distributed.initialize_from_flags()
    import jax, ml_collections, numpy as np
    from engine import parallel
    pid = jax.process_index()
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    rows = parallel.local_batch_slice(parallel.batch_sharding(mesh), 8)
    local = np.arange(8, dtype=np.float32)[rows] ** 2
    total = jax.jit(lambda x: x.sum(), out_shardings=parallel.replicated(mesh))(
        parallel.host_to_global(local, parallel.batch_sharding(mesh)))
    report = {"count": jax.process_count(), "devices": jax.device_count(), "rows": [rows.start, rows.stop],
              "agree_own_id_is_0": distributed.agree(pid == 0), "agree_own_id_is_1": distributed.agree(pid == 1),
              "any_own_id_is_1": distributed.any_process(pid == 1), "any_false": distributed.any_process(False),
              "main": distributed.is_main_process(), "sum": float(total)}
    json.dump(report, open(f"{sys.argv[1]}/report{pid}.json", "w"))
""")


def test_processes_agree_on_process_0s_decisions_and_read_their_own_rows(tmp_path):
    results = launch([sys.executable, "-c", AGREE, str(tmp_path)], 2, str(tmp_path))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report{pid}.json").read_text()) for pid in range(2)]
    for pid, report in enumerate(reports):
        assert report["count"] == 2 and report["devices"] == 2
        assert report["rows"] == [4 * pid, 4 * pid + 4]  # each process reads half the global batch
        assert report["agree_own_id_is_0"] is True  # process 0's True wins on both
        assert report["agree_own_id_is_1"] is False  # process 0's False wins on both
        assert report["any_own_id_is_1"] is True and report["any_false"] is False
        assert report["main"] is (pid == 0)
        assert report["sum"] == float(np.sum(np.arange(8, dtype=np.float64) ** 2))  # 140: exact in float32
