"""Merge-mask erode/dilate and blur, and the face motion blur (DFL_SPEC §4.3 steps 4-6 and 7.5.3, §4.7).

Every numeric option (erode and blur amounts, motion-blur size and angle) is a traced value: a keyframe file
changes them per frame, and that must not recompile the merge program. Only shapes, `pad` and the static maxima
are static. Options are scalars or arrays over the batch dims, so each item may use its own values.

Erosion. DFL erodes with OpenCV's elliptical (disk) element of a size that is traced here. Its exact erosion
costs one horizontal min per row of the disk, which is O(size) passes. Instead the element is a 16-sided convex
polygon: the Minkowski sum of digital segments along the axes, the diagonals and the four knight directions.
Erosion by a Minkowski sum is erosion by each summand in turn, exactly, also for grey values. A segment of n
steps takes ~log2(n) shifted minimums, each step at most doubling the covered run: 24 passes for size 51, 50 for
size 400. The segment lengths per size are those (among even diagonal/knight lengths near the continuous
optimum) whose lattice points best match OpenCV's ellipse: IoU >= 0.96 from size 45 on, >= 0.975 from 100,
about one pixel along the rim; below 20 the shapes differ more (size 5 is a 5x5 square). `structuring_element`
returns the exact element used. Borders follow OpenCV: pixels outside the image are ignored.

Blur. Gaussian and motion blurs filter by FFT, whose cost does not depend on the traced kernel size. A static
maximum number of taps would always pay for the largest kernel: 2 x 401 multiply-adds per pixel for the
separable mask blur, 101 x 101 for the motion blur, against a few tens for the FFT. On an H200 the whole
`process_mask` of a 1024^2 mask takes ~1.5 ms. Borders are OpenCV's reflect-101, made by padding by the largest
radius before the circular filter.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MAX_ERODE = 400  # DFL's erode_mask_modifier range is -400..400
MAX_BLUR_KSIZE = 401  # blur_mask_modifier 0..400, forced odd
MAX_MOTION_KERNEL = 100  # DFL clips the size to 50, then doubles it with super-resolution

# Segment directions (dy, dx): axes, diagonals, knight moves. Their order in the search below: n1, n1, n2, n2,
# then n3 four times.
_DIRECTIONS = np.array([(0, 1), (1, 0), (1, 1), (1, -1), (1, 2), (2, 1), (1, -2), (2, -1)])
_DIRECTION_GROUP = np.array([0, 0, 1, 1, 2, 2, 2, 2])
# Fixed kernels OpenCV 4 (the version DFL runs on) uses for sizes 1, 3, 5, 7 when sigma <= 0, for offsets -3..3.
# OpenCV 5 adds one for size 9; the formula is kept there.
_SMALL_GAUSSIANS = np.array([
    [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.25, 0.5, 0.25, 0.0, 0.0],
    [0.0, 0.0625, 0.25, 0.375, 0.25, 0.0625, 0.0],
    [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
], np.float32)


def _segment_extents(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per direction, the segment [-a, b] (in steps) for lengths (n1, n2, n3) [..., 3].

    n2 and n3 are even, so those segments are centred. n1 is odd exactly for even sizes; its segments then lean one
    step toward negative offsets, which puts the bounding box at OpenCV's anchor: [-(size//2), size - 1 - size//2].
    """
    n = lengths[..., _DIRECTION_GROUP]
    a = (n + 1) // 2
    return a, n - a


