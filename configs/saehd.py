"""SAEHD training config: `--config=configs/saehd.py:ARG`.

ARG is an architecture string (`liae-ud`, `df`, `df-udt`, … : `df` or `liae`, optionally `-` and
any of `u`, `d`, `t`), or a preset: `tiny` (liae-ud at 32 px with a few dims: trains in seconds on a
CPU, for tests and the demo), `tiny-df` (the same for df-ud). Defaults follow DFL_SPEC §3.2;
override any field on the command line, e.g. `--config.model.resolution=256`.
"""
from __future__ import annotations

import ml_collections

def model_config(archi: str = "liae-ud") -> ml_collections.ConfigDict:
    """The network's shape: changing any of these makes a different model."""
    return ml_collections.ConfigDict({
        "archi": archi,  # df|liae + optional -u/-d/-t
        "resolution": 128,  # multiple of 16 (32 with -d)
        "face_type": "full",  # half|mid_full|full|whole_face|head
        "ae_dims": 256,
        "e_dims": 64,
        "d_dims": 64,
        "d_mask_dims": 22,  # DFL default: d_dims // 3 rounded up to even
    })


def get_config(arg: str = "liae-ud") -> ml_collections.ConfigDict:
    preset = arg.strip().lower() or "liae-ud"
    archi = {"tiny": "liae-ud", "tiny-df": "df-ud"}.get(preset, preset)
    cfg = ml_collections.ConfigDict()
    cfg.name = "saehd"
    cfg.seed = 0
    cfg.model = model_config(archi)
    cfg.train = ml_collections.ConfigDict({
        "batch_size": 8,  # global batch (src and dst each); split over the data axis
        "micro_batches": 1,  # gradient accumulation steps per update
        "optimizer": "adabelief",  # adabelief|rmsprop (DFL's numerics)
        "lr": 5e-5,
        "lr_dropout": False,  # keep 0.3 per element + 500-step cosine (DFL)
        "clipgrad": False,  # global-norm clip at 1.0
        "masked_training": True,
        "eyes_mouth_prio": False,
        "blur_out_mask": False,
        "uniform_yaw": False,
        "random_warp": True,
        "random_src_flip": False,
        "random_dst_flip": True,
        "random_hsv_power": 0.0,
        "ct_mode": "none",  # none|rct|lct|mkl|idt|sot: recolour src samples toward dst samples
        # DFL's late-stage losses (DFL_SPEC §3.2, §3.4); 0 = off, and the step is the plain one.
        "gan_power": 0.0,  # 0..5 (DFL suggests 0.1): UNet patch GAN on the src reconstruction
        "gan_patch_size": 0,  # 3..640, 0 = res//8; changing it re-initialises the discriminator
        "gan_dims": 16,  # 4..512, the discriminator's base width
        "true_face_power": 0.0,  # 0..1 (DFL suggests 0.01), df archis only: code discriminator
        "face_style_power": 0.0,  # 0..100: swap's face colours toward dst's
        "bg_style_power": 0.0,  # 0..100: swap's background toward dst's (DFL's wrong-mask bug fixed: engine/losses.py)
        # Pretraining on one varied faceset (--pretrain_faceset); forces some options, and switching it
        # off re-initialises the inters and restarts at step 0: engine/pretrain.py.
        "pretrain": False,
        "max_steps": 0,  # 0 = until stopped
        "max_minutes": 0.0,
        "compute_dtype": "auto",  # auto (bf16 on GPU/TPU, fp32 on CPU)|float32|bfloat16
        "nan_patience": 10,  # consecutive non-finite steps before rolling back
        "device_memory_mb": 0,  # 0 = ask the device; else the budget the compiled step must fit
        # Memory savers (engine/memory_savers.py, engine/grad_reduce.py; BUILD.md "Memory savers").
        "remat": "none",  # none|dots|full, optionally ":component,..." (e.g. full:decoder)
        "opt_on_host": False,  # optimiser state in host memory between steps (DFL's models_opt_on_gpu=False)
        "grad_allreduce_dtype": "float32",  # float32|bfloat16: dtype of the data-parallel gradient mean
    })
    cfg.data = ml_collections.ConfigDict({
        "device_budget_mb": 2048,  # facesets smaller than this live on the devices
        "prefetch": 2,
        "validation_fraction": 0.02,
    })
    cfg.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})  # -1 = all remaining devices
    cfg.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "every_minutes": 25.0, "keep": 3})
    cfg.log = ml_collections.ConfigDict({"every_steps": 50, "preview_every_steps": 500})
    if preset.startswith("tiny"):
        cfg.model.update(resolution=32, ae_dims=32, e_dims=16, d_dims=16, d_mask_dims=8)
        cfg.train.batch_size = 4
        cfg.checkpoint.every_steps = 50
        cfg.log.update(every_steps=10, preview_every_steps=50)
    return cfg
