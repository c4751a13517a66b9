"""DFL's model options (the `options` dict of `NAME_SAEHD_data.dat`, DFL_SPEC §3.2) <-> our config.

Options that shape the network or the training recipe map onto configs/saehd.py fields
(`models_opt_on_gpu` onto train.opt_on_host); options that only steer DFL's user interface
(autobackup, preview history) have no counterpart and are dropped quietly. Options we do not know
(other DFL versions, forks) are dropped with a warning that names them; options we know but cannot honour (the `-c`
archi) are refused, because training them with another network would silently change the model.
Quick96 has fixed settings (configs/quick96.py); model-shape options present in its file
override them, which is how our own Quick96 exports of other sizes round-trip.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import ml_collections
import numpy as np

from configs import quick96, saehd
from engine.augment.pipeline import CT_MODES
from preprocessing.errors import UserError

log = logging.getLogger(__name__)

FACE_TYPES = {"h": "half", "mf": "mid_full", "f": "full", "wf": "whole_face", "head": "head"}
MODEL_FIELDS = ("resolution", "ae_dims", "e_dims", "d_dims", "d_mask_dims")
# DFL option -> cfg.train field of the same meaning and type.
TRAIN_FIELDS = ("batch_size", "masked_training", "eyes_mouth_prio", "uniform_yaw", "blur_out_mask",
                "random_warp", "random_src_flip", "random_dst_flip", "random_hsv_power", "gan_power",
                "gan_patch_size", "gan_dims", "true_face_power", "face_style_power", "bg_style_power",
                "ct_mode", "clipgrad")
# DFL options for its own UI and memory placement: nothing to map.
UI_ONLY = ("autobackup_hour", "write_preview_history", "maximum_n_backups",
           "preview_samples", "force_full_preview")


def _plain(value: Any) -> Any:
    """numpy scalars (as DFL pickles them) -> Python values."""
    return value.item() if isinstance(value, np.generic) else value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, str):  # lr_dropout: 'y' | 'n' | 'cpu'
        if value.lower() in ("y", "cpu", "true"):
            return True
        if value.lower() in ("n", "false"):
            return False
        raise UserError(f"DFL option {name}={value!r}: expected y, n or cpu")
    return bool(value)


def _archi(value: Any) -> str:
    archi = str(value).strip().lower()
    if "c" in archi.partition("-")[2]:
        raise UserError(f"DFL option archi={value!r}: the -c (cosine activation) option is not supported")
    return archi


def config_from_options(options: Mapping[str, Any], model_class: str) -> ml_collections.ConfigDict:
    """Our resolved config for a DFL model of `model_class` ("SAEHD" or "Quick96") with `options`."""
    opts = {str(k): _plain(v) for k, v in options.items()}
    if model_class == "Quick96":
        cfg = quick96.get_config("")
        known = set(MODEL_FIELDS)
    else:
        cfg = saehd.get_config(_archi(opts.get("archi", "liae-ud")))
        known = {"archi", "face_type", "adabelief", "lr_dropout", "target_iter", "pretrain",
                 "models_opt_on_gpu", *MODEL_FIELDS, *TRAIN_FIELDS, *UI_ONLY}
        if "face_type" in opts:
            face_type = str(opts["face_type"]).lower()
            if face_type not in FACE_TYPES:
                raise UserError(f"DFL option face_type={opts['face_type']!r}: expected one of "
                                f"{', '.join(FACE_TYPES)}")
            cfg.model.face_type = FACE_TYPES[face_type]
        if "adabelief" in opts:
            cfg.train.optimizer = "adabelief" if _as_bool("adabelief", opts["adabelief"]) else "rmsprop"
        if "lr_dropout" in opts:
            cfg.train.lr_dropout = _as_bool("lr_dropout", opts["lr_dropout"])
        if "models_opt_on_gpu" in opts:
            cfg.train.opt_on_host = not _as_bool("models_opt_on_gpu", opts["models_opt_on_gpu"])
        if "target_iter" in opts:
            cfg.train.max_steps = int(opts["target_iter"])
        if _as_bool("pretrain", opts.get("pretrain", False)):
            log.warning("the DFL model is in pretrain mode: it is imported as a normal model and "
                        "trains without DFL's pretrain settings")
        for name in TRAIN_FIELDS:
            if name in opts:
                default = cfg.train[name]
                value = _as_bool(name, opts[name]) if isinstance(default, bool) else type(default)(opts[name])
                cfg.train[name] = value
        if cfg.train.ct_mode not in CT_MODES:
            raise UserError(f"DFL option ct_mode={cfg.train.ct_mode!r}: expected one of {', '.join(CT_MODES)}")
    for name in MODEL_FIELDS:
        if name in opts:
            cfg.model[name] = int(opts[name])
    unknown = sorted(set(opts) - known)
    if unknown:
        log.warning("DFL options without a counterpart here, ignored: %s", ", ".join(unknown))
    return cfg


def options_from_config(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """DFL's options dict for our config (what `config_from_options` reads back to the same model
    and training settings)."""
    model, train = cfg.model, cfg.train
    opts: dict[str, Any] = {name: int(model[name]) for name in MODEL_FIELDS}
    if cfg.name == "quick96":
        return opts
    short = {ours: theirs for theirs, ours in FACE_TYPES.items()}
    opts.update(archi=str(model.archi), face_type=short[model.face_type],
                adabelief=train.optimizer == "adabelief", lr_dropout="y" if train.lr_dropout else "n",
                target_iter=int(train.max_steps), pretrain=False, autobackup_hour=0,
                write_preview_history=False, models_opt_on_gpu=not train.opt_on_host)
    opts.update({name: train[name] for name in TRAIN_FIELDS})
    return opts
