"""2x3 affine matrices (OpenCV convention) and DFL's random affine jitter (DFL_SPEC §3.6).

Every matrix maps pixel coordinates of one image to pixel coordinates of another, pixel centres
at integers, as `cv2.warpAffine` reads it. The augmentation composes several of them into one
output-to-faceset map so each output is resampled once (see `pipeline`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp


def transform_points(matrix: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Applies a 2x3 affine to point coordinates (x, y) of any equal shape."""
    return (
        matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2],
        matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2],
    )


def invert_affine(matrix: jnp.ndarray) -> jnp.ndarray:
    """Inverse of a 2x3 affine (`cv2.invertAffineTransform`)."""
    a, b, c = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    d, e, f = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    det = a * e - b * d
    return jnp.stack([
        jnp.stack([e, -b, b * f - c * e]) / det,
        jnp.stack([-d, a, c * d - a * f]) / det,
    ])


def compose(outer: jnp.ndarray, inner: jnp.ndarray) -> jnp.ndarray:
    """The 2x3 affine that applies `inner` first, then `outer`."""
    linear = outer[:, :2] @ inner[:, :2]
    offset = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return jnp.concatenate([linear, offset[:, None]], axis=1)


def rotation_matrix(center: tuple[float, float], angle_deg: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """`cv2.getRotationMatrix2D`: counter-clockwise rotation (y down) and scale about `center`."""
    theta = jnp.deg2rad(angle_deg)
    alpha, beta = scale * jnp.cos(theta), scale * jnp.sin(theta)
    cx, cy = center
    return jnp.stack([
        jnp.stack([alpha, beta, (1.0 - alpha) * cx - beta * cy]),
        jnp.stack([-beta, alpha, beta * cx + (1.0 - alpha) * cy]),
    ])


def resize_matrix(from_size: int, to_size: int) -> jnp.ndarray:
    """The pixel map of `cv2.resize` between square images: centres are aligned at half pixels."""
    k = to_size / from_size
    return jnp.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5]], jnp.float32)


def flip_matrix(width: int) -> jnp.ndarray:
    """Horizontal mirror `img[:, ::-1]`: x -> width - 1 - x."""
    return jnp.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]], jnp.float32)


class AffineJitter(NamedTuple):
    """One sample's random affine (DFL's `gen_warp_params`, without the elastic part)."""

    angle_deg: jnp.ndarray  # rotation, counter-clockwise as cv2.getRotationMatrix2D
    scale: jnp.ndarray
    shift: jnp.ndarray  # [2] (tx, ty) as fractions of the image width
    flip: jnp.ndarray  # bool: mirror horizontally after the affine


def random_affine_jitter(
    key: jax.Array,
    *,
    rotation_range: Sequence[float] = (-10.0, 10.0),
    scale_range: Sequence[float] = (-0.15, 0.15),
    shift_range: Sequence[float] = (-0.05, 0.05),
    flip_prob: float = 0.0,
) -> AffineJitter:
    """Draws DFL's jitter: angle U[rotation_range], scale U[1/(1 - s0), 1 + s1] for
    scale_range (s0, s1) (so (-0.15, 0.15) gives U[0.870, 1.15], reciprocal end points),
    tx, ty U[shift_range], flip with probability flip_prob (DFL: 0.4 when enabled).
    """
    s0, s1 = scale_range
    low = jnp.array([rotation_range[0], 1.0 / (1.0 - s0), shift_range[0], shift_range[0]], jnp.float32)
    high = jnp.array([rotation_range[1], 1.0 + s1, shift_range[1], shift_range[1]], jnp.float32)
    # One draw for all five numbers: every PRNG call adds compile time to the train step.
    u = jax.random.uniform(key, (5,), jnp.float32)
    angle, scale, tx, ty = low + u[:4] * (high - low)
    return AffineJitter(angle_deg=angle, scale=scale, shift=jnp.stack([tx, ty]), flip=u[4] < flip_prob)


def jitter_matrix(jitter: AffineJitter, width: int) -> jnp.ndarray:
    """Forward 2x3 map of the jitter on a `width` x `width` image: rotate and scale about
    (width//2, width//2) as DFL does (an integer centre, half a pixel off the true one), shift by
    shift * width pixels, then mirror if `flip`."""
    centre = float(width // 2)
    affine = rotation_matrix((centre, centre), jitter.angle_deg, jitter.scale)
    affine = affine.at[:, 2].add(jitter.shift * width)
    return jnp.where(jitter.flip, compose(flip_matrix(width), affine), affine)
