"""The mesh and shardings: axis sizes and types, config errors, and where host data lands.

One device in this process; 4 forced CPU devices in one subprocess (XLA_FLAGS must be set before
jax is imported) shared by the tests that need them. References: NumPy slices of the host data
(exact) and float64 NumPy sums for a jitted data-parallel reduction.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from configs.saehd import get_config
from engine import parallel
from engine.trainer import Trainer
from preprocessing import samples
from preprocessing.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mesh_config(data: int, fsdp: int = 1) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp})


def test_one_device_mesh_and_shardings():
    mesh = parallel.make_mesh(mesh_config(-1))
    assert mesh.axis_names == ("data", "fsdp") and dict(mesh.shape) == {"data": 1, "fsdp": 1}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert parallel.replicated(mesh).spec == P()
    assert parallel.batch_shards(mesh) == 1
    host = {"x": np.arange(12, dtype=np.float32).reshape(4, 3), "ids": np.arange(4, dtype=np.int32)}
    placed = parallel.host_to_global(host, parallel.batch_sharding(mesh))
    for key, value in placed.items():
        assert isinstance(value, jax.Array) and value.dtype == host[key].dtype
        np.testing.assert_array_equal(np.asarray(value), host[key])
    assert parallel.local_batch_slice(parallel.batch_sharding(mesh), 4) == slice(0, 4)


@pytest.mark.parametrize("data, fsdp, message", [
    (2, 1, r"config mesh: data=2 x fsdp=1 = 2 devices, but 1 are present"),
    (0, 1, r"config mesh: data=0, fsdp=1; fsdp must be >= 1"),
    (-1, 0, r"fsdp must be >= 1"),
    (-1, 2, r"config mesh: fsdp=2 does not divide the 1 devices"),
])
def test_bad_mesh_configs_are_refused(data, fsdp, message):
    with pytest.raises(UserError, match=message):
        parallel.make_mesh(mesh_config(data, fsdp))


FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import ml_collections
    from engine import parallel
    from preprocessing.errors import UserError

    assert jax.device_count() == 4
    report = {"meshes": {}, "errors": {}}
    for data, fsdp in ((-1, 1), (2, 2), (-1, 2), (1, 4)):
        cfg = ml_collections.ConfigDict({"data": data, "fsdp": fsdp})
        mesh = parallel.make_mesh(cfg)
        host = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) ** 1.5
        batch = parallel.host_to_global(host, parallel.batch_sharding(mesh))
        whole = parallel.host_to_global(host, parallel.replicated(mesh))
        # A data-parallel reduction: per-row squared norms, mean over the sharded batch.
        mean = jax.jit(lambda x: (x ** 2).sum(axis=1).mean(),
                       out_shardings=parallel.replicated(mesh))(batch)
        report["meshes"][f"{data},{fsdp}"] = {
            "shape": dict(mesh.shape),
            "types": [t.name for t in mesh.axis_types],
            "shards": parallel.batch_shards(mesh),
            "batch": sorted([[int(s.index[0].start), int(s.index[0].stop)], np.asarray(s.data).tolist()]
                            for s in batch.addressable_shards),
            "batch_devices": len({s.device for s in batch.addressable_shards}),
            "replicated": [np.asarray(s.data).tolist() for s in whole.addressable_shards],
            "local_slice": [parallel.local_batch_slice(parallel.batch_sharding(mesh), 8).start,
                            parallel.local_batch_slice(parallel.batch_sharding(mesh), 8).stop],
            "mean": float(mean),
        }
    # Micro-batches cut from a data-sharded batch must stay on their devices (no gather).
    from engine.train_step import _split_micro
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    batch = parallel.host_to_global(np.arange(8 * 3, dtype=np.float32).reshape(8, 3) ** 1.5,
                                    parallel.batch_sharding(mesh))
    scan = lambda x: jax.lax.scan(lambda c, m: (c + (m ** 2).sum(axis=1).mean(), None), 0.0,
                                  _split_micro(x, 2))[0] / 2
    compiled = jax.jit(scan, out_shardings=parallel.replicated(mesh)).lower(batch).compile()
    hlo = compiled.as_text()
    report["micro"] = {"mean": float(compiled(batch)), "all_gather": hlo.count("all-gather("),
                       "all_reduce": hlo.count("all-reduce(")}
    for data, fsdp in ((3, 1), (-1, 3)):
        try:
            parallel.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp}))
        except UserError as e:
            report["errors"][f"{data},{fsdp}"] = str(e)
    json.dump(report, open(sys.argv[1], "w"))
""")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "report.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(out)], cwd=REPO, env=env, check=True,
                   timeout=300)
    return json.loads(out.read_text())


