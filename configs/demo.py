"""The `make demo` training run: a small liae-ud that trains on 2 CPU cores in a few minutes.

It is a pipeline smoke run, not a quality setting: 64 px full-face crops re-cut on the device from
the demo's 256 px whole-face facesets, narrow layers, a few hundred steps. The preview's
dst->dst column (self-reconstruction of the Carphone clip) is the visible check.
"""
from __future__ import annotations

import ml_collections

from configs import saehd


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    cfg = saehd.get_config("liae-ud")
    cfg.name = "demo"
    cfg.model.update(resolution=64, face_type="full", ae_dims=64, e_dims=16, d_dims=16, d_mask_dims=8)
    cfg.train.update(batch_size=8, max_steps=400, lr=2e-4)
    cfg.checkpoint.update(every_steps=200, keep=2)
    cfg.log.update(every_steps=25, preview_every_steps=100)
    return cfg
