"""Quick96 training config: `--config=configs/quick96.py` (DFL_SPEC §3.8).

DFL's fixed-settings model: df-ud at 96 px, full face, ae 128 / e 64 / d 64 / mask 16, batch 4,
RMSprop at lr 2e-4 with lr_dropout always on, masked training, random warp, no flips. The result
has the same structure as configs/saehd.py, so the same trainer runs it. ARG: empty for Quick96,
or `tiny` (the same network shape family at 32 px with a few dims, for tests on a CPU).

Quick96 also differs from SAEHD in training details the config does not spell out (its lr_dropout
has no cosine schedule, its loss weights and mask blur, a zoom of ±5% instead of ±15%, and every
third iteration a no-warp step on the previous batch); `name == "quick96"` tells the trainer which
recipe to follow (engine/train_step.py).
"""
from __future__ import annotations

import ml_collections

from configs import saehd


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    preset = arg.strip().lower()
    if preset not in ("", "tiny"):
        raise ValueError(f"configs/quick96.py:{arg}: unknown preset; use no argument or 'tiny'")
    cfg = saehd.get_config("tiny-df" if preset == "tiny" else "df-ud")
    cfg.name = "quick96"
    if not preset:
        cfg.model.update(resolution=96, face_type="full", ae_dims=128, e_dims=64, d_dims=64,
                         d_mask_dims=16)
    cfg.train.update(batch_size=4, optimizer="rmsprop", lr=2e-4, lr_dropout=True,
                     masked_training=True, random_warp=True, random_src_flip=False,
                     random_dst_flip=False)
    cfg.train.lr_cos = 0  # Quick96's lr_dropout runs without SAEHD's 500-step cosine
    return cfg
