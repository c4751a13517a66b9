"""engine.checkpoint: exact round trips through real orbax files, keep-N, fallback past a corrupt
checkpoint, optional items, restores across device counts, and the resume config check.

The reference for every restored leaf is the array that was saved (copied to NumPy before the
save): restores must be bit-exact. The cross-device test runs the 4-device half in a subprocess
(XLA_FLAGS must be set before jax is imported); this file is also that subprocess's script.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys

import numpy as np

if __name__ == "__main__":  # the 4-device subprocess: set before jax is imported
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from configs.saehd import get_config
from engine.checkpoint import Checkpointer, CheckpointError, check_config_compatible
from preprocessing.errors import UserError


class TinyNet(nnx.Module):
    """A conv and a dense layer: enough to give nnx.State a nested structure and several dtypes."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 8, kernel_size=(3, 3), rngs=rngs)
        self.dense = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.dense(self.conv(x).mean(axis=(1, 2)))


def make_state(seed: int, updates: int = 2) -> dict:
    """Params, adam state after `updates` steps (so mu, nu and count are non-trivial), step."""
    model = TinyNet(nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    x = jax.random.normal(jax.random.key(seed + 1), (2, 8, 8, 3))
    graphdef = nnx.graphdef(model)

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p)(x) ** 2)

    for _ in range(updates):
        grads = jax.grad(loss)(params)
        upd, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, upd)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(updates)}


def host_copy(tree):
    return jax.tree.map(lambda a: np.array(a), tree)


def assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def array_leaves(state):
    """The saved arrays, in a fixed order ("step" is rebuilt from meta, so it is left out)."""
    return jax.tree.leaves({k: v for k, v in state.items() if k != "step"})


def abstract(state):
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


@pytest.fixture(scope="module")
def states():
    """Three different states (seeds 0, 1, 2) so a restore of the wrong step cannot pass."""
    return [make_state(seed) for seed in range(3)]


def save_steps(ck, states, steps, **meta):
    for step, state in zip(steps, states):
        assert ck.save(step, state, {"data_position": 10 * step, **meta}, force=True)
    ck.wait()


def test_round_trip_is_exact_with_meta(tmp_path, states):
    state = states[0]
    want = host_copy(state)
    cfg_json = get_config("tiny").to_dict()
    meta = {"data_position": {"src": 123, "dst": 456}, "rng_seed": 7, "config": cfg_json,
            "optimizer": "adam"}
    ck = Checkpointer(tmp_path, keep=3)
    assert ck.latest_step() is None
    assert ck.save(5, state, meta, force=True)
    ck.close()
    assert os.path.exists(tmp_path / "checkpoints" / "5" / "commit_success.txt")

    ck = Checkpointer(tmp_path, keep=3)  # a fresh manager, as after a restart
    assert ck.latest_step() == 5
    got, got_meta = ck.restore(abstract(state))
    assert ck.saved_config() == cfg_json
    ck.close()
    assert isinstance(got["params"], nnx.State)
    assert_trees_equal(got["params"], want["params"])
    assert_trees_equal(got["opt_state"], want["opt_state"])  # namedtuples and count included
    assert got["step"].dtype == jnp.int32 and int(got["step"]) == 5
    assert got_meta == {**json.loads(json.dumps(meta)), "step": 5}


def test_keep_n_async_and_restore_given_step(tmp_path, states):
    ck = Checkpointer(tmp_path, keep=2)
    save_steps(ck, states, [10, 20, 30])
    assert ck.all_steps() == [20, 30]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "30"]
    latest, meta = ck.restore(abstract(states[0]))
    assert meta["step"] == 30 and meta["data_position"] == 300
    assert_trees_equal(latest["params"], host_copy(states[2]["params"]))
    older, meta = ck.restore(abstract(states[0]), step=20)
    assert meta["step"] == 20 and int(older["step"]) == 20
    assert_trees_equal(older["params"], host_copy(states[1]["params"]))
    no_sharding = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                               states[0]["params"])
    assert_trees_equal(ck.restore_generator(no_sharding, step=20), host_copy(states[1]["params"]))
    with pytest.raises(CheckpointError, match="step 10"):
        ck.restore(abstract(states[0]), step=10)  # deleted by keep=2
    ck.close()


def test_async_save_copies_before_returning(tmp_path, states):
    """The trainer donates the state to the next step right after `save`: orbax must have copied
    the arrays to host memory by then, and only write them in the background."""
    own = jax.tree.map(lambda a: a.copy(), states[1])
    ck = Checkpointer(tmp_path)
    assert ck.save(1, own, {}, force=True)
    for leaf in jax.tree.leaves(own):
        leaf.delete()  # what donation does to the buffers
    ck.wait()
    got, _ = ck.restore(abstract(states[1]))
    assert_trees_equal(got["params"], host_copy(states[1]["params"]))
    assert_trees_equal(got["opt_state"], host_copy(states[1]["opt_state"]))
    ck.close()


