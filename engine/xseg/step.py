"""XSeg's jitted train and eval steps, pure functions over state = {params, opt_state, step}.

Loss (DFL_SPEC §2.3, normal mode): per-pixel sigmoid cross-entropy on the logits, averaged,
computed in float32. Augmentation runs inside the train step, so uint8 faces go in.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from engine.xseg.augment import augment_batch, recrop

State = dict[str, Any]


def init_state(params: Any, tx: optax.GradientTransformation) -> State:
    return {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}


def logits_fn(graphdef: nnx.GraphDef) -> Callable[[Any, jax.Array], jax.Array]:
    """(params, images [B,R,R,3] in [0,1]) -> logits [B,R,R,1] float32."""
    return lambda params, images: nnx.merge(graphdef, params)(images)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, seed: int,
                    resolution: int) -> Callable[[State, dict], tuple[State, dict]]:
    forward = logits_fn(graphdef)

    def loss_fn(params, images, masks):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(forward(params, images), masks))

    def step(state: State, batch: dict) -> tuple[State, dict]:
        images, masks = augment_batch(seed, state["step"], batch, resolution)
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], images, masks)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, {"loss": loss}

    return step


def make_eval_step(graphdef: nnx.GraphDef, resolution: int) -> Callable[[Any, dict], dict]:
    """(params, batch with `valid` [B]) -> sums over valid rows: loss, intersection, union, count,
    plus the batch's images, targets and predicted probabilities for previews. No augmentation."""
    forward = logits_fn(graphdef)

    def evaluate(params, batch: dict) -> dict:
        images, masks = recrop(batch["faces"], batch["targets"], batch["base_matrices"], resolution)
        logits = forward(params, images)
        valid = batch["valid"][:, None, None, None]
        pred = (logits > 0.0).astype(jnp.float32)  # sigmoid > 0.5
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, masks), axis=(1, 2, 3))
        return {"loss_sum": jnp.sum(loss * batch["valid"]), "count": jnp.sum(batch["valid"]),
                "intersection": jnp.sum(pred * masks * valid),
                "union": jnp.sum(jnp.maximum(pred, masks) * valid),
                "images": images, "targets": masks, "probs": jax.nn.sigmoid(logits)}

    return evaluate
