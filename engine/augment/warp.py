"""DFL's elastic "random warp" (DFL_SPEC §3.6), as a displacement field evaluable anywhere.

DFL picks a cell size from {w/2, w/4, w/8}, lays a control grid of (w/cell + 1)^2 points on
0, cell, ..., w, moves every interior point by 0.24*cell*r per axis (r a standard normal
truncated to +-2.5, divided by 2.5), keeps the border points fixed, upsamples the grid to
(w + cell)^2 with OpenCV's bilinear resize and crops cell/2 on each side to get per-pixel remap
tables. Unrolling that resize, the table at pixel i reads i + 0.5 + D((i + 0.5)/cell), where D
interpolates the control-point displacements linearly. Here the map is that expression without
the + 0.5: DFL's warped input is shifted half a pixel against its target, which the network then
has to learn. Being a closed form, the map can also be evaluated between pixels, which the
composed one-resampling pipeline needs.

Shapes are static for jit: the displacement table is always 9x9 (the w/8 grid); coarser grids
use its top-left corner and leave the rest zero.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from engine.augment.resample import sample

CELL_DIVISORS = (2, 4, 8)  # cells per side: cell size w/2, w/4 or w/8
MAX_CELLS = max(CELL_DIVISORS)
JITTER = 0.24  # largest control-point move, in cells
TRUNCATE = 2.5  # the normal is truncated at +-2.5 sigma, then divided by 2.5


class ElasticWarp(NamedTuple):
    """One sample's elastic warp on a `width` x `width` image."""

    cell: jnp.ndarray  # cell size in pixels (float32)
    cells: jnp.ndarray  # cells per side, one of CELL_DIVISORS (int32)
    offsets: jnp.ndarray  # [9, 9, 2] control-point (dx, dy) in pixels, indexed [row, col]; 0 on the border


def random_elastic_warp(key: jax.Array, width: int) -> ElasticWarp:
    """Draws DFL's warp grid for a `width`-pixel image (DFL warps images narrower than 64 at 64)."""
    # One uniform draw: the first number picks the cell size, the rest become truncated normals by
    # the inverse CDF (what jax.random.truncated_normal does, minus a second PRNG call).
    u = jax.random.uniform(key, (1 + (MAX_CELLS + 1) ** 2 * 2,), jnp.float32)
    choice = jnp.minimum(jnp.floor(u[0] * len(CELL_DIVISORS)), len(CELL_DIVISORS) - 1).astype(jnp.int32)
    cells = jnp.array(CELL_DIVISORS, jnp.int32)[choice]
    cell = width / cells.astype(jnp.float32)
    low, high = ndtr(-TRUNCATE), ndtr(TRUNCATE)
    r = ndtri(low + u[1:] * (high - low)).reshape(MAX_CELLS + 1, MAX_CELLS + 1, 2) / TRUNCATE
    r = jnp.clip(r, -1.0, 1.0)  # float32 rounding at the tails
    index = jnp.arange(MAX_CELLS + 1)
    interior = (index >= 1) & (index < cells)
    moving = interior[:, None, None] & interior[None, :, None]
    return ElasticWarp(cell=cell, cells=cells, offsets=jnp.where(moving, JITTER * cell * r, 0.0))


def displacement(warp: ElasticWarp, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """The warp's (dx, dy) at pixel positions (x, y) of any equal shape: float32 [*shape, 2].

    Control point k sits at pixel position k*cell - 0.5 (the outer edge of the image for k = 0
    and k = cells); outside the image the displacement is 0, as on the fixed border.
    """
    cells = warp.cells.astype(jnp.float32)
    grid_x = jnp.clip((x + 0.5) / warp.cell, 0.0, cells)
    grid_y = jnp.clip((y + 0.5) / warp.cell, 0.0, cells)
    return sample(warp.offsets, grid_x, grid_y, method="linear", border="constant")


def elastic_map(warp: ElasticWarp, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Where the warped image at (x, y) samples its source: (x + dx, y + dy)."""
    d = displacement(warp, x, y)
    return x + d[..., 0], y + d[..., 1]