def _polygon_rows(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lattice x-range [lo, hi] of each row of the polygon sum_i [-a_i, b_i] * direction_i (empty: lo > hi).

    a, b: [C, 8]; rows: [R]; returns two [C, R] arrays. Each direction i gives a pair of polygon edges with
    the normal u_i = (-gx_i, gy_i) (dy, dx order), so the polygon is {p: lo_i <= u_i . p <= hi_i}.
    """
    gy, gx = _DIRECTIONS.T
    dots = -gx[:, None] * gy[None, :] + gy[:, None] * gx[None, :]  # [i, j] = u_i . direction_j
    ends = np.stack([-a[:, None, :] * dots, b[:, None, :] * dots])
    hi, lo = ends.max(0).sum(-1)[..., None], ends.min(0).sum(-1)[..., None]  # [C, 8, 1]
    y = rows[None, None, :]
    slanted = (gy > 0)[None, :, None]
    divisor = np.maximum(gy, 1)[None, :, None]
    x_lo = np.where(slanted, -((-(lo + gx[None, :, None] * y)) // divisor), np.iinfo(np.int64).min).max(1)
    x_hi = np.where(slanted, (hi + gx[None, :, None] * y) // divisor, np.iinfo(np.int64).max).min(1)
    in_rows = np.where(slanted, True, (-hi <= y) & (y <= -lo)).all(1)  # the horizontal direction bounds y
    return x_lo, np.where(in_rows, x_hi, x_lo - 1)


def _ellipse_rows(size: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's MORPH_ELLIPSE element (size x size, anchor at size//2) as per-row x-ranges of offsets.

    OpenCV fills row dy with the half width round(sqrt(m^2 - dy^2)), m = size//2, clipped to the box.
    """
    m = size // 2
    half = np.round(np.sqrt(np.maximum(m * m - rows * rows, 0)))
    lo, hi = np.maximum(-half, -m), np.minimum(half, size - 1 - m)
    return lo, np.where((rows >= -m) & (rows <= size - 1 - m), hi, lo - 1)


def _best_lengths(size: int) -> np.ndarray:
    """(n1, n2, n3) whose polygon has the largest lattice IoU with OpenCV's ellipse of this size.

    The width is n1 + 2 n2 + 6 n3 = size - 1. n1 >= 1 fills the lattice holes a sum of bare diagonal or knight
    segments would leave. The search covers even n2, n3 around the continuous optimum for a circle
    (n3 ~ 0.0875 d, n2 ~ (d - 6 n3) / 4), which for small sizes is every candidate.
    """
    d = size - 1
    if d <= 0:
        return np.zeros(3, np.int64)
    n3 = np.arange(0, d // 6 + 1, 2)
    n3 = n3[np.abs(n3 - 0.0875 * d) <= 4]
    n2 = np.arange(0, d // 2 + 1, 2)
    n3, n2 = (g.ravel() for g in np.meshgrid(n3, n2))
    keep = np.abs(n2 - (d - 6 * n3) / 4) <= 6
    n3, n2 = n3[keep], n2[keep]
    n1 = d - 2 * n2 - 6 * n3
    candidates = np.stack([n1, n2, n3], -1)[n1 >= 1]
    rows = np.arange(-(size // 2), size - size // 2)
    p_lo, p_hi = _polygon_rows(*_segment_extents(candidates), rows)
    e_lo, e_hi = _ellipse_rows(size, rows)
    inter = np.maximum(np.minimum(p_hi, e_hi) - np.maximum(p_lo, e_lo) + 1, 0).sum(-1)
    union = np.maximum(p_hi - p_lo + 1, 0).sum(-1) + np.maximum(e_hi - e_lo + 1, 0).sum() - inter
    return candidates[np.argmax(inter / union)]


def _doubling_steps(direction: np.ndarray, a: int, b: int) -> list[np.ndarray]:
    """Shifts whose successive min-updates erode by the digital segment [-a, b] * direction.

    Adding the offsets {0, s} to a run of L + 1 points keeps it gap-free while s <= L + 1, so each step at most
    doubles the run. It grows to +b first, then to -a.
    """
    steps, lo, hi = [], 0, 0
    while hi < b:
        s = min(hi - lo + 1, b - hi)
        steps.append(s * direction)
        hi += s
    while lo > -a:
        s = min(hi - lo + 1, lo + a)
        steps.append(-s * direction)
        lo -= s
    return steps


@functools.cache
def _erosion_schedule(max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shifts [max_size + 1, S, 2] (dy, dx) and their counts [max_size + 1] for every element size."""
    per_size = []
    for size in range(max_size + 1):
        a, b = _segment_extents(_best_lengths(size))
        per_size.append([s for d, ai, bi in zip(_DIRECTIONS, a, b) for s in _doubling_steps(d, ai, bi)])
    steps = np.zeros((max_size + 1, max(1, max(map(len, per_size))), 2), np.int32)
    for size, shifts in enumerate(per_size):
        steps[size, :len(shifts)] = np.reshape(shifts, (-1, 2))
    return steps, np.array([len(s) for s in per_size], np.int32)


def structuring_element(size: int, max_size: int = MAX_ERODE) -> np.ndarray:
    """The element `erode_dilate` uses for |amount| = size, as a bool [size, size] kernel (anchor size//2)."""
    steps, counts = _erosion_schedule(max_size)
    element = np.zeros((size, size), bool)
    element[size // 2, size // 2] = size > 0
    for dy, dx in steps[size, :counts[size]]:  # element | (element + shift)
        moved = np.zeros_like(element)
        moved[max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)] = \
            element[max(-dy, 0):size - max(dy, 0), max(-dx, 0):size - max(dx, 0)]
        element |= moved
    return element


def _per_item(fn: Callable[..., jnp.ndarray], images: jnp.ndarray, *options) -> jnp.ndarray:
    """fn(image [H, W, C], *scalar options) over a batch [..., H, W, C]; options broadcast to the batch dims."""
    lead = images.shape[:-3]
    flat = images.reshape((-1,) + images.shape[-3:])
    flat_options = [jnp.broadcast_to(jnp.asarray(o), lead).reshape(-1) for o in options]
    out = jax.vmap(fn)(flat, *flat_options)
    return out.reshape(lead + out.shape[1:])


def _erode_dilate_one(x: jnp.ndarray, amount: jnp.ndarray, max_amount: int) -> jnp.ndarray:
    """erode_dilate for one image [H, W, C]: dilation is erosion of the negated image.

    The image is padded with +inf by the element's half size: every partial sum of the shifts is an offset of the
    element, so the intermediate minimums stay exact up to the image border, where OpenCV ignores outside pixels.
    """
    steps, counts = _erosion_schedule(max_amount)
    reach = max_amount // 2
    step_max = max(int(np.abs(steps).max()), 1)
    amount = jnp.clip(amount.astype(jnp.int32), -max_amount, max_amount)
    sign = jnp.where(amount < 0, -1.0, 1.0).astype(x.dtype)
    size = jnp.abs(amount)
    shifts = jnp.asarray(steps)[size]
    frame = ((reach, reach), (reach, reach), (0, 0))
    margin = ((step_max, step_max), (step_max, step_max), (0, 0))

    def step(i: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        padded = jnp.pad(y, margin, constant_values=jnp.inf)
        start = (step_max + shifts[i, 0], step_max + shifts[i, 1], 0)
        return jnp.minimum(y, lax.dynamic_slice(padded, start, y.shape))

    y = lax.fori_loop(0, jnp.asarray(counts)[size], step, jnp.pad(sign * x, frame, constant_values=jnp.inf))
    h, w = x.shape[:2]
    return sign * y[reach:reach + h, reach:reach + w]


def erode_dilate(mask: jnp.ndarray, amount, *, max_amount: int = MAX_ERODE) -> jnp.ndarray:
    """Erode (amount > 0) or dilate (amount < 0) masks [..., H, W, C] by the |amount|-sized disk element.

    Matches cv2.erode / cv2.dilate with `structuring_element(|amount|)`, which approximates DFL's
    cv2.getStructuringElement(MORPH_ELLIPSE, (|amount|, |amount|)). amount: integer pixels, traced, a scalar or
    one per batch item; clipped to +-max_amount (static).
    """
    return _per_item(lambda m, a: _erode_dilate_one(m, a, max_amount), mask, amount)


def _fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFTs of such lengths are fast on every backend."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _pad_for_fft(x: jnp.ndarray, radius: int, reflect: bool) -> jnp.ndarray:
    """Pad [H, W, C] by `radius` (OpenCV's reflect-101 border, or zeros) and then with zeros to fast FFT lengths.

    A circular filter of radius <= `radius` then reads only the border pad near the image, never the far side.
    """
    edge = ((radius, radius), (radius, radius), (0, 0))
    x = jnp.pad(x, edge, mode="reflect") if reflect else jnp.pad(x, edge)
    h, w = x.shape[:2]
    return jnp.pad(x, ((0, _fft_length(h) - h), (0, _fft_length(w) - w), (0, 0)))


def _correlate_fft(x: jnp.ndarray, spectrum: jnp.ndarray) -> jnp.ndarray:
    """Circular cross-correlation (filter2D's orientation) of x [H, W, C] with a filter given by its rfft2."""
    h, w = x.shape[:2]
    product = jnp.fft.rfft2(x, axes=(0, 1)) * jnp.conj(spectrum)[:, :, None]
    return jnp.fft.irfft2(product, s=(h, w), axes=(0, 1)).astype(x.dtype)


def _gaussian_taps(ksize: jnp.ndarray, length: int) -> jnp.ndarray:
    """OpenCV's 1-D Gaussian of odd size ksize, sigma 0.3 ((ksize - 1) / 2 - 1) + 0.8, as a circular filter of
    `length` taps (tap i holds offset i, or i - length past the middle)."""
    offsets = jnp.arange(length)
    offsets = jnp.where(offsets > length // 2, offsets - length, offsets)
    radius = ksize // 2
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1.0) + 0.8
    taps = jnp.where(jnp.abs(offsets) <= radius, jnp.exp(-0.5 * (offsets / sigma) ** 2), 0.0)
    small = jnp.asarray(_SMALL_GAUSSIANS)[jnp.clip(radius, 0, 3)][jnp.clip(offsets + 3, 0, 6)]
    taps = jnp.where(ksize <= 7, jnp.where(jnp.abs(offsets) <= 3, small, 0.0), taps)
    return taps / taps.sum()


def _blur_circular(x: jnp.ndarray, blur: jnp.ndarray) -> jnp.ndarray:
    """Gaussian blur of [H, W, C] with DFL's kernel size: blur made odd; blur <= 1 leaves x as it is."""
    ksize = blur + 1 - blur % 2
    h, w = x.shape[:2]
    spectrum = jnp.fft.fft(_gaussian_taps(ksize, h))[:, None] * jnp.fft.rfft(_gaussian_taps(ksize, w))[None, :]
    return jnp.where(ksize > 1, _correlate_fft(x, spectrum), x)


def gaussian_blur(x: jnp.ndarray, ksize, *, max_ksize: int = MAX_BLUR_KSIZE) -> jnp.ndarray:
    """cv2.GaussianBlur(x, (k, k), 0) on [..., H, W, C] with reflect-101 borders.

    ksize: traced, a scalar or one per batch item; made odd by adding 1 as DFL does; <= 1 returns x; clipped to
    max_ksize (static, sets the border padding). Sizes 3, 5, 7 use OpenCV 4's fixed kernels.
    """
    radius = max_ksize // 2

    def one(image: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
        h, w = image.shape[:2]
        blurred = _blur_circular(_pad_for_fft(image, radius, reflect=True), jnp.minimum(k.astype(jnp.int32), max_ksize))
        return blurred[radius:radius + h, radius:radius + w]

    return _per_item(one, x, ksize)


def process_mask(mask: jnp.ndarray, erode, blur, pad: int, *, max_erode: int = MAX_ERODE) -> jnp.ndarray:
    """DFL's erode/blur of the merge mask [..., H, W, 1] (DFL_SPEC §4.3 step 5), in the 4r mask space.

    Zero-pad by `pad` (static; DFL: the model resolution r), erode/dilate by `erode`, zero a border band of
    width pad + blur//2 so the mask fades to 0 inside the predicted square, blur with size `blur` (made odd; none
    if <= 0), crop the padding, clip to [0, 1]. erode, blur: traced integers, scalars or one per batch item.

    The band is at least the blur radius wide and all zero, so the blur's border rule cannot matter: the blur
    is circular with no extra padding.
    """
    def one(m: jnp.ndarray, ero: jnp.ndarray, blr: jnp.ndarray) -> jnp.ndarray:
        h, w = m.shape[:2]
        padded = _erode_dilate_one(jnp.pad(m, ((pad, pad), (pad, pad), (0, 0))), ero, max_erode)
        blr = jnp.maximum(blr.astype(jnp.int32), 0)
        band = pad + blr // 2
        rows = jnp.arange(h + 2 * pad)[:, None, None]
        cols = jnp.arange(w + 2 * pad)[None, :, None]
        inside = (rows >= band) & (rows < h + 2 * pad - band) & (cols >= band) & (cols < w + 2 * pad - band)
        banded = _pad_for_fft(jnp.where(inside, padded, 0.0), 0, reflect=False)
        return jnp.clip(_blur_circular(banded, blr)[pad:pad + h, pad:pad + w], 0.0, 1.0)

    return _per_item(one, mask, erode, blur)


def _motion_kernel(size: jnp.ndarray, angle_deg: jnp.ndarray, radius: int) -> jnp.ndarray:
    """DFL's linear motion-blur kernel on the offset grid [-radius, radius]^2 around filter2D's anchor size//2.

    A size x size image whose middle row ((size - 1)//2) is ones, rotated by angle_deg (counter-clockwise on
    screen) about its centre ((size - 1)/2, (size - 1)/2) as cv2.warpAffine with cv2.getRotationMatrix2D does
    (bilinear, zero outside), then normalised to sum 1. OpenCV rounds sample positions to 1/32 px; this samples
    exactly.
    """
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    anchor = (size // 2).astype(jnp.float32)
    y, x = offsets[:, None] + anchor, offsets[None, :] + anchor
    centre = (size.astype(jnp.float32) - 1.0) / 2.0
    theta = jnp.deg2rad(angle_deg.astype(jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src_x = cos * (x - centre) - sin * (y - centre) + centre  # inverse rotation: where each pixel samples
    src_y = sin * (x - centre) + cos * (y - centre) + centre
    row = ((size - 1) // 2).astype(jnp.float32)
    line = size.astype(jnp.float32)
    weight = jnp.maximum(1.0 - jnp.abs(src_y - row), 0.0) * jnp.clip(jnp.minimum(src_x + 1.0, line - src_x), 0.0, 1.0)
    inside = (y >= 0) & (y < line) & (x >= 0) & (x < line)
    kernel = jnp.where(inside, weight, 0.0)
    return kernel / kernel.sum()


def motion_blur(image: jnp.ndarray, kernel_size, angle_deg, *,
                max_kernel_size: int = MAX_MOTION_KERNEL) -> jnp.ndarray:
    """DFL's linear motion blur of [..., H, W, C]: cv2.filter2D (reflect-101 borders) with `_motion_kernel`.

    kernel_size (int) and angle_deg are traced, scalars or one per batch item; size <= 1 returns the image;
    sizes are clipped to max_kernel_size (static, sets the kernel grid and the border padding).
    """
    radius = max_kernel_size // 2

    def one(img: jnp.ndarray, size: jnp.ndarray, angle: jnp.ndarray) -> jnp.ndarray:
        h, w = img.shape[:2]
        size = jnp.clip(size.astype(jnp.int32), 1, max_kernel_size)
        padded = _pad_for_fft(img, radius, reflect=True)
        grid = jnp.pad(_motion_kernel(size, angle, radius),
                       ((0, padded.shape[0] - 2 * radius - 1), (0, padded.shape[1] - 2 * radius - 1)))
        spectrum = jnp.fft.rfft2(jnp.roll(grid, (-radius, -radius), axis=(0, 1)))  # offset o at index o mod n
        blurred = _correlate_fft(padded, spectrum)[radius:radius + h, radius:radius + w]
        return jnp.where(size > 1, blurred, img)

    return _per_item(one, image, kernel_size, angle_deg)


def motion_kernel_size(motion_power_px, power_percent, superres: bool = False) -> jnp.ndarray:
    """DFL's motion-blur size: k = int(motion_power * p / 100); if k >= 1, k = clip(k + 1, 2, 50), doubled with
    super-resolution (static); else 0 (no blur). Works on scalars or arrays, inside jit."""
    k = jnp.trunc(jnp.asarray(motion_power_px, jnp.float32) * jnp.asarray(power_percent, jnp.float32) / 100.0)
    k = jnp.where(k >= 1, jnp.clip(k.astype(jnp.int32) + 1, 2, 50), 0)
    return k * 2 if superres else k