def test_should_save_by_steps_and_minutes(tmp_path):
    now = [1000.0]
    ck = Checkpointer(tmp_path, every_steps=50, every_minutes=25.0, clock=lambda: now[0])
    assert [s for s in range(1, 151) if ck.should_save(s)] == [50, 100, 150]
    now[0] += 25 * 60 - 1
    assert not ck.should_save(7)
    now[0] += 1
    assert ck.should_save(7)
    assert ck.save(8, {"params": {"w": jnp.ones(2)}}, {})  # due by time; saving resets the timer
    assert not ck.should_save(9)
    assert not ck.save(9, {"params": {"w": jnp.ones(2)}}, {})  # not due, not forced: no save
    assert ck.all_steps() == [8]
    ck.close()


def corrupt(step_dir):
    """Truncates every data file of the generator item: its arrays can no longer be read."""
    files = glob.glob(os.path.join(step_dir, "generator", "**", "d", "*"), recursive=True)
    assert files
    for f in files:
        open(f, "wb").close()


def test_corrupt_latest_falls_back_and_is_replaced(tmp_path, states, caplog):
    ck = Checkpointer(tmp_path, keep=3)
    save_steps(ck, states, [1, 2])
    corrupt(tmp_path / "checkpoints" / "2")
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        got, meta = ck.restore(abstract(states[0]))
    assert meta["step"] == 1 and int(got["step"]) == 1
    assert_trees_equal(got["params"], host_copy(states[0]["params"]))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(os.path.join(str(tmp_path), "checkpoints", "2") in m for m in warned), warned

    # The run continues from step 1; its next save at step 2 replaces the unreadable one.
    assert ck.save(2, states[2], {}, force=True)
    ck.wait()
    got, meta = ck.restore(abstract(states[0]))
    assert meta["step"] == 2
    assert_trees_equal(got["params"], host_copy(states[2]["params"]))
    ck.close()


def test_all_corrupt_raises_one_line_error(tmp_path, states):
    ck = Checkpointer(tmp_path, keep=3)
    save_steps(ck, states, [1, 2])
    corrupt(tmp_path / "checkpoints" / "1")
    os.remove(tmp_path / "checkpoints" / "2" / "meta" / "metadata")
    with pytest.raises(CheckpointError) as info:
        ck.restore(abstract(states[0]))
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "\n" not in message and len(message) < 800
    assert message.startswith(str(tmp_path / "checkpoints"))
    assert "step 2" in message and "step 1" in message
    with pytest.raises(CheckpointError, match="no config"):
        ck.saved_config(step=1)  # meta readable but without a config
    with pytest.raises(CheckpointError, match="step 1"):
        ck.restore_generator(abstract(states[0]["params"]), step=1)
    ck.close()


def test_no_checkpoint_raises(tmp_path, states):
    ck = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ck.restore(abstract(states[0]))
    ck.close()


def test_item_absent_in_older_checkpoint_is_none(tmp_path, states):
    state = states[1]
    ck = Checkpointer(tmp_path)
    ck.save(3, {"params": state["params"], "step": state["step"]}, {}, force=True)
    ck.wait()
    wanted = abstract({**state, "disc_params": state["params"]})
    got, meta = ck.restore(wanted)
    assert got["opt_state"] is None and got["disc_params"] is None
    assert_trees_equal(got["params"], host_copy(state["params"]))
    assert int(got["step"]) == 3 and meta == {"step": 3}
    ck.close()


# ---- restore across device counts -----------------------------------------------------------

def shard_over(tree, mesh):
    """Shards each leaf's last axis over the mesh when it divides evenly, else replicates it."""
    P, NS = jax.sharding.PartitionSpec, jax.sharding.NamedSharding
    n = mesh.devices.size

    def spec(a):
        if a.ndim and a.shape[-1] % n == 0:
            return NS(mesh, P(*([None] * (a.ndim - 1)), "data"))
        return NS(mesh, P())

    return jax.tree.map(lambda a: jax.device_put(a, spec(a)), tree)


