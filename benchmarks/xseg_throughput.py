"""XSeg throughput: training samples/s (augmentation + forward + backward + RMSprop, one jitted
step) and apply faces/s (re-crop + predict + warp back + binarise), printed as a Markdown table.

  python -m benchmarks.xseg_throughput            # tiny (64 px, base 8) on CPU; DFL 256/32 too on GPU
  python -m benchmarks.xseg_throughput --presets=tiny,full --steps=20

Inputs are synthetic uint8 faces already on the device (the resident data path), so the numbers
are the compiled programs' own; compile time is excluded (one warm-up call each).
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs.xseg import get_config
from engine import optim
from engine.xseg.model import init_model
from engine.xseg.step import init_state, make_train_step
from engine.xseg.apply import predict_masks

_PRESETS = flags.DEFINE_list("presets", None, "tiny and/or full (default: tiny on CPU, both on GPU).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls per measurement.")
_APPLY_BATCH = flags.DEFINE_integer("apply_batch", 32, "Faces per apply call.")


def _batch(n: int, size: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    masks = (((x - size / 2) / (0.35 * size)) ** 2 + ((y - size / 2) / (0.45 * size)) ** 2 <= 1)
    return {"faces": jnp.asarray(rng.integers(0, 256, (n, size, size, 3), np.uint8)),
            "targets": jnp.asarray(np.broadcast_to(masks[None, ..., None] * 255, (n, size, size, 1)).astype(np.uint8)),
            "base_matrices": jnp.asarray(np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1))),
            "sample_ids": jnp.arange(n, dtype=jnp.int32)}


def _timed(fn, steps: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def measure(preset: str, steps: int, apply_batch: int) -> dict[str, float]:
    from flax import nnx

    from engine.trainer import compute_dtype

    cfg = get_config("tiny" if preset == "tiny" else "")
    res, batch_size = int(cfg.model.resolution), int(cfg.train.batch_size)
    graphdef, params = init_model(cfg.model, 0, compute_dtype("auto"))
    tx = optim.make_optimizer(cfg.train, 0)
    step = jax.jit(make_train_step(graphdef, tx, 0, res), donate_argnums=0)
    holder = {"state": init_state(params, tx)}
    batch = _batch(batch_size, res)

    def train_once():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    train_s = _timed(train_once, steps)
    faces = _batch(apply_batch, res)["faces"]
    apply = jax.jit(lambda p, f: predict_masks(nnx.merge(graphdef, p), f))
    apply_s = _timed(lambda: apply(holder["state"]["params"], faces), steps)
    return {"resolution": res, "base": int(cfg.model.base), "batch": batch_size,
            "train_samples_per_s": batch_size / train_s, "apply_faces_per_s": apply_batch / apply_s}


def main(argv: Sequence[str]) -> None:
    del argv
    on_gpu = jax.default_backend() == "gpu"
    presets = _PRESETS.value or (["tiny", "full"] if on_gpu else ["tiny"])
    device = jax.devices()[0].device_kind
    print(f"| preset | res/base | batch | device | train samples/s | apply faces/s (batch {_APPLY_BATCH.value}) |")
    print("|---|---|---|---|---|---|")
    for preset in presets:
        r = measure(preset, _STEPS.value, _APPLY_BATCH.value)
        print(f"| {preset} | {r['resolution']}/{r['base']} | {r['batch']} | {device} | "
              f"{r['train_samples_per_s']:.1f} | {r['apply_faces_per_s']:.1f} |")


if __name__ == "__main__":
    app.run(main)
