"""Merge config: `--config=configs/merge.py:MODE` (overlay, seamless, hist-match, seamless-hist-match,
raw-rgb, raw-predict, original); override any field, e.g. `--config.color_transfer=lct --config.erode=20`.

Defaults are DFL's interactive merger defaults (DFL_SPEC §4.2): learned-prd*learned-dst mask, rct
colour transfer, masked histogram match at threshold 238. Ranges are checked by
`engine.merge.options.validate`; a keyframe file (`--keyframes`) overrides any option per frame range.
"""
from __future__ import annotations

import ml_collections

from engine.merge.options import MODES


def get_config(arg: str = "overlay") -> ml_collections.ConfigDict:
    mode = arg.strip().lower() or "overlay"
    if mode not in MODES:
        raise ValueError(f"configs/merge.py:{arg}: mode must be one of {', '.join(MODES)}")
    return ml_collections.ConfigDict({
        # what the merge does to each face (engine/merge/options.py)
        "mode": mode,
        # full|dst|learned-prd|learned-dst|learned-prd*learned-dst|learned-prd+learned-dst, and with --xseg:
        # xseg-prd|xseg-dst|xseg-prd*xseg-dst|learned-prd*learned-dst*xseg-prd*xseg-dst
        "mask_mode": "learned-prd*learned-dst",
        "color_transfer": "rct",  # none|rct|lct|mkl|mkl-m|idt|idt-m|sot|sot-m|mix-m
        "masked_hist_match": True,
        "hist_match_threshold": 238,  # 0..255 (hist-match modes)
        "erode": 0,  # -400..400, pixels of a 4x model-resolution face; < 0 dilates
        "blur": 0,  # 0..400, same units
        "motion_blur_power": 0,  # 0..100, from the face's motion between neighbour frames
        "output_face_scale": 0,  # -50..50 percent; > 0 pastes the face larger
        "sharpen_mode": "none",  # none|box|gaussian
        "blursharpen_amount": 0,  # -100..100; < 0 blurs
        "image_denoise_power": 0,  # 0..500, the frame around the face
        "bicubic_degrade_power": 0,  # 0..100, the frame around the face
        "color_degrade_power": 0,  # 0..100, the whole output
        "super_resolution_power": 0,  # extension point: no enhancer ships, must stay 0
        "interpolation": "cubic",  # cubic (DFL) | linear: warping the face back
        # how the program runs
        "batch_size": 8,  # faces per device call
        "chunk_frames": 32,  # frames read ahead and merged together
        "compute_dtype": "auto",  # auto (bf16 on GPU/TPU) | float32 | bfloat16
        "smooth_landmarks": False,  # One-Euro smoothing of the dst landmarks over time
        "step": 0,  # checkpoint step to merge with; 0 = newest
        "crf": 18,  # H.264 quality (0 = lossless libx264rgb)
        "seed": 0,  # random streams of idt/sot colour transfers
        "watermark": True,  # invisible tool/model watermark in frames with a swapped face (engine.provenance)
    })
