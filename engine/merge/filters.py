"""DFL's merge image filters (DFL_SPEC §4.3 steps 7.5-7.6, §4.7) as batched, jittable JAX.

Sharpen/blur of the face, median denoise and bicubic degrade of the frame background, and colour
degrade of the output. The numeric strengths are traced (per-item arrays [B] or scalars), so
keyframed options never recompile; only the image shape and the sharpen mode are static. Images
are RGB float32 [..., H, W, 3]; like DFL, the filters do not clip (the merge composite does).
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from engine.augment.resample import cubic_weights

SHARPEN_MODES = (None, "box", "gaussian")
PALETTE_SIZE = 256  # PIL's adaptive palette size used by DFL
PALETTE_SAMPLES = 1 << 16  # pixels the palette is fitted on; a multiple of PALETTE_SIZE

Comparators = tuple[tuple[int, int], ...]


# --- 5x5 median: a comparator network, exact like cv2.medianBlur --------------------------------

def _batcher_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort on n (a power of 2) wires; (i, j) puts the min on i."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _prune(pairs: list[tuple[int, int]], inputs01: np.ndarray, outputs: list[int]) -> Comparators:
    """Keeps the comparators that can swap on some allowed input and feed an output.

    By the 0-1 principle, running the network on every allowed 0/1 input (ones = "large") shows
    which comparators ever swap; one that never swaps on those never swaps on real inputs with the
    same order constraints, so it is dropped. Comparators that feed no output are dropped too.
    """
    wires = inputs01.copy()
    swapping = []
    for i, j in pairs:
        low, high = wires[:, i] & wires[:, j], wires[:, i] | wires[:, j]
        if np.any(wires[:, i] & ~wires[:, j]):
            swapping.append((i, j))
        wires[:, i], wires[:, j] = low, high
    live, needed = set(outputs), []
    for i, j in reversed(swapping):
        if i in live or j in live:
            needed.append((i, j))
            live |= {i, j}
    return tuple(reversed(needed))


@functools.cache
def _median_networks() -> tuple[Comparators, Comparators]:
    """(sort of 5, median of 5 sorted columns of 5): 9 + 85 comparators.

    Each column of the 5x5 window is sorted once per pixel and shared by the 5 windows that
    contain it; the second network takes the 25 values column-major (rank within column fastest)
    plus 7 +inf pads and leaves the median on wire 12.
    """
    column_inputs = np.array([[*bits, 1, 1, 1] for bits in itertools.product([0, 1], repeat=5)], bool)
    sort5 = _prune(_batcher_network(8), column_inputs, list(range(5)))
    sorted_columns = [[r >= 5 - ones for r in range(5)] for ones in range(6)]
    window_inputs = np.array(
        [sum((sorted_columns[ones] for ones in counts), []) + [True] * 7
         for counts in itertools.product(range(6), repeat=5)], bool)
    median = _prune(_batcher_network(32), window_inputs, [12])
    return sort5, median


def _apply_network(network: Comparators, wires: list[jnp.ndarray | None]) -> list[jnp.ndarray | None]:
    """Runs compare-exchanges elementwise over arrays; None stands for a constant +inf wire."""
    wires = list(wires)
    for i, j in network:
        a, b = wires[i], wires[j]
        if b is None:
            continue
        wires[i], wires[j] = (b, None) if a is None else (jnp.minimum(a, b), jnp.maximum(a, b))
    return wires


def median5(image: jnp.ndarray) -> jnp.ndarray:
    """`cv2.medianBlur(image, 5)` on float images [..., H, W, C] (replicated border), exactly."""
    height, width = image.shape[-3:-1]
    sort5, median = _median_networks()
    padded = jnp.pad(image, [(0, 0)] * (image.ndim - 3) + [(2, 2), (2, 2), (0, 0)], mode="edge")
    ranks = _apply_network(sort5, [padded[..., dy:dy + height, :, :] for dy in range(5)])
    # Materialise the sorted columns: otherwise XLA recomputes them inside each of the 5 shifted
    # reads of the median fusion (3x slower on CPU).
    ranks = jax.lax.optimization_barrier(ranks)
    window = [ranks[r][..., dx:dx + width, :] for dx in range(5) for r in range(5)]
    return _apply_network(median, window + [None] * 7)[12]


# --- repeated median blending: DFL's blur and frame denoise -----------------------------------

def _per_item(value: ArrayLike, image: jnp.ndarray) -> jnp.ndarray:
    """A scalar or [B] option as float32 with the image's leading (batch) shape."""
    return jnp.broadcast_to(jnp.asarray(value, jnp.float32), image.shape[:-3])


