"""Colour transfer between faces, as pure jittable batch functions (DFL_SPEC §4.6).

Shared by training (`ct_mode`: src samples recoloured toward dst samples) and the merge program
(the predicted face recoloured toward the dst face). Images are RGB float in [0, 1], [..., H, W, 3];
masks are [..., H, W, 1] (or [..., H, W]) floats where >= 0.5 means "inside".

rct (Reinhard et al. 2001): in CIE L*a*b*, shift and scale each channel so its mean and standard
deviation match the reference's; clip L to [0, 100] and a, b to [-127, 127]; back to RGB, clip
to [0, 1]. Lab is OpenCV's float Lab (`cv2.COLOR_RGB2Lab` on float32: sRGB gamma, D65 white).

Deliberate fix of DFL's quirk: with masks, DFL zeroes the pixels outside the mask but still counts
them in the mean and deviation, so the statistics depend on how much background the crop holds.
Here only pixels inside the mask are counted. The transfer itself is applied to every pixel; the
caller blends with its mask. An empty mask counts every pixel.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

# OpenCV's sRGB (D65) <-> XYZ matrices and white point, as documented for cv2.cvtColor. NumPy
# constants: creating JAX arrays at import would start JAX's backend before jax.distributed.initialize.
_RGB_TO_XYZ = np.array([
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
], np.float32)
_XYZ_TO_RGB = np.array([
    [3.240479, -1.53715, -0.498535],
    [-0.969256, 1.875991, 0.041556],
    [0.055648, -0.204043, 1.057311],
], np.float32)
_WHITE = np.array([0.950456, 1.0, 1.088754], np.float32)
_EPSILON = 0.008856  # (6/29)^3: where the cube root meets the linear segment
_KAPPA = 903.3  # L of the linear segment: L = 903.3 * Y
_LINEAR_SLOPE = 7.787
_LINEAR_OFFSET = 16.0 / 116.0
_MIN_STD = 1e-3  # Lab units: a flat channel is not blown up to infinity
_LAB_LOW = np.array([0.0, -127.0, -127.0], np.float32)
_LAB_HIGH = np.array([100.0, 127.0, 127.0], np.float32)


def rgb_to_lab(rgb: jnp.ndarray) -> jnp.ndarray:
    """RGB [..., 3] in [0, 1] -> L*a*b* [..., 3] (L in [0, 100]), as OpenCV's float conversion."""
    rgb = rgb.astype(jnp.float32)
    linear = jnp.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = jnp.where(xyz > _EPSILON, jnp.cbrt(xyz), _LINEAR_SLOPE * xyz + _LINEAR_OFFSET)
    y = xyz[..., 1]
    lightness = jnp.where(y > _EPSILON, 116.0 * f[..., 1] - 16.0, _KAPPA * y)
    return jnp.stack([lightness, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: jnp.ndarray) -> jnp.ndarray:
    """Inverse of `rgb_to_lab`; out-of-gamut colours are clipped to [0, 1]."""
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    dark = lightness <= _KAPPA * _EPSILON
    y = jnp.where(dark, lightness / _KAPPA, ((lightness + 16.0) / 116.0) ** 3)
    fy = jnp.where(dark, _LINEAR_SLOPE * y + _LINEAR_OFFSET, (lightness + 16.0) / 116.0)
    fxz = jnp.stack([fy + a / 500.0, fy - b / 200.0], axis=-1)
    xz = jnp.where(fxz > _LINEAR_SLOPE * _EPSILON + _LINEAR_OFFSET, fxz**3, (fxz - _LINEAR_OFFSET) / _LINEAR_SLOPE)
    xyz = jnp.stack([xz[..., 0], y, xz[..., 1]], axis=-1) * _WHITE
    linear = jnp.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    return jnp.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1.0 / 2.4) - 0.055)


class LabMoments(NamedTuple):
    """Per-image channel statistics in Lab: each [..., 3]."""

    mean: jnp.ndarray
    std: jnp.ndarray


def rct_moments(images: jnp.ndarray, mask: jnp.ndarray | None = None) -> LabMoments:
    """Lab mean and (population) standard deviation of each image, over its pixels with
    mask >= 0.5 (all pixels without a mask, or where the mask is empty)."""
    lab = rgb_to_lab(images)
    if mask is None:
        weight = jnp.ones(lab.shape[:-1] + (1,), jnp.float32)
    else:
        weight = (mask.reshape(lab.shape[:-1] + (1,)) >= 0.5).astype(jnp.float32)
        empty = jnp.sum(weight, axis=(-3, -2, -1), keepdims=True) == 0
        weight = jnp.where(empty, 1.0, weight)
    count = jnp.sum(weight, axis=(-3, -2))
    mean = jnp.sum(lab * weight, axis=(-3, -2)) / count
    centred = lab - mean[..., None, None, :]
    variance = jnp.sum(centred * centred * weight, axis=(-3, -2)) / count
    return LabMoments(mean=mean, std=jnp.sqrt(variance))


def rct_apply(images: jnp.ndarray, source: LabMoments, target: LabMoments) -> jnp.ndarray:
    """Maps each image's Lab channels from `source` to `target` moments: (x - mu_s)*sd_t/sd_s + mu_t.

    Separate from `rct` so that several images (an augmented input and its target) can share the
    statistics of one of them.
    """
    def expand(v):
        return v[..., None, None, :]

    scale = target.std / jnp.maximum(source.std, _MIN_STD)
    lab = (rgb_to_lab(images) - expand(source.mean)) * expand(scale) + expand(target.mean)
    return jnp.clip(lab_to_rgb(jnp.clip(lab, _LAB_LOW, _LAB_HIGH)), 0.0, 1.0)


def rct(
    source_images: jnp.ndarray,
    target_images: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Recolours `source_images` toward the colour statistics of `target_images` (pairwise over
    the leading dims); the masks choose which pixels the statistics count. Returns float32 [..., H, W, 3]."""
    return rct_apply(source_images, rct_moments(source_images, source_mask), rct_moments(target_images, target_mask))
