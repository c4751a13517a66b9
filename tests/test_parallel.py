"""The mesh and shardings: axis sizes and types, config errors, and where host data lands.

One device in this process; 4 forced CPU devices in one subprocess (XLA_FLAGS must be set before
jax is imported) shared by the tests that need them. References: NumPy slices of the host data
(exact) and float64 NumPy sums for a jitted data-parallel reduction.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from engine import parallel
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


def test_four_device_mesh_errors(four_devices):
    assert four_devices["errors"] == {
        "3,1": "config mesh: data=3 x fsdp=1 = 3 devices, but 4 are present; "
               "set --config.mesh.data=-1 to use them all",
        "-1,3": "config mesh: fsdp=3 does not divide the 4 devices; choose a divisor of 4",
    }
