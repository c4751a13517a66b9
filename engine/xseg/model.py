"""Building, initialising and loading XSeg models from a config (train, apply and merge share it)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from engine.checkpoint import load_trained_module
from engine.models.xseg import XSeg, num_levels
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType


def validate_model_config(model_cfg: Any) -> None:
    """One clear line per bad model option."""
    try:
        num_levels(int(model_cfg.resolution))
        FaceType.from_flag(model_cfg.face_type)
    except ValueError as e:
        raise UserError(f"--config.model: {e}") from None
    if int(model_cfg.base) < 1:
        raise UserError(f"--config.model.base={model_cfg.base}: must be >= 1")


def init_model(model_cfg: Any, seed: int, dtype: jnp.dtype = jnp.float32) -> tuple[nnx.GraphDef, dict]:
    """Graph and fresh parameters (pure dict), initialised in one jitted program with the "rbg"
    PRNG (eager NNX init compiles one kernel per parameter shape: slow on a CPU)."""
    def build(rngs: nnx.Rngs) -> XSeg:
        return XSeg(int(model_cfg.resolution), int(model_cfg.base), dtype=dtype, rngs=rngs)

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
    init = jax.jit(lambda key: nnx.to_pure_dict(nnx.split(build(nnx.Rngs(params=key)))[1]))
    return graphdef, init(jax.random.key(seed, impl="rbg"))


def load_trained(workdir: str, dtype: jnp.dtype = jnp.float32) -> tuple[nnx.GraphDef, dict, ml_collections.ConfigDict]:
    """(graphdef, params, config) of the newest checkpoint in an xseg_train workdir."""
    def build(saved: dict) -> XSeg:
        if saved.get("name") != "xseg":
            raise UserError(f"{workdir}: holds a {saved.get('name')!r} model, not an XSeg one")
        return XSeg(int(saved["model"]["resolution"]), int(saved["model"]["base"]), dtype=dtype,
                    rngs=nnx.Rngs(0))

    graphdef, params, saved, _step = load_trained_module(
        workdir, build, hint="no XSeg checkpoints here (train one with python -m engine.xseg_train)")
    return graphdef, params, ml_collections.ConfigDict(saved)
