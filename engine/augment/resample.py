"""Image sampling at arbitrary coordinates with OpenCV's kernels and border modes, in JAX.

`jax.scipy.ndimage.map_coordinates` stops at order 1 and `jax.image` only resizes, while DFL
samples with OpenCV's bicubic (Keys kernel, a = -0.75) and bilinear. These samplers reproduce
`cv2.remap` / `cv2.warpAffine` semantics:

* pixel centres sit at integer coordinates (no half-pixel offset, unlike cv2.resize);
* "replicate" clamps every tap to the nearest edge pixel; "constant" gives every tap that falls
  outside the image the value 0 (OpenCV's per-tap borderValue, not a per-output cut-off);
* coordinates are used exactly. (OpenCV 4 rounded them to 1/32 pixel; OpenCV 5's warpAffine and
  remap do not, and agree with these samplers to ~0.003 grey levels on float images.)

The result is float32 and is not clipped: bicubic overshoots at edges, callers clip.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.augment.geometry import invert_affine, transform_points

CUBIC_A = -0.75  # OpenCV's INTER_CUBIC coefficient (Keys' kernel parameter)
METHODS = ("cubic", "linear")
BORDERS = ("replicate", "constant")


def cubic_weights(t: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t in [0, 1).

    Keys' kernel k(d) = (a+2)|d|^3 - (a+3)|d|^2 + 1 for |d| <= 1 and
    a|d|^3 - 5a|d|^2 + 8a|d| - 4a for 1 < |d| < 2, evaluated at each tap's distance.
    """
    a = CUBIC_A

    def near(d):  # 0 <= d <= 1
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

    def far(d):  # 1 <= d <= 2
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

    return far(1.0 + t), near(t), near(1.0 - t), far(2.0 - t)


def sample(
    image: jnp.ndarray,
    x: jnp.ndarray,
    y: jnp.ndarray,
    *,
    method: str = "cubic",
    border: str = "replicate",
) -> jnp.ndarray:
    """Samples `image` [H, W, C] (any real dtype) at points (x, y) of any equal shape S.

    Returns float32 [*S, C] in the image's units (uint8 input gives 0..255 values). Works under
    jit and vmap; the taps are gathers from the flattened image, one per kernel tap, so no
    [*S, taps, C] intermediate is built.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    height, width, channels = image.shape
    flat = jnp.asarray(image).reshape(height * width, channels)
    # Beyond 2 px outside the image every tap is an edge pixel (replicate) or 0 (constant), so
    # clamping there changes nothing and keeps the integer conversion safe for wild coordinates.
    x = jnp.clip(x.astype(jnp.float32), -3.0, width + 2.0)
    y = jnp.clip(y.astype(jnp.float32), -3.0, height + 2.0)
    # Materialise the coordinates once. Otherwise XLA may recompute them inside the fusion that
    # makes the tap indices and again inside the one that makes the weights, rounded differently
    # (FMA contraction), and a coordinate a hair below an integer then gets the index of one
    # side and the fraction of the other: a one-pixel jump.
    x, y = jax.lax.optimization_barrier((x, y))
    x0, y0 = jnp.floor(x), jnp.floor(y)
    if method == "cubic":
        offsets, wx, wy = (-1, 0, 1, 2), cubic_weights(x - x0), cubic_weights(y - y0)
    else:
        offsets, wx, wy = (0, 1), (1.0 - (x - x0), x - x0), (1.0 - (y - y0), y - y0)
    ix, iy = x0.astype(jnp.int32), y0.astype(jnp.int32)

    out = jnp.zeros((*x.shape, channels), jnp.float32)
    for row_weight, dy in zip(wy, offsets):
        ty = iy + dy
        for col_weight, dx in zip(wx, offsets):
            tx = ix + dx
            weight = row_weight * col_weight
            if border == "constant":
                inside = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
                weight = jnp.where(inside, weight, 0.0)
            index = jnp.clip(ty, 0, height - 1) * width + jnp.clip(tx, 0, width - 1)
            taps = flat.at[index].get(mode="promise_in_bounds").astype(jnp.float32)
            out = out + weight[..., None] * taps
    return out


def pixel_grid(height: int, width: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(x, y) float32 [height, width] coordinates of every output pixel centre."""
    y, x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    return x, y


def remap(image: jnp.ndarray, map_x: jnp.ndarray, map_y: jnp.ndarray, *, method: str = "cubic",
          border: str = "constant") -> jnp.ndarray:
    """`cv2.remap(image, map_x, map_y)`: output[i, j] = image at (map_x[i, j], map_y[i, j])."""
    return sample(image, map_x, map_y, method=method, border=border)


def warp_affine(image: jnp.ndarray, matrix: jnp.ndarray, size: tuple[int, int], *, method: str = "cubic",
                border: str = "replicate", inverse_map: bool = False) -> jnp.ndarray:
    """`cv2.warpAffine(image, matrix, size=(width, height))`: `matrix` maps input to output pixels.

    With `inverse_map` (OpenCV's WARP_INVERSE_MAP) it maps output pixels to input pixels instead.
    """
    width, height = size
    to_input = matrix if inverse_map else invert_affine(matrix)
    x, y = transform_points(to_input, *pixel_grid(height, width))
    return sample(image, x, y, method=method, border=border)