@pytest.mark.parametrize("config, shape", [
    ("-1,1", {"data": 4, "fsdp": 1}), ("2,2", {"data": 2, "fsdp": 2}),
    ("-1,2", {"data": 2, "fsdp": 2}), ("1,4", {"data": 1, "fsdp": 4}),
])
def test_four_device_meshes_split_the_batch_over_every_device(four_devices, config, shape):
    got = four_devices["meshes"][config]
    host = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) ** 1.5
    assert got["shape"] == shape and got["shards"] == 4
    assert got["types"] == ["Auto", "Auto"]
    assert got["batch_devices"] == 4
    for k, (rows, values) in enumerate(got["batch"]):
        assert rows == [2 * k, 2 * k + 2]
        np.testing.assert_array_equal(np.array(values, np.float32), host[2 * k:2 * k + 2])
    assert len(got["replicated"]) == 4
    for values in got["replicated"]:
        np.testing.assert_array_equal(np.array(values, np.float32), host)
    assert got["local_slice"] == [0, 8]  # one process holds the whole batch
    reference = (host.astype(np.float64) ** 2).sum(axis=1).mean()
    assert got["mean"] == pytest.approx(reference, rel=1e-6)


def test_micro_batches_of_a_sharded_batch_stay_on_their_devices(four_devices):
    """Gradient accumulation must not gather the batch: each device scans its own rows (the
    reduction then needs one all-reduce, and no all-gather), and the value is unchanged."""
    got = four_devices["micro"]
    host = np.arange(8 * 3, dtype=np.float64).reshape(8, 3) ** 1.5
    assert got["all_gather"] == 0 and got["all_reduce"] >= 1
    assert got["mean"] == pytest.approx((host ** 2).sum(axis=1).mean(), rel=1e-6)


def test_four_device_mesh_errors(four_devices):
    assert four_devices["errors"] == {
        "3,1": "config mesh: data=3 x fsdp=1 = 3 devices, but 4 are present; "
               "set --config.mesh.data=-1 to use them all",
        "-1,3": "config mesh: fsdp=3 does not divide the 4 devices; choose a divisor of 4",
    }


# ------------------------------------------------------------------------------------------ FSDP
FSDP_STEPS = 4
# Losses of the fsdp runs vs the replicated run on the same 4 devices (float32 reductions in
# another order): measured <= 6e-6 relative over 4 steps on a 2-core x86 CPU; a parameter or
# moment updated from the wrong shard moves them by far more than 1e-3.
FSDP_RTOL = 2e-4

