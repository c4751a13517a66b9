"""DFL's random HSV jitter of the src input (`random_hsv_power`, DFL_SPEC §3.6).

Conversions follow OpenCV's float HSV (`cv2.COLOR_RGB2HSV` on float32): H in degrees [0, 360),
S and V in [0, 1].
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def rgb_to_hsv(rgb: jnp.ndarray) -> jnp.ndarray:
    """RGB [..., 3] in [0, 1] -> HSV [..., 3] (H degrees, S, V in [0, 1]); grey pixels get H = S = 0."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    chroma = value - jnp.min(rgb, axis=-1)
    safe = jnp.where(chroma > 0, chroma, 1.0)
    hue = jnp.where(
        value == r, 60.0 * (g - b) / safe,
        jnp.where(value == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe),
    )
    hue = jnp.where(chroma > 0, jnp.mod(hue, 360.0), 0.0)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jnp.ndarray) -> jnp.ndarray:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = hue / 60.0
    # Each channel is V - V*S*clip(min(k, 4 - k), 0, 1) with k = (n + H/60) mod 6, n = 5, 3, 1.
    def channel(n):
        k = jnp.mod(n + sector, 6.0)
        return value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

    return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


class HsvJitter(NamedTuple):
    """One sample's HSV shift."""

    hue_deg: jnp.ndarray  # integer-valued hue shift in degrees
    saturation: jnp.ndarray  # added to S
    value: jnp.ndarray  # added to V


def random_hsv_jitter(key: jax.Array, power: float) -> HsvJitter:
    """DFL's draw: hue shift an integer in [-h, h] degrees with h = max(1, int(180*power)), S and V
    each shifted by U[-power/2, power/2]."""
    h = max(1, int(180 * power))
    u = jax.random.uniform(key, (3,), jnp.float32)
    return HsvJitter(
        hue_deg=jnp.minimum(jnp.floor(u[0] * (2 * h + 1)), 2 * h) - h,
        saturation=(u[1] - 0.5) * power,
        value=(u[2] - 0.5) * power,
    )


def apply_hsv_jitter(rgb: jnp.ndarray, jitter: HsvJitter) -> jnp.ndarray:
    """Shifts hue (wrapping), S and V (clipped to [0, 1]) of an RGB image in [0, 1]."""
    hsv = rgb_to_hsv(rgb)
    hsv = jnp.stack([
        jnp.mod(hsv[..., 0] + jitter.hue_deg, 360.0),
        jnp.clip(hsv[..., 1] + jitter.saturation, 0.0, 1.0),
        jnp.clip(hsv[..., 2] + jitter.value, 0.0, 1.0),
    ], axis=-1)
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)
