"""The SAEHD training step: augmentation, forward, losses, gradients and update in one jitted call.

The whole step runs on the accelerator (DFL's CPU sample generators are its best-known
bottleneck): uint8 faces go in, the step re-crops, warps and recolours them on the device, runs the
autoencoder, computes DFL's losses, and applies the optimiser. It is a pure function of
(state, batch) so it compiles once and can be donated and sharded:

  state = {"params", "opt_state", "step", "counters": {"nonfinite", "skipped"}}

A non-finite loss or gradient skips the update inside the step (params and optimiser state are
kept), counts it in `counters.nonfinite` (consecutive) and `counters.skipped` (total); the trainer
rolls back to the last checkpoint after `train.nan_patience` consecutive skips.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from engine import losses
from engine.augment import augment_batch
from engine.augment.pipeline import SCALE_RANGE

Batch = dict[str, dict[str, jax.Array]]
State = dict[str, Any]

QUICK96_SCALE_RANGE = (-0.05, 0.05)  # Quick96's milder zoom (DFL_SPEC §3.8)
QUICK96_NO_WARP_EVERY = 3  # Quick96 trains every 3rd iteration on its previous batch, unwarped


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Static settings of the compiled step (changing one recompiles)."""

    resolution: int
    seed: int
    masked_training: bool = True
    eyes_mouth_prio: bool = False
    blur_out_mask: bool = False
    random_warp: bool = True
    src_flip: bool = False
    dst_flip: bool = True
    hsv_power: float = 0.0
    ct_mode: str = "none"
    micro_batches: int = 1
    quick96: bool = False  # Quick96's recipe: see QUICK96_* and `reuses_previous_batch`

    @classmethod
    def from_config(cls, cfg) -> "StepOptions":
        t = cfg.train
        return cls(
            resolution=cfg.model.resolution, seed=cfg.seed, masked_training=t.masked_training,
            eyes_mouth_prio=t.eyes_mouth_prio, blur_out_mask=t.blur_out_mask, random_warp=t.random_warp,
            src_flip=t.random_src_flip, dst_flip=t.random_dst_flip, hsv_power=t.random_hsv_power,
            ct_mode=t.ct_mode, micro_batches=t.micro_batches, quick96=cfg.name == "quick96")


def reuses_previous_batch(opts: StepOptions, step: int | jax.Array) -> bool | jax.Array:
    """Quick96's no-warp steps (DFL_SPEC §3.8): at steps 3, 6, 9, ... (the number of steps done
    before, DFL's iteration counter) DFL trains again on the previous step's samples with each
    input replaced by its target. The trainer feeds the previous batch again; the step recognises
    these steps from its traced step counter, so one compiled program serves both kinds.
    Works on Python ints (the trainer) and traced int32 scalars (the step)."""
    if not opts.quick96:
        return False
    return (step % QUICK96_NO_WARP_EVERY == 0) & (step > 0)


def augmented_inputs(opts: StepOptions, step: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Model inputs and loss targets for one batch (float32, model resolution).

    On a no-warp step the augmentation draws the previous step's randomness (its affine jitter),
    so with the previous batch fed again the targets are exactly that step's.
    """
    no_warp = reuses_previous_batch(opts, step)
    draw_step = jnp.where(no_warp, step - 1, step) if opts.quick96 else step
    return augment_batch(
        opts.seed, draw_step, batch["src"], batch["dst"], resolution=opts.resolution,
        random_warp=opts.random_warp, src_flip=opts.src_flip, dst_flip=opts.dst_flip,
        hsv_power=opts.hsv_power, ct_mode=opts.ct_mode,
        scale_range=QUICK96_SCALE_RANGE if opts.quick96 else SCALE_RANGE, input_is_target=no_warp)


def step_losses(opts: StepOptions, aug: dict[str, jax.Array],
                preds: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The step's reconstruction losses with its options (shared with benchmarks/train_breakdown.py)."""
    return losses.saehd_losses(
        aug, preds, resolution=opts.resolution, masked_training=opts.masked_training,
        eyes_mouth_prio=opts.eyes_mouth_prio, blur_out_mask=opts.blur_out_mask, quick96=opts.quick96)


def _loss_fn(graphdef: nnx.GraphDef, opts: StepOptions):
    def loss(params, aug: dict[str, jax.Array]):
        model = nnx.merge(graphdef, params)
        return step_losses(opts, aug, model(aug["warped_src"], aug["warped_dst"]))

    return loss


def _split_micro(tree: dict, n: int) -> dict:
    """[B, ...] leaves -> [n, B/n, ...] for a scan over micro-batches."""
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), tree)


def _global_norm(tree) -> jax.Array:
    return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    opts: StepOptions) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """Builds the pure step function (jit it with shardings and donate the state)."""
    grad_fn = jax.value_and_grad(_loss_fn(graphdef, opts), has_aux=True)

    def step_fn(state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]:
        params = state["params"]
        aug = augmented_inputs(opts, state["step"], batch)
        if opts.micro_batches > 1:
            def accumulate(carry, micro):
                (loss, terms), grads = grad_fn(params, micro)
                acc = jax.tree.map(jnp.add, carry, (loss, terms, grads))
                return acc, None

            micro = _split_micro(aug, opts.micro_batches)
            first = jax.tree.map(lambda x: x[0], micro)
            (loss_s, terms_s), grads_s = jax.eval_shape(grad_fn, params, first)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_s, terms_s, grads_s))
            (loss, terms, grads), _ = jax.lax.scan(accumulate, zeros, micro)
            loss, terms, grads = jax.tree.map(lambda x: x / opts.micro_batches, (loss, terms, grads))
        else:
            (loss, terms), grads = grad_fn(params, aug)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(_global_norm(grads))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = {
            "params": keep(new_params, params),
            "opt_state": keep(new_opt, state["opt_state"]),
            "step": state["step"] + 1,
            "counters": {
                "nonfinite": jnp.where(finite, 0, state["counters"]["nonfinite"] + 1),
                "skipped": state["counters"]["skipped"] + (~finite).astype(jnp.int32),
            },
        }
        metrics = {
            "loss": loss, **terms,
            "grad_norm": _global_norm(grads),
            "update_norm": _global_norm(updates),
            "param_norm": _global_norm(new_params),
            "nonfinite": new_state["counters"]["nonfinite"],
        }
        return new_state, metrics

    return step_fn


def init_state(params, tx: optax.GradientTransformation) -> State:
    """A fresh train state around initial parameters."""
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.int32(0),
        "counters": {"nonfinite": jnp.int32(0), "skipped": jnp.int32(0)},
    }


def make_eval_step(graphdef: nnx.GraphDef, opts: StepOptions):
    """Validation loss and the predictions used for previews (no augmentation randomness beyond
    the re-crop: warp, flips and colour jitter are off so the numbers are comparable over time)."""
    plain = dataclasses.replace(opts, random_warp=False, src_flip=False, dst_flip=False, hsv_power=0.0,
                                ct_mode="none")
    loss = _loss_fn(graphdef, plain)

    def eval_fn(params, batch: Batch, step: jax.Array):
        aug = augment_batch(plain.seed, step, batch["src"], batch["dst"], resolution=plain.resolution,
                            random_warp=False, src_flip=False, dst_flip=False, hsv_power=0.0, ct_mode="none",
                            scale_range=(0.0, 0.0), rotation_range=(0.0, 0.0), shift_range=(0.0, 0.0))
        total, terms = loss(params, aug)
        model = nnx.merge(graphdef, params)
        preds = model(aug["target_src"], aug["target_dst"])
        return total, terms, aug, preds

    return eval_fn
