"""Colour transfer between faces, as pure jittable batch functions (DFL_SPEC §4.6): the public entry.

Shared by training (`ct_mode`: src samples recoloured toward dst samples) and the merge program
(the predicted face recoloured toward the dst face). Images are RGB float in [0, 1], [..., H, W, 3];
masks are [..., H, W, 1] (or [..., H, W]) floats where >= 0.5 means "inside". "source" is the image
being recoloured, "target" the reference; functions are pairwise over the leading dims.

`color_transfer(mode, ...)` dispatches DFL's modes (`MODES`; the mode is a static string). The
Lab-based ones live here: rct and mix-m; lct and mkl in `engine.color_linear`, idt and sot in
`engine.color_sliced`, hist-match in `engine.color_hist`.

rct (Reinhard et al. 2001): in CIE L*a*b*, shift and scale each channel so its mean and standard
deviation match the reference's; clip L to [0, 100] and a, b to [-127, 127]; back to RGB, clip
to [0, 1]. Lab is OpenCV's float Lab (`cv2.COLOR_RGB2Lab` on float32: sRGB gamma, D65 white).

mix-m: L is matched by lct on L alone; the chroma by sot (10 x 30 directions, as sot-m) on the
images re-rendered with L = 100, whose a, b are put back with the matched L. DFL does this on
uint8 Lab and runs sot on 0..255 values; here Lab stays float and sot runs on [0, 1] RGB with
sigma_color 5/255, the same filter.

Deliberate fix of DFL's quirk: with masks, DFL zeroes the pixels outside the mask but still counts
them in the statistics, so they depend on how much background the crop holds. Here only pixels
inside the mask are counted (every mode; see each module). The transfer itself is applied to every
pixel; the caller blends with its mask. An empty mask counts every pixel.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine.color_hist import hist_match
from engine.color_linear import lct, lct_map, matmul, mkl, pixel_weights
from engine.color_sliced import SOT_SIGMA_COLOR, SOT_STEPS, idt, idt_with_rotations, sot, sot_with_directions

__all__ = [
    "MODES", "LabMoments", "color_transfer", "hist_match", "idt", "idt_with_rotations", "lab_to_rgb", "lct",
    "mix_m", "mkl", "needs_key", "rct", "rct_apply", "rct_moments", "rgb_to_lab", "sot", "sot_with_directions",
]

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
    xyz = matmul(linear, _RGB_TO_XYZ.T) / _WHITE
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
    linear = jnp.clip(matmul(xyz, _XYZ_TO_RGB.T), 0.0, 1.0)
    return jnp.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1.0 / 2.4) - 0.055)


class LabMoments(NamedTuple):
    """Per-image channel statistics in Lab: each [..., 3]."""

    mean: jnp.ndarray
    std: jnp.ndarray


def rct_moments(images: jnp.ndarray, mask: jnp.ndarray | None = None) -> LabMoments:
    """Lab mean and (population) standard deviation of each image, over its pixels with
    mask >= 0.5 (all pixels without a mask, or where the mask is empty)."""
    lab = rgb_to_lab(images)
    weight = pixel_weights(mask, lab.shape)[..., None]
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


def mix_m(
    key: jax.Array,
    source: jnp.ndarray,
    target: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
    *,
    steps: int = SOT_STEPS,
    batch: int = 30,
) -> jnp.ndarray:
    """DFL's mix-m: lightness by lct on L, chroma by sot at L = 100 (see the module docstring)."""
    lab_x, lab_y = rgb_to_lab(source), rgb_to_lab(target)
    weights_x, weights_y = pixel_weights(source_mask, lab_x.shape), pixel_weights(target_mask, lab_y.shape)
    lightness = jnp.clip(lct_map(lab_x[..., :1], lab_y[..., :1], weights_x, weights_y), 0.0, 100.0)

    def at_full_lightness(lab):
        return lab_to_rgb(jnp.concatenate([jnp.full_like(lab[..., :1], 100.0), lab[..., 1:]], axis=-1))

    chroma = sot(key, at_full_lightness(lab_x), at_full_lightness(lab_y), source_mask, target_mask,
                 steps=steps, batch=batch, sigma_color=SOT_SIGMA_COLOR / 255.0)
    lab = jnp.concatenate([lightness, rgb_to_lab(chroma)[..., 1:]], axis=-1)
    return jnp.clip(lab_to_rgb(jnp.clip(lab, _LAB_LOW, _LAB_HIGH)), 0.0, 1.0)


# mode -> f(key, source, target, source_mask, target_mask). Unmasked modes drop the masks (rct uses
# them when given); sot draws DFL's training 10 x 5 directions, sot-m and mix-m the merger's 10 x 30.
_TRANSFERS: dict[str, Callable[..., jnp.ndarray]] = {
    "rct": lambda key, x, y, mx, my: rct(x, y, mx, my),
    "lct": lambda key, x, y, mx, my: lct(x, y),
    "mkl": lambda key, x, y, mx, my: mkl(x, y),
    "mkl-m": lambda key, x, y, mx, my: mkl(x, y, mx, my),
    "idt": lambda key, x, y, mx, my: idt(key, x, y),
    "idt-m": lambda key, x, y, mx, my: idt(key, x, y, mx, my),
    "sot": lambda key, x, y, mx, my: sot(key, x, y, batch=5),
    "sot-m": lambda key, x, y, mx, my: sot(key, x, y, mx, my, batch=30),
    "mix-m": lambda key, x, y, mx, my: mix_m(key, x, y, mx, my),
}
MODES = tuple(_TRANSFERS)  # DFL's merger modes in its menu order, plus training's sot
_RANDOM_MODES = frozenset({"idt", "idt-m", "sot", "sot-m", "mix-m"})


def _check_mode(mode: str) -> None:
    if mode not in _TRANSFERS:
        raise ValueError(f"unknown colour transfer mode {mode!r}; expected one of {', '.join(MODES)}")


def needs_key(mode: str) -> bool:
    """Whether `mode` draws random numbers (and so needs `key`)."""
    _check_mode(mode)
    return mode in _RANDOM_MODES


def color_transfer(
    mode: str,
    source: jnp.ndarray,
    target: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
    *,
    key: jax.Array | None = None,
) -> jnp.ndarray:
    """Recolours `source` [..., H, W, 3] toward `target` with DFL colour transfer `mode` (static).

    "-m" modes require both masks; modes for which `needs_key` is true require `key`.
    """
    _check_mode(mode)
    if mode.endswith("-m") and (source_mask is None or target_mask is None):
        raise ValueError(f"colour transfer mode {mode!r} needs source_mask and target_mask")
    if needs_key(mode) and key is None:
        raise ValueError(f"colour transfer mode {mode!r} is random and needs key")
    return _TRANSFERS[mode](key, source, target, source_mask, target_mask)
