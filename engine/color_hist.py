"""Per-channel histogram matching with DFL's threshold (DFL_SPEC §4.3 step 7.2, §4.6 hist-match).

Each channel is quantised to 256 levels. The source CDF is scaled to [0, threshold] and the
reference CDF to [0, 255]; each source level maps to the reference value at the same scaled
quantile, linear between the reference's occupied levels (NumPy's interp over them, clamped at
both ends). threshold 255 is exact histogram specification; lower values compress the source CDF,
pulling every level toward the reference's darker values. The threshold may be traced (a
per-face merge option), one value per image.

Masked (DFL's masked_hist_match): outside the mask (mask < 0.5, as in every masked mode here) both
images are set to white (1.0) before the histograms are built; the white pixels do count (as in
DFL). The map is then applied to every pixel of the original source: DFL applies it to the
whitened one, whose outside the caller's soft blend would show as a bright fringe.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LEVELS = 256


def _quantise(images: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(jnp.round(images * (LEVELS - 1)), 0, LEVELS - 1).astype(jnp.int32)


def _whiten(images: jnp.ndarray, mask: jnp.ndarray | None) -> jnp.ndarray:
    if mask is None:
        return images
    return jnp.where(mask.reshape(images.shape[:-1] + (1,)) >= 0.5, images, 1.0)


def _level_map(source_levels: jnp.ndarray, target_levels: jnp.ndarray, threshold: jnp.ndarray) -> jnp.ndarray:
    """The matched value of each of the 256 levels, for one channel's level samples [N] and [M]."""
    def histogram(levels):
        return jnp.zeros(LEVELS, jnp.float32).at[levels].add(1.0)

    target_counts = histogram(target_levels)
    quantiles = jnp.cumsum(histogram(source_levels)) / source_levels.shape[0] * threshold
    reference = jnp.cumsum(target_counts) / target_levels.shape[0] * (LEVELS - 1.0)
    occupied = target_counts > 0
    first, last = jnp.argmax(occupied), LEVELS - 1 - jnp.argmax(occupied[::-1])
    previous = jax.lax.cummax(jnp.where(occupied, jnp.arange(LEVELS), -1))  # last occupied level at or before
    upper = jnp.clip(jnp.searchsorted(reference, quantiles, side="left"), first, last)  # first reaching it
    lower = jnp.maximum(previous[jnp.maximum(upper - 1, 0)], first)
    span = reference[upper] - reference[lower]  # 0 only when clamped at the first occupied level
    fraction = jnp.where(span > 0, jnp.clip((quantiles - reference[lower]) / jnp.maximum(span, 1e-30), 0.0, 1.0), 1.0)
    return (lower + fraction * (upper - lower)) / (LEVELS - 1.0)


def hist_match(
    source: jnp.ndarray,
    target: jnp.ndarray,
    threshold: float | jnp.ndarray = 255.0,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Matches each channel's histogram of `source` [..., H, W, C] to `target`'s (pairwise over the
    leading dims); threshold: a number or one per image [...]. Returns float32 in [0, 1]."""
    batch = source.shape[:-3]
    size, channels = math.prod(batch), source.shape[-1]
    source = source.astype(jnp.float32)
    target = target.astype(jnp.float32)
    def flat_levels(images, mask):
        return _quantise(_whiten(images, mask)).reshape(size, -1, channels)
    thresholds = jnp.broadcast_to(jnp.asarray(threshold, jnp.float32), batch).reshape(size)
    per_channel = jax.vmap(_level_map, in_axes=(1, 1, None), out_axes=0)
    maps = jax.vmap(per_channel)(flat_levels(source, source_mask), flat_levels(target, target_mask), thresholds)
    levels = _quantise(source).reshape(size, -1, channels)
    out = jnp.take_along_axis(maps, jnp.swapaxes(levels, 1, 2), axis=2)
    return jnp.swapaxes(out, 1, 2).reshape(source.shape)