def four_device_job(workdir: str) -> None:
    """Subprocess: restore the 1-device checkpoint onto 4 devices, then save a sharded one."""
    assert jax.device_count() == 4
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    with np.load(os.path.join(workdir, "one_device.npz")) as f:
        saved_by_one = [f[k] for k in sorted(f.files, key=int)]
    template = shard_over(make_state(0), mesh)
    ck = Checkpointer(os.path.join(workdir, "from1"))
    got, _ = ck.restore(abstract(template))
    ck.close()
    leaves = array_leaves(got)
    report = {
        "values_match": all(np.array_equal(np.asarray(g), w) for g, w in zip(leaves, saved_by_one)),
        "max_devices_per_leaf": max(len(g.sharding.device_set) for g in leaves),
        "shard_shapes_ok": all(g.sharding == t.sharding for g, t in
                               zip(leaves, array_leaves(template))),
    }
    state = shard_over(make_state(1), mesh)
    np.savez(os.path.join(workdir, "four_devices.npz"),
             **{str(i): np.asarray(a) for i, a in enumerate(array_leaves(state))})
    ck = Checkpointer(os.path.join(workdir, "from4"))
    ck.save(4, state, {"devices": 4}, force=True)
    ck.close()
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f)


@pytest.fixture(scope="module")
def cross_device_dir(tmp_path_factory):
    """Saves a 1-device checkpoint here, then runs `four_device_job` in a 4-device subprocess."""
    workdir = tmp_path_factory.mktemp("cross_device")
    state = make_state(0)
    np.savez(workdir / "one_device.npz",
             **{str(i): np.asarray(a) for i, a in enumerate(array_leaves(state))})
    ck = Checkpointer(workdir / "from1")
    ck.save(1, state, {"devices": 1}, force=True)
    ck.close()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(workdir)], env=env,
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_one_device_checkpoint_restores_sharded_on_four(cross_device_dir):
    report = json.loads((cross_device_dir / "report.json").read_text())
    assert report == {"values_match": True, "max_devices_per_leaf": 4, "shard_shapes_ok": True}


def test_four_device_checkpoint_restores_on_one(cross_device_dir):
    with np.load(cross_device_dir / "four_devices.npz") as f:
        saved_by_four = [f[k] for k in sorted(f.files, key=int)]
    template = make_state(2)  # 1 device here; values differ from the saved ones (seed 1)
    ck = Checkpointer(cross_device_dir / "from4")
    got, meta = ck.restore(abstract(template))
    ck.close()
    assert meta == {"devices": 4, "step": 4}
    leaves = array_leaves(got)
    assert len(leaves) == len(saved_by_four)
    for g, w in zip(leaves, saved_by_four):
        assert len(g.sharding.device_set) == 1
        np.testing.assert_array_equal(np.asarray(g), w)


# ---- resume config check --------------------------------------------------------------------

def test_model_change_is_refused_naming_the_field():
    saved = get_config("tiny").to_dict()
    new = get_config("tiny")
    new.model.resolution = 64
    with pytest.raises(UserError, match=r"model\.resolution 32 -> 64") as info:
        check_config_compatible(saved, new, where="/runs/a/checkpoints")
    assert str(info.value).startswith("/runs/a/checkpoints: ")
    with pytest.raises(UserError, match=r"model\.archi liae-ud -> df-ud"):
        check_config_compatible(saved, get_config("tiny-df"))


def test_safe_edits_are_allowed_and_optimizer_change_warns():
    saved = get_config("tiny").to_dict()
    new = get_config("tiny")
    new.train.lr = 1e-4
    new.train.batch_size = 16
    new.train.random_warp = False
    new.train.lr_dropout = True
    assert check_config_compatible(saved, new) == []
    assert check_config_compatible(json.loads(json.dumps(saved)), saved) == []
    new.train.optimizer = "rmsprop"
    warnings = check_config_compatible(saved, new)
    assert len(warnings) == 1 and "train.optimizer adabelief -> rmsprop" in warnings[0]
    assert "reset" in warnings[0]


if __name__ == "__main__":
    four_device_job(sys.argv[1])


def test_relative_workdir_is_accepted(tmp_path, monkeypatch):
    """`--workdir=runs/x` is what users type; orbax itself only takes absolute paths."""
    import jax.numpy as jnp

    from engine.checkpoint import Checkpointer

    monkeypatch.chdir(tmp_path)
    ck = Checkpointer("run_rel", keep=2, every_steps=1)
    state = {"params": {"w": jnp.arange(4.0)}, "step": jnp.int32(3)}
    ck.save(3, state, {"step": 3}, force=True)
    ck.wait()
    restored, meta = ck.restore({"params": {"w": jnp.zeros(4)}, "step": jnp.int32(0)})
    ck.close()
    assert meta["step"] == 3 and (tmp_path / "run_rel" / "checkpoints").is_dir()
    assert jnp.array_equal(restored["params"]["w"], jnp.arange(4.0))
