"""The pure training step on a synthetic batch: gradient accumulation and the non-finite guard."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import saehd
from engine import optim
from engine.train_step import StepOptions, init_state, make_train_step
from engine.trainer import init_model

B, S = 4, 32


def _side(rng: np.random.Generator, offset: int) -> dict[str, jax.Array]:
    yy, xx = np.mgrid[:S, :S]
    faces = np.stack([
        np.clip(np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1) + rng.integers(0, 40, (S, S, 3)), 0, 255)
        for _ in range(B)]).astype(np.uint8)
    disk = (((xx - S / 2) ** 2 + (yy - S / 2) ** 2) < (S / 3) ** 2).astype(np.uint8) * 255
    masks = np.broadcast_to(disk[None, :, :, None], (B, S, S, 1)).copy()
    eye = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (B, 1, 1))
    return {"faces": jnp.asarray(faces), "masks": jnp.asarray(masks), "eyes_mouth_masks": jnp.asarray(masks // 2),
            "base_matrices": jnp.asarray(eye), "sample_ids": jnp.arange(offset, offset + B, dtype=jnp.int32)}


@pytest.fixture(scope="module")
def setup():
    cfg = saehd.get_config("tiny")
    cfg.train.batch_size = B
    graphdef, params = init_model(cfg, jnp.float32)
    rng = np.random.default_rng(0)
    batch = {"src": _side(rng, 0), "dst": _side(rng, 100)}
    return cfg, graphdef, params, batch


def _one_step(cfg, graphdef, params, batch, micro: int):
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    opts = dataclasses.replace(StepOptions.from_config(cfg), micro_batches=micro)
    step = jax.jit(make_train_step(graphdef, tx, opts))
    return step(init_state(params, tx), batch)


def test_two_micro_batches_equal_one_full_batch(setup):
    """Accumulating gradients over 2 halves gives the full batch's loss and update (the losses are
    per-sample means, so the mean of the halves' means is the batch mean)."""
    cfg, graphdef, params, batch = setup
    full_state, full = _one_step(cfg, graphdef, params, batch, 1)
    acc_state, acc = _one_step(cfg, graphdef, params, batch, 2)
    for key in ("loss", "src_loss", "dst_loss", "grad_norm"):
        np.testing.assert_allclose(float(acc[key]), float(full[key]), rtol=1e-5, err_msg=key)
    # AdaBelief's first update is ~lr * sign(g): elements whose gradient is ~0 may flip between the
    # two summation orders, so allow a few of them (< 1%) to differ, by at most one update.
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(acc_state["params"])])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(full_state["params"])])
    diff = np.abs(a - b)
    assert (diff > 1e-6).mean() < 0.01 and diff.max() < 4 * cfg.train.lr
    # and the step moved the parameters at all
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(full_state["params"]),
                                                              jax.tree.leaves(params)))
    assert moved > 0


def test_non_finite_step_is_skipped(setup):
    """A NaN in the inputs gives a NaN loss: params and optimiser state stay, the counters count it."""
    cfg, graphdef, params, batch = setup
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    bad = jax.tree.map(lambda x: x, batch)
    bad["src"]["base_matrices"] = batch["src"]["base_matrices"].at[0, 0, 0].set(jnp.nan)
    step = jax.jit(make_train_step(graphdef, tx, StepOptions.from_config(cfg)))
    state = init_state(params, tx)
    new, metrics = step(state, bad)
    assert not np.isfinite(float(metrics["loss"]))
    assert int(new["counters"]["nonfinite"]) == 1 and int(new["counters"]["skipped"]) == 1
    assert int(new["step"]) == 1
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    good, _ = step(new, batch)
    assert int(good["counters"]["nonfinite"]) == 0 and int(good["counters"]["skipped"]) == 1
