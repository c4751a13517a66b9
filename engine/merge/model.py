"""The trained generator, restored for merging: config from the checkpoint, parameters only.

Merging needs neither the optimiser state nor the facesets the model was trained on, so only the
`params` item is read (`Checkpointer.restore_generator`); the model's shape comes from the config
saved with the checkpoint, so no training config has to be given again.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections
from flax import nnx

from engine.checkpoint import load_trained_module
from engine.models.saehd import SAEHD, validate_model_config
from engine.trainer import compute_dtype
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType


class MergeModel(NamedTuple):
    graphdef: nnx.GraphDef
    params: Any
    resolution: int
    face_type: FaceType
    step: int
    config: dict  # the training config as saved (JSON)
    dtype: Any
    xseg_graphdef: nnx.GraphDef | None = None  # a trained XSeg, for the XSeg mask modes
    xseg_params: Any = None


def with_xseg(model: MergeModel, xseg_workdir: str) -> MergeModel:
    """The model plus the newest XSeg checkpoint of an `engine.xseg_train` run folder."""
    from engine.xseg.model import load_trained

    graphdef, params, _cfg = load_trained(xseg_workdir)
    return model._replace(xseg_graphdef=graphdef, xseg_params=jax.device_put(params))


def load_model(workdir: str, step: int | None = None, dtype_name: str = "auto") -> MergeModel:
    """Restores the generator from `workdir`'s newest readable checkpoint (or `step`)."""
    dtype = compute_dtype(dtype_name)

    def build(saved: dict) -> SAEHD:
        model_cfg = ml_collections.ConfigDict(saved.get("model", {}))
        try:
            validate_model_config(model_cfg)
        except (ValueError, KeyError, AttributeError) as e:
            raise UserError(f"{workdir}: the checkpoint holds an unusable model config ({e})") from None
        return SAEHD(model_cfg, rngs=nnx.Rngs(0), dtype=dtype)

    graphdef, params, saved, step = load_trained_module(workdir, build, step)
    model_cfg = saved["model"]
    return MergeModel(graphdef, jax.device_put(params), int(model_cfg["resolution"]),
                      FaceType.from_flag(model_cfg["face_type"]), step, saved, dtype)