def _median_passes(image: jnp.ndarray, power: jnp.ndarray, full_at: float) -> jnp.ndarray:
    """DFL's loop: while n > 0, take the 5x5 median, replace the image with it when n >= full_at
    or else blend it in with weight n/full_at (DFL's (n mod full_at)/full_at), then n -= 10.

    A while loop runs as many passes as the strongest item needs (none when all are 0); the
    others idle with weight 0, which leaves them bit-identical.
    """
    def body(state):
        img, n = state
        weight = jnp.clip(n / full_at, 0.0, 1.0)[..., None, None, None]
        return img * (1.0 - weight) + median5(img) * weight, jnp.maximum(n - 10.0, 0.0)

    out, _ = jax.lax.while_loop(lambda state: jnp.any(state[1] > 0), body, (image, power))
    return out


def _reflect101(image: jnp.ndarray) -> jnp.ndarray:
    """Pads H and W by 1 with OpenCV's default border (BORDER_REFLECT_101 = NumPy's 'reflect')."""
    return jnp.pad(image, [(0, 0)] * (image.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="reflect")


def _filter3x3(image: jnp.ndarray, weights_y: tuple[float, ...], weights_x: tuple[float, ...]) -> jnp.ndarray:
    """Separable 3x3 correlation with a reflect-101 border."""
    height, width = image.shape[-3:-1]
    padded = _reflect101(image)
    rows = sum(w * padded[..., dy:dy + height, :, :] for dy, w in enumerate(weights_y))
    return sum(w * rows[..., dx:dx + width, :] for dx, w in enumerate(weights_x))


def blur_sharpen(image: jnp.ndarray, mode: str | None, amount: ArrayLike) -> jnp.ndarray:
    """DFL's `blursharpen` (kernel 3) with blursharpen_amount a in [-100, 100] (§4.7).

    a > 0 sharpens: "box" filters with δ + a·(δ − box3x3) (a unscaled, so strong), "gaussian"
    gives (1 + a/2)·img − (a/2)·GaussianBlur3x3 (σ 0: OpenCV's fixed [1, 2, 1]/4 kernel), None
    leaves the image. a < 0 blurs in any mode: repeated 5x5 medians in steps of 10 (−100 = 10
    full passes). `mode` is static, `amount` traced (scalar or [B]).
    """
    if mode not in SHARPEN_MODES:
        raise ValueError(f"sharpen mode must be one of {SHARPEN_MODES}, got {mode!r}")
    amount = _per_item(amount, image)
    a = amount[..., None, None, None]
    if mode == "box":
        sharp = (1.0 + a) * image - (a / 9.0) * _filter3x3(image, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    elif mode == "gaussian":
        sharp = (1.0 + 0.5 * a) * image - (0.5 * a) * _filter3x3(image, (0.25, 0.5, 0.25), (0.25, 0.5, 0.25))
    else:
        sharp = image
    return _median_passes(jnp.where(a > 0, sharp, image), -amount, 10.0)


def denoise(image: jnp.ndarray, power: ArrayLike) -> jnp.ndarray:
    """DFL's frame denoise (image_denoise_power 0..500): the blur loop with 100 in place of 10,
    still stepping by 10, so 200 = 11 full median passes then blends 0.9, 0.8, ..., 0.1."""
    return _median_passes(image, _per_item(power, image), 100.0)


# --- bicubic degrade: a cv2.resize round trip through a traced size ----------------------------

def _resize_axis(image: jnp.ndarray, axis: int, src_len: jnp.ndarray, dst_len: jnp.ndarray) -> jnp.ndarray:
    """cv2.resize INTER_CUBIC along `axis` from the first `src_len` entries to `dst_len` entries.

    The axis keeps its static length: outputs past `dst_len` are junk that nothing reads. The
    source coordinate (d + 1/2)·src/dst − 1/2 is split into integer and fraction exactly in
    integer arithmetic, and taps clamp to [0, src_len − 1] (OpenCV's replicated edge).
    """
    out = jnp.arange(image.shape[axis], dtype=jnp.int32)
    numerator = (2 * out + 1) * src_len - dst_len
    start = jnp.floor_divide(numerator, 2 * dst_len)
    frac = (numerator - start * 2 * dst_len).astype(jnp.float32) / (2 * dst_len).astype(jnp.float32)
    shape = [1] * image.ndim
    shape[axis] = -1
    result = 0.0
    for offset, weight in zip((-1, 0, 1, 2), cubic_weights(frac)):
        taps = jnp.take(image, jnp.clip(start + offset, 0, src_len - 1), axis=axis)
        result = result + weight.reshape(shape) * taps
    return result


def _bicubic_round_trip(image: jnp.ndarray, power: jnp.ndarray) -> jnp.ndarray:
    height, width = image.shape[:2]
    # DFL: int(size · (1 − p/101)); as size·(101 − p)//101 it is exact in float32 for integer p.
    # A size of 0 (p near 100 on a < 101 px image) would make OpenCV fail; it is held at 1.
    small_h, small_w = (jnp.maximum(jnp.floor(size * (101.0 - power) / 101.0), 1.0).astype(jnp.int32)
                        for size in (height, width))
    full_h, full_w = jnp.int32(height), jnp.int32(width)
    # OpenCV resizes horizontally first, then vertically; in floats the order barely matters.
    small = _resize_axis(_resize_axis(image, 1, full_w, small_w), 0, full_h, small_h)
    return _resize_axis(_resize_axis(small, 1, small_w, full_w), 0, small_h, full_h)


def bicubic_degrade(image: jnp.ndarray, power: ArrayLike) -> jnp.ndarray:
    """DFL's bicubic_degrade_power (0..100): cubic downscale by 1 − p/101 and back up, both
    `cv2.resize(INTER_CUBIC)` (half-pixel centres, no antialiasing, replicated edge). The small
    size is traced: it lives in the top-left corner of a full-size buffer. p = 0 is the identity."""
    power = _per_item(power, image)
    height, width, channels = image.shape[-3:]
    flat = jax.vmap(_bicubic_round_trip)(image.reshape(-1, height, width, channels), power.reshape(-1))
    return flat.reshape(image.shape)


# --- colour degrade: an adaptive 256-colour palette --------------------------------------------

def _median_cut(samples: jnp.ndarray) -> jnp.ndarray:
    """Median cut of [N, 3] colours into PALETTE_SIZE boxes of equal count; returns box means.

    Every box is split at its median along its widest channel until there are PALETTE_SIZE, so
    each level is a sort of equal-size groups (static shapes). PIL splits its most populous box
    next, which for natural images gives nearly the same equal-count boxes.
    """
    boxes = samples[None]
    while boxes.shape[0] < PALETTE_SIZE:
        widest = jnp.argmax(boxes.max(axis=1) - boxes.min(axis=1), axis=-1)
        keys = jnp.take_along_axis(boxes, widest[:, None, None], axis=-1)[..., 0]
        order = jnp.argsort(keys, axis=1, stable=True)
        boxes = jnp.take_along_axis(boxes, order[..., None], axis=1)
        boxes = boxes.reshape(boxes.shape[0] * 2, boxes.shape[1] // 2, 3)
    return jnp.round(boxes.mean(axis=1))


def _nearest_colour(pixels: jnp.ndarray, palette: jnp.ndarray) -> jnp.ndarray:
    """Each pixel [P, 3] replaced by its nearest palette colour [K, 3] (squared RGB distance).

    The distance is written per channel so XLA fuses it into the argmin reduction instead of
    materialising a [P, K] table (2 GB for a 1080p frame).
    """
    distance = sum((pixels[:, None, c] - palette[None, :, c]) ** 2 for c in range(3))
    return palette[jnp.argmin(distance, axis=1)]


def _reduce_colors(pixels: jnp.ndarray) -> jnp.ndarray:
    """DFL's `reduce_colors` on [P, 3] pixels in [0, 1]: to uint8 levels by truncation (DFL's
    astype(uint8)), a 256-colour palette from a fixed, evenly strided subsample, nearest-colour
    mapping, back to [0, 1]."""
    levels = jnp.floor(jnp.clip(pixels, 0.0, 1.0) * 255.0)
    count = pixels.shape[0]
    subsample = (np.arange(PALETTE_SAMPLES, dtype=np.int64) * count) // PALETTE_SAMPLES
    return _nearest_colour(levels, _median_cut(levels[subsample])) / 255.0


def color_degrade(image: jnp.ndarray, power: ArrayLike) -> jnp.ndarray:
    """DFL's color_degrade_power (0..100): blend the image's 256-colour adaptive quantisation in
    with alpha p/100.

    Deviation from DFL: PIL's `convert("P", palette=ADAPTIVE)` is not jittable, so the palette is
    a deterministic equal-count median cut fitted on 65536 evenly strided pixels (all pixels of a
    256x256 face). The skipped work when every item has p = 0 costs nothing.
    """
    alpha = _per_item(power, image)[..., None, None, None] / 100.0
    height, width, channels = image.shape[-3:]

    def degrade(img):
        reduced = jax.vmap(_reduce_colors)(img.reshape(-1, height * width, channels)).reshape(img.shape)
        return img * (1.0 - alpha) + reduced * alpha

    return jax.lax.cond(jnp.any(alpha > 0), degrade, lambda img: img, image)