FSDP_RUNS = textwrap.dedent("""
    import json, shutil, sys
    import jax, ml_collections, numpy as np
    from configs.saehd import get_config
    from engine import parallel
    from engine.trainer import Trainer

    faceset, workdir, out = sys.argv[1:]
    assert jax.device_count() == 4
    report = {"runs": {}, "rule": {}, "resumed": {}}
    def tiny(data, fsdp, steps):
        cfg = get_config("tiny")
        cfg.mesh.data, cfg.mesh.fsdp = data, fsdp
        cfg.train.max_steps = steps
        cfg.log.every_steps = 1
        cfg.checkpoint.every_minutes = 0
        return cfg

    for data, fsdp in ((-1, 1), (2, 2), (1, 4)):
        cfg = tiny(data, fsdp, %d)
        run = f"{workdir}/{data}_{fsdp}"
        trainer = Trainer(cfg, faceset, faceset, run, progress=False)
        try:
            trainer.run()
            state = trainer.state
            if (data, fsdp) == (2, 2):
                saved_params = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
            kernel = state["params"]["decoder"]["rgb"]["layers"][2]["conv"]["kernel"]  # 3x3x128x256
            leaves = jax.tree.leaves(state)
            per_device = {}
            for leaf in leaves:
                for shard in leaf.addressable_shards:
                    per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
            moments = [leaf for leaf in leaves if leaf.shape == kernel.shape]
            report["runs"][f"{data},{fsdp}"] = {
                "mesh": dict(trainer.mesh.shape),
                "losses": [json.loads(line)["loss"] for line in open(f"{run}/metrics.jsonl")],
                "kernel_spec": [str(a) for a in kernel.sharding.spec],
                "kernel_shards": sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
                "moment_specs": sorted({tuple(str(a) for a in m.sharding.spec) for m in moments}),
                "state_bytes_per_device": sorted(per_device.values()),
                "state_bytes": sum(leaf.nbytes for leaf in leaves),
            }
        finally:
            trainer.close()
    # The 2x2 checkpoint resumed on 2x2 (the reference), on 4x1, and (in the test) on one device.
    np.savez(f"{workdir}/2_2_params.npz", *saved_params)
    for data, fsdp in ((2, 2), (4, 1)):
        run = shutil.copytree(f"{workdir}/2_2", f"{workdir}/resumed_{data}_{fsdp}")
        trainer = Trainer(tiny(data, fsdp, %d + 1), faceset, faceset, run, progress=False)
        try:
            restored = [np.asarray(x) for x in jax.tree.leaves(trainer.state["params"])]
            trainer.run()
        finally:
            trainer.close()
        report["resumed"][f"{data},{fsdp}"] = {
            "restored_equal": all(np.array_equal(a, b) for a, b in zip(restored, saved_params)),
            "loss": [json.loads(line)["loss"] for line in open(f"{run}/metrics.jsonl")][-1]}
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 4}))
    shapes = {"conv": (3, 3, 128, 256), "dense": (512, 32), "in_channels": (3, 3, 2048, 6),
              "odd": (3, 5, 7, 999), "bias": (256,), "small": (5, 5, 3, 16), "scalar": ()}
    tree = {k: jax.ShapeDtypeStruct(v, np.float32) for k, v in shapes.items()}
    report["rule"] = {k: [str(a) for a in s.spec] for k, s in parallel.param_shardings(tree, mesh).items()}
    json.dump(report, open(out, "w"))
""" % (FSDP_STEPS, FSDP_STEPS))


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """The tiny model trained FSDP_STEPS steps on 4 forced CPU devices: replicated, 2x2, 1x4; the 2x2
    checkpoint resumed for one more step on 2x2 and on 4x1."""
    root = tmp_path_factory.mktemp("fsdp")
    faceset = str(root / "faceset")
    proc = subprocess.run([sys.executable, "-m", "preprocessing.extract",
                           f"--input={samples.carphone_path()}", f"--output={faceset}", "--size=64",
                           "--face_type=whole_face"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", FSDP_RUNS, faceset, str(root / "runs"), str(root / "report.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads((root / "report.json").read_text()), faceset=faceset, runs_dir=str(root / "runs"))


def test_fsdp_rule_splits_large_arrays_on_their_largest_divisible_axis(fsdp_runs):
    assert fsdp_runs["rule"] == {
        "conv": ["None", "None", "None", "fsdp"],  # 294912 elements: output channels
        "dense": ["fsdp", "None"],  # exactly 2**14 elements: split, along the 512 inputs
        "in_channels": ["None", "None", "fsdp", "None"],  # 6 output channels do not divide by 4
        "odd": [],  # no axis divisible by 4: replicated
        "bias": [], "small": [], "scalar": [],  # under 2**14 elements
    }


@pytest.mark.parametrize("config, shape", [("2,2", {"data": 2, "fsdp": 2}), ("1,4", {"data": 1, "fsdp": 4})])
def test_fsdp_runs_match_the_replicated_run_and_shard_the_state(fsdp_runs, config, shape):
    replicated, run = fsdp_runs["runs"]["-1,1"], fsdp_runs["runs"][config]
    assert replicated["mesh"] == {"data": 4, "fsdp": 1} and run["mesh"] == shape
    assert len(run["losses"]) == FSDP_STEPS
    np.testing.assert_allclose(run["losses"], replicated["losses"], rtol=FSDP_RTOL)
    assert replicated["losses"][-1] < replicated["losses"][0]  # it trains at all
    # The 3x3x128x256 kernel and its optimiser moments are split over fsdp on the 256 channels.
    n = shape["fsdp"]
    assert replicated["kernel_spec"] == [] and replicated["kernel_shards"] == [[3, 3, 128, 256]]
    assert run["kernel_spec"] == ["None", "None", "None", "fsdp"]
    assert run["kernel_shards"] == [[3, 3, 128, 256 // n]]
    assert run["moment_specs"] == [["None", "None", "None", "fsdp"]]
    # Every device holds the whole state when replicated; with fsdp about 1/n of it: the leaves
    # under 2**14 elements (~2% of the tiny model's bytes) stay whole on every device.
    total = replicated["state_bytes"]
    assert replicated["state_bytes_per_device"] == [total] * 4
    for got in run["state_bytes_per_device"]:
        assert total / n <= got <= 1.1 * total / n


# Loss of the step after a restore on another mesh vs on the saving one: the parameters are identical,
# so only one step's float32 reduction order differs (measured <= 1.3e-7 relative on a 2-core x86 CPU).
RESUME_RTOL = 1e-5


def test_fsdp_checkpoint_resumes_on_other_meshes(fsdp_runs, tmp_path):
    """The data=2 x fsdp=2 checkpoint restored on data=4 x fsdp=1 and on one device: parameters bit-identical
    to the saved ones, and the next step's loss equal to the 2x2 resume's within RESUME_RTOL."""
    resumed = fsdp_runs["resumed"]
    assert resumed["2,2"]["restored_equal"] and resumed["4,1"]["restored_equal"]
    reference = resumed["2,2"]["loss"]
    np.testing.assert_allclose(resumed["4,1"]["loss"], reference, rtol=RESUME_RTOL)
    run = str(shutil.copytree(os.path.join(fsdp_runs["runs_dir"], "2_2"), tmp_path / "run"))
    cfg = get_config("tiny")
    cfg.train.max_steps = FSDP_STEPS + 1
    cfg.log.every_steps = 1
    cfg.checkpoint.every_minutes = 0
    trainer = Trainer(cfg, fsdp_runs["faceset"], fsdp_runs["faceset"], run, progress=False)
    try:
        saved = np.load(os.path.join(fsdp_runs["runs_dir"], "2_2_params.npz"))
        restored = jax.tree.leaves(trainer.state["params"])
        assert len(restored) == len(saved.files)
        for i, leaf in enumerate(restored):
            np.testing.assert_array_equal(np.asarray(leaf), saved[f"arr_{i}"])
        trainer.run()
    finally:
        trainer.close()
    with open(os.path.join(run, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    assert last["step"] == FSDP_STEPS + 1
    np.testing.assert_allclose(last["loss"], reference, rtol=RESUME_RTOL)
