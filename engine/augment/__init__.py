"""Training-sample augmentation on the device (DFL_SPEC §3.6), jittable and sharding-friendly.

Modules: `resample` (OpenCV-exact bicubic/bilinear sampling), `geometry` (affine matrices and the
random affine jitter), `warp` (DFL's elastic random warp), `color` (HSV jitter), `pipeline` (the
per-batch entry point). Colour transfer lives in `engine.color_transfer` (shared with merging).
"""
from engine.augment.pipeline import augment_batch, sample_keys

__all__ = ["augment_batch", "sample_keys"]
