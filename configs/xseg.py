"""XSeg training config: `--config=configs/xseg.py[:tiny]` (DFL_SPEC §2.3).

"" is DFL's XSeg: 256 px, base 32, whole_face, batch 4, RMSprop lr 1e-4 with lr_dropout 0.3 (no
cosine). "tiny" is 64 px, base 8, batch 8 at lr 1e-3: trains in about a minute on a CPU, for tests.
`pseudo_labels` = "mesh" trains on every face's landmark/FaceMesh `masks` (labelled faces keep
their `xseg_labels`): the bootstrap when no labels and no pretrained weights exist.
"""
from __future__ import annotations

import ml_collections

PSEUDO_LABELS = ("none", "mesh")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    preset = arg.strip().lower()
    if preset not in ("", "tiny"):
        raise ValueError(f"unknown xseg preset {arg!r}; choose '' (DFL) or 'tiny'")
    cfg = ml_collections.ConfigDict()
    cfg.name = "xseg"
    cfg.seed = 0
    cfg.pseudo_labels = "none"  # none|mesh
    cfg.model = ml_collections.ConfigDict({
        "resolution": 256,  # power of two, 8..256; levels = log2(resolution / 4)
        "base": 32,
        "face_type": "whole_face",  # half|mid_full|full|whole_face|head
    })
    cfg.train = ml_collections.ConfigDict({
        "batch_size": 4,
        "optimizer": "rmsprop",
        "lr": 1e-4,
        "lr_dropout": True,  # keep 0.3 per element
        "lr_cos": 0,  # XSeg has no cosine schedule
        "clipgrad": False,
        "max_steps": 0,  # 0 = until stopped
        "max_minutes": 0.0,
        "compute_dtype": "auto",  # auto (bf16 on GPU/TPU, fp32 on CPU)|float32|bfloat16
    })
    cfg.data = ml_collections.ConfigDict({"validation_fraction": 0.1})
    cfg.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    cfg.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "every_minutes": 25.0, "keep": 3})
    cfg.log = ml_collections.ConfigDict({"every_steps": 100, "preview_every_steps": 500})
    if preset == "tiny":
        cfg.model.update(resolution=64, base=8)
        cfg.train.update(batch_size=8, lr=1e-3, lr_dropout=False)
        cfg.checkpoint.every_steps = 100
        cfg.log.update(every_steps=25, preview_every_steps=100)
    return cfg
