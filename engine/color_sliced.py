"""Colour transfers by 1-D distribution matching along random directions (DFL_SPEC §4.6 idt, sot).

Both work on the RGB pixels of the recoloured image x and the reference y as point clouds. Each
keyed function draws its random rotations or directions (one set per image of the batch) and calls
its `*_with_*` twin, which takes them as arrays so tests can feed the same draws to a reference.

idt (Pitié's iterative distribution transfer): each iteration rotates both clouds, matches x's
1-D distribution to y's along each rotated axis by histogram specification, and moves x by
`relaxation` times the change, rotated back. Reading of the spec: histograms have `bins` bins over
the joint range of both projections and define piecewise-linear CDFs (linear inside each bin); the
1-D map is F_y^-1(F_x(v)), F_y^-1(q) the smallest v in y's occupied bins with F_y(v) >= q. The
result is clipped to [0, 1] once, after the last iteration.

sot (sliced optimal transport): each step projects both clouds on `batch` random unit directions,
gives every pixel of x the reference value of the same rank (sorted target minus sorted source,
along the direction) and moves x by the average over the directions. The displacement field of
all steps is then smoothed with a bilateral filter and added to x, which is clipped to [0, 1].
Reading of sigma_color = 5: DFL runs sot on [0, 1] images (training, sot-m) and on 0..255 ones
(mix-m) with the same number, so here it is in the units of the images passed in. On [0, 1] images
colour displacements are far below 5, the range term is ~1 and the filter is in effect a Gaussian
of sigma 16 px over a radius of 24 px; mix-m passes 5/255 to keep DFL's 0..255 behaviour.

Masks: DFL's -m modes multiply the images by the binary mask, so the black outside pixels take
part in the histograms and the sorts. Here only pixels with mask >= 0.5 (every pixel when there
is no mask or it is empty) make the statistics: idt weights its histograms (and its joint range)
by the mask; sot sorts the in-mask pixels only (static shapes: outside pixels sort after them as
+inf) and reads the reference as a quantile function, linear between the in-mask sorted values,
at the rank quantile (rank + 0.5) / n of each in-mask source pixel; an outside source pixel takes
the fraction of in-mask source pixels below it. With no masks and equal pixel counts this is
exactly "sorted target minus sorted source". The transfer is applied to every pixel.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from engine.bilateral import bilateral_filter
from engine.color_linear import matmul, pixel_weights

IDT_ITERATIONS = 20
IDT_BINS = 256
IDT_RELAXATION = 1.0 / 20.0
SOT_STEPS = 10
SOT_SIGMA_COLOR = 5.0
SOT_SIGMA_SPACE = 16.0


def random_rotations(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
    """Uniformly distributed 3-D rotations [*shape, 3, 3] (from normalised Gaussian quaternions)."""
    q = jax.random.normal(key, shape + (4,), jnp.float32)
    w, x, y, z = jnp.moveaxis(q / jnp.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def random_directions(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
    """Uniformly distributed unit vectors [*shape, 3]."""
    v = jax.random.normal(key, shape + (3,), jnp.float32)
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def _per_image(fn, source, target, source_mask, target_mask, draws):
    """Runs fn(x [N,3], y [M,3], wx [N], wy [M], draws [a,b,c]) on each image pair (draws [..., a, b, c]
    broadcast over the images' leading dims); returns x's new pixels as [..., H, W, 3]."""
    batch = source.shape[:-3]
    size = math.prod(batch)
    def flat(images):
        return images.astype(jnp.float32).reshape((size, -1, 3))
    wx = pixel_weights(source_mask, source.shape).reshape(size, -1)
    wy = pixel_weights(target_mask, target.shape).reshape(size, -1)
    draws = jnp.broadcast_to(draws, batch + draws.shape[-3:])
    out = jax.vmap(fn)(flat(source), flat(target), wx, wy, draws.reshape((size,) + draws.shape[len(batch):]))
    return out.reshape(source.shape)


# ---------------------------------------------------------------------------------------------- idt
def _histogram_map(px, py, wx, wy, bins):
    """F_y^-1(F_x(px)) for 1-D samples px [N], py [M] with weights, via `bins`-bin piecewise-linear CDFs."""
    low = jnp.minimum(jnp.min(jnp.where(wx > 0, px, jnp.inf)), jnp.min(jnp.where(wy > 0, py, jnp.inf)))
    high = jnp.maximum(jnp.max(jnp.where(wx > 0, px, -jnp.inf)), jnp.max(jnp.where(wy > 0, py, -jnp.inf)))
    width = jnp.maximum((high - low) / bins, 1e-12)

    def density(p, w):
        index = jnp.clip(jnp.floor((p - low) / width), 0, bins - 1).astype(jnp.int32)
        counts = jnp.zeros(bins, jnp.float32).at[index].add(w)
        total = jnp.cumsum(counts)  # whole numbers, so the CDF reaches exactly 1 at the last occupied bin
        return index, counts / total[-1], (total - counts) / total[-1], total / total[-1]

    index_x, mass_x, left_x, _ = density(px, wx)
    _, mass_y, left_y, right_y = density(py, wy)
    quantile = left_x[index_x] + jnp.clip((px - low) / width - index_x, 0.0, 1.0) * mass_x[index_x]
    # The first bin whose CDF reaches the quantile (an occupied one: quantile 0 goes to the left edge
    # of y's first occupied bin, not to the joint range's low end).
    k = jnp.clip(jnp.searchsorted(right_y, quantile, side="left"), jnp.argmax(mass_y > 0), bins - 1)
    fraction = (quantile - left_y[k]) / jnp.maximum(mass_y[k], 1e-30)  # k is empty only past the end
    return low + (k + jnp.clip(fraction, 0.0, 1.0)) * width


def _idt_image(x, y, wx, wy, rotations, *, bins, relaxation):
    def iteration(x, rotation):
        px, py = matmul(x, rotation.T), matmul(y, rotation.T)
        mapped = jax.vmap(_histogram_map, in_axes=(1, 1, None, None, None), out_axes=1)(px, py, wx, wy, bins)
        return x + relaxation * matmul(mapped - px, rotation), None

    x, _ = jax.lax.scan(iteration, x, rotations)
    return jnp.clip(x, 0.0, 1.0)


def idt_with_rotations(
    source: jnp.ndarray,
    target: jnp.ndarray,
    rotations: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
    *,
    bins: int = IDT_BINS,
    relaxation: float = IDT_RELAXATION,
) -> jnp.ndarray:
    """idt of `source` [..., H, W, 3] toward `target` with the given rotations [..., iterations, 3, 3]
    (leading dims broadcast against the images')."""
    def fn(x, y, wx, wy, r):
        return _idt_image(x, y, wx, wy, r, bins=bins, relaxation=relaxation)
    return _per_image(fn, source, target, source_mask, target_mask, rotations)


def idt(
    key: jax.Array,
    source: jnp.ndarray,
    target: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
    *,
    iterations: int = IDT_ITERATIONS,
    bins: int = IDT_BINS,
    relaxation: float = IDT_RELAXATION,
) -> jnp.ndarray:
    """Iterative distribution transfer (Pitié) with fresh random rotations per image; idt-m with masks."""
    rotations = random_rotations(key, source.shape[:-3] + (iterations,))
    return idt_with_rotations(source, target, rotations, source_mask, target_mask, bins=bins, relaxation=relaxation)


# ---------------------------------------------------------------------------------------------- sot
def _rank_positions(px, wx, ratio):
    """Where each source pixel's rank quantile falls in the reference's in-mask sorted values
    (fractional index): ((in-mask pixels sorted before it) + w/2) * n_y / n_x - 1/2. px [D, N]."""
    order = jnp.argsort(px, axis=-1)
    w_sorted = wx[order]
    positions = (jnp.cumsum(w_sorted, axis=-1) - 0.5 * w_sorted) * ratio - 0.5
    return jnp.zeros_like(px).at[jnp.arange(px.shape[0])[:, None], order].set(positions)


def _quantile_values(py, wy, positions):
    """The reference's in-mask sorted projections py [D, M], read at fractional positions [D, N]."""
    count = jnp.sum(wy > 0).astype(jnp.int32)
    ordered = jnp.sort(jnp.where(wy > 0, py, jnp.inf), axis=-1)
    positions = jnp.clip(positions, 0.0, (count - 1).astype(jnp.float32))
    lower = jnp.floor(positions).astype(jnp.int32)
    upper = jnp.minimum(lower + 1, count - 1)
    fraction = positions - lower
    return (jnp.take_along_axis(ordered, lower, axis=-1) * (1.0 - fraction)
            + jnp.take_along_axis(ordered, upper, axis=-1) * fraction)


def _sot_image(x, y, wx, wy, directions):
    ratio = jnp.sum(wy) / jnp.sum(wx)

    def step(x, step_directions):  # projections are [directions, pixels]: sorts run along the last axis
        px, py = matmul(step_directions, x.T), matmul(step_directions, y.T)
        mapped = _quantile_values(py, wy, _rank_positions(px, wx, ratio))
        return x + matmul((mapped - px).T, step_directions) / step_directions.shape[0], None

    moved, _ = jax.lax.scan(step, x, directions)
    return moved


def sot_with_directions(
    source: jnp.ndarray,
    target: jnp.ndarray,
    directions: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
    *,
    sigma_color: float = SOT_SIGMA_COLOR,
    sigma_space: float = SOT_SIGMA_SPACE,
) -> jnp.ndarray:
    """sot of `source` [..., H, W, 3] toward `target` with the given unit directions
    [..., steps, batch, 3] (leading dims broadcast against the images')."""
    source = source.astype(jnp.float32)
    moved = _per_image(_sot_image, source, target, source_mask, target_mask, directions)
    displacement = bilateral_filter(moved - source, sigma_color, sigma_space)
    return jnp.clip(source + displacement, 0.0, 1.0)


def sot(
    key: jax.Array,
    source: jnp.ndarray,
    target: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
    *,
    steps: int = SOT_STEPS,
    batch: int = 5,
    sigma_color: float = SOT_SIGMA_COLOR,
    sigma_space: float = SOT_SIGMA_SPACE,
) -> jnp.ndarray:
    """Sliced optimal transport with `steps` x `batch` fresh random directions per image (training
    uses 10 x 5, the merger's sot-m 10 x 30 with masks), then the bilateral regularisation."""
    directions = random_directions(key, source.shape[:-3] + (steps, batch))
    return sot_with_directions(source, target, directions, source_mask, target_mask,
                               sigma_color=sigma_color, sigma_space=sigma_space)
