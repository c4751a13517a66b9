"""Poisson (seamless) blending on the device: OpenCV's `seamlessClone(NORMAL_CLONE)`, which DFL's seamless
merge modes call (DFL_SPEC §4.3 step 7.3), as pure jittable batch functions.

What OpenCV does (seamless_cloning.cpp; src and dst in the same frame geometry, i.e. DFL's centre = centre of
the mask's bounding rect, so its destination rectangle is its source rectangle):
1. mask = the given mask with its one-pixel image border set to 0; R = boundingRect(mask != 0). An empty R
   returns dst.
2. guide = mask eroded by a 3x3 ones kernel 3 times (= one 7x7 square; pixels beyond R count as 0).
3. Guidance field at each pixel p of R, from forward differences:
   v_x(p) = guide(p) * (src[p+x] - src[p]) + (1 - guide(p)) * (dst[p+x] - dst[p]), and likewise v_y.
   (OpenCV zeroes src outside the un-eroded mask first; the erosion makes that irrelevant, because every
   forward difference taken where guide = 1 stays inside the mask.)
4. Solve the 5-point Poisson equation  Laplacian(u) = v_x(p) - v_x(p-x) + v_y(p) - v_y(p-y)  on the interior of
   R, with u = dst on R's one-pixel ring (DST-I, divide by the eigenvalues, inverse DST-I; float32).
5. Paste the solution over R's interior, clamped to [0, 255] and truncated toward zero to uint8. Everything
   outside R's interior is dst, bit for bit; inside R but outside the mask u is close to, not equal to, dst.

Here: the same, on float images in [0, 1], clipped to [0, 1] and not quantised (OpenCV's truncation makes its
output on average 0.5/255 darker). The solve rectangle R is data while the crop's shape is static, so R is
solved with a chirp (Bluestein) DST whose length is a run-time value, computed with FFTs of the crop's size.
Solving on the whole crop instead would put the Dirichlet ring elsewhere: on the astronaut's face cloned into
256 px crops of coffee/chelsea that changes the result inside the mask by 4.7-11/255 on average. Border
zeroing is at the crop's edge, so the crop must hold the mask with a one-pixel margin to reproduce OpenCV run
on the whole frame.

Precision in float32: (a) the smallest eigenvalues 2cos(x) - 2 lose their digits to cancellation, so they are
written -4 sin^2(x/2); (b) the solve amplifies the lowest modes by up to (n/pi)^2, so the seamless clone
solves for the correction u - dst (zero ring: no O(1) boundary terms in the right-hand side), and the general
solver takes the ring's mean out first; (c) chirp phases pi j^2 / (2K) reduce j^2 mod 4K in integers before
going to float32, which would otherwise lose the low bits of a large j^2.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ERODE_SIZE = 7  # OpenCV erodes the mask with a 3x3 ones kernel, 3 iterations: one 7x7 square


def dst1(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Type-I DST along `axis`, normalised as scipy.fft.dst(type=1): X_k = 2 sum_j x_j sin(pi (j+1)(k+1) / (n+1)).

    JAX has no DST: the odd extension [0, x, 0, -reversed(x)] of length 2(n+1) has an FFT whose imaginary part
    is -X.
    """
    x = jnp.moveaxis(jnp.asarray(x, jnp.float32), axis, -1)
    n = x.shape[-1]
    zero = jnp.zeros_like(x[..., :1])
    odd = jnp.concatenate([zero, x, zero, -x[..., ::-1]], axis=-1)
    return jnp.moveaxis(-jnp.fft.rfft(odd, axis=-1).imag[..., 1:n + 1], -1, axis)


def idst1(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Inverse of `dst1` (DST-I is its own inverse up to the factor 2(n+1))."""
    return dst1(x, axis) / (2.0 * (x.shape[axis] + 1))


def dst1_window(x: jnp.ndarray, start: jnp.ndarray | int, length: jnp.ndarray | int,
                axis: int = -1) -> jnp.ndarray:
    """`dst1` of the window x[start:start+length] along `axis`, written back in place (zeros elsewhere).

    start and length may be traced, one per row (broadcastable against x without `axis`): a jitted program can
    transform a rectangle whose size is data. Bluestein's chirp: with K = length + 1,
    sin(pi a b / K) = Im(c_a c_b conj(c_{b-a})), c_j = exp(i pi j^2 / 2K), so the sum is a convolution done
    with FFTs of a fixed length >= 2n - 1.
    """
    x = jnp.moveaxis(jnp.asarray(x, jnp.float32), axis, -1)
    n = x.shape[-1]
    size = 1 << (2 * n - 2).bit_length()  # a power of two >= 2n - 1: the circular convolution is linear
    length = jnp.asarray(length, jnp.int32)[..., None]
    period = 4 * (length + 1)  # c_j depends on j^2 mod 4K only
    position = jnp.arange(n, dtype=jnp.int32) - jnp.asarray(start, jnp.int32)[..., None] + 1  # 1-based
    inside = (position >= 1) & (position <= length)
    chirp = _chirp(jnp.where(inside, position, 0), period)
    lag = jnp.arange(size, dtype=jnp.int32)
    kernel = jnp.conj(_chirp(jnp.where(lag < n, lag, lag - size), period))  # c conj at lag b - a, |lag| < n
    spectrum = jnp.fft.fft(jnp.where(inside, x, 0.0) * chirp, n=size, axis=-1) * jnp.fft.fft(kernel, axis=-1)
    convolved = jnp.fft.ifft(spectrum, axis=-1)[..., :n]
    return jnp.moveaxis(jnp.where(inside, 2.0 * jnp.imag(chirp * convolved), 0.0), -1, axis)


def _chirp(j: jnp.ndarray, period: jnp.ndarray) -> jnp.ndarray:
    """exp(2 pi i j^2 / period), with j^2 reduced modulo the period in integers (float32 would drop its low bits)."""
    phase = ((j * j) % period).astype(jnp.float32) * (2.0 * np.pi / period.astype(jnp.float32))
    return jax.lax.complex(jnp.cos(phase), jnp.sin(phase))


def solve_poisson(laplacian_rhs: jnp.ndarray, boundary: jnp.ndarray,
                  box: jnp.ndarray | None = None) -> jnp.ndarray:
    """Solve u[y-1,x] + u[y+1,x] + u[y,x-1] + u[y,x+1] - 4 u[y,x] = rhs[y,x] on a rectangle's interior pixels,
    with u = boundary on its one-pixel ring (Dirichlet).

    Arrays are scalar fields [..., H, W] (put channels in front). box None: the rectangle is the whole array.
    box [..., 4] int (top, left, bottom, right; bottom and right exclusive): one rectangle per field, chosen at
    run time; pixels off its interior return `boundary`. Boundary terms move to the right-hand side, then DST-I
    on both axes, divide by the eigenvalues, inverse DST-I.
    """
    rhs = jnp.asarray(laplacian_rhs, jnp.float32)
    boundary = jnp.broadcast_to(jnp.asarray(boundary, jnp.float32), rhs.shape)
    height, width = rhs.shape[-2:]
    if box is None:
        top, left, bottom, right = 0, 0, height, width
    else:
        box = jnp.asarray(box, jnp.int32)
        top, left, bottom, right = (box[..., i] for i in range(4))
    in_box, interior = _box_masks(top, left, bottom, right, height, width)
    ring = in_box & ~interior
    count = jnp.maximum(jnp.sum(ring, axis=(-2, -1), keepdims=True), 1)
    offset = jnp.sum(jnp.where(ring, boundary, 0.0), axis=(-2, -1), keepdims=True) / count
    fixed = jnp.pad(jnp.where(ring, boundary - offset, 0.0), [(0, 0)] * (rhs.ndim - 2) + [(1, 1), (1, 1)])
    neighbours = fixed[..., :-2, 1:-1] + fixed[..., 2:, 1:-1] + fixed[..., 1:-1, :-2] + fixed[..., 1:-1, 2:]
    source = jnp.where(interior, rhs - neighbours, 0.0)
    if box is None:
        solution = _solve_whole(source)
    else:
        solution = _solve_box(source, interior, top, left, bottom, right)
    return jnp.where(interior, solution + offset, boundary)


def _box_masks(top, left, bottom, right, height: int, width: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(in box, in its interior) as [..., H, W] booleans; box edges are scalars or [...] arrays."""
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    expand = lambda edge: jnp.asarray(edge)[..., None, None]
    top, left, bottom, right = expand(top), expand(left), expand(bottom), expand(right)
    in_box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    interior = (rows > top) & (rows < bottom - 1) & (cols > left) & (cols < right - 1)
    return in_box, interior


def _sin2(b: jnp.ndarray | np.ndarray, k: jnp.ndarray | int) -> jnp.ndarray:
    """sin^2(pi b / 2k): one axis' share of -eigenvalue/4, free of the 2cos - 2 cancellation."""
    return jnp.sin((np.pi / 2) * jnp.asarray(b, jnp.float32) / jnp.asarray(k, jnp.float32)) ** 2


def _solve_whole(source: jnp.ndarray) -> jnp.ndarray:
    """Zero-ring Poisson solve on the whole array (static size: plain FFT DSTs)."""
    height, width = source.shape[-2:]
    rows, cols = np.arange(1, height - 1)[:, None], np.arange(1, width - 1)[None, :]
    eigen = -4.0 * (_sin2(rows, height - 1) + _sin2(cols, width - 1))
    coef = dst1(dst1(source[..., 1:-1, 1:-1], -1), -2) / eigen
    solution = idst1(idst1(coef, -1), -2)
    return jnp.pad(solution, [(0, 0)] * (source.ndim - 2) + [(1, 1), (1, 1)])


def _solve_box(source: jnp.ndarray, interior: jnp.ndarray, top, left, bottom, right) -> jnp.ndarray:
    """Zero-ring Poisson solve on each field's box interior (run-time size: chirp DSTs)."""
    length_y = jnp.maximum(bottom - top - 2, 0)
    length_x = jnp.maximum(right - left - 2, 0)
    start_y, start_x = (top + 1)[..., None], (left + 1)[..., None]
    length_y, length_x = length_y[..., None], length_x[..., None]

    def transform(field):
        return dst1_window(dst1_window(field, start_x, length_x, -1), start_y, length_y, -2)

    rows = jnp.arange(source.shape[-2])[:, None] - top[..., None, None]
    cols = jnp.arange(source.shape[-1])[None, :] - left[..., None, None]
    k_y, k_x = (length_y + 1)[..., None], (length_x + 1)[..., None]
    eigen = jnp.where(interior, -4.0 * (_sin2(rows, k_y) + _sin2(cols, k_x)), 1.0)
    return transform(transform(source) / eigen) / (4.0 * (k_y * k_x).astype(jnp.float32))


class CloneDomain(NamedTuple):
    """Where OpenCV's NORMAL_CLONE takes the source's gradient, and which rectangle it solves."""

    guide: jnp.ndarray  # [..., H, W, 1] float32, 1 where src's gradient guides (the eroded mask)
    box: jnp.ndarray  # [..., 4] int32 (top, left, bottom, right), exclusive ends; all 0 for an empty mask


def opencv_mask_domain(mask: jnp.ndarray) -> CloneDomain:
    """cv2.seamlessClone's own mask preprocessing: mask > 0.5, its one-pixel border zeroed, the solve box =
    its bounding rect, the guide = it eroded by a 7x7 square (3 passes of 3x3; outside counts as 0).

    DFL takes its centre from the mask before the zeroing, so where the mask touches the frame's edge and the
    rect's width or height is odd, OpenCV pastes one pixel off; that misplacement is not reproduced."""
    inside = jnp.asarray(mask)[..., 0] > 0.5
    height, width = inside.shape[-2:]
    inside = inside & _box_masks(0, 0, height, width, height, width)[1]
    rows, cols = jnp.any(inside, axis=-1), jnp.any(inside, axis=-2)
    found = jnp.any(rows, axis=-1)
    top, bottom = jnp.argmax(rows, axis=-1), height - jnp.argmax(rows[..., ::-1], axis=-1)
    left, right = jnp.argmax(cols, axis=-1), width - jnp.argmax(cols[..., ::-1], axis=-1)
    box = jnp.where(found[..., None], jnp.stack([top, left, bottom, right], axis=-1), 0).astype(jnp.int32)
    window = (1,) * (inside.ndim - 2) + (ERODE_SIZE, ERODE_SIZE)
    guide = jax.lax.reduce_window(inside.astype(jnp.float32), jnp.inf, jax.lax.min, window,
                                  (1,) * inside.ndim, "SAME")
    return CloneDomain(guide=guide[..., None], box=box)


def seamless_clone(dst: jnp.ndarray, src: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """OpenCV NORMAL_CLONE of `src` into `dst` (module docstring), in float: [..., H, W, C] images in [0, 1] in
    the same geometry, mask [..., H, W, 1] (> 0.5 inside). Returns dst outside the solve box's interior, bit for
    bit; within it the Poisson solution, clipped to [0, 1]."""
    dst = jnp.asarray(dst, jnp.float32)
    domain = opencv_mask_domain(mask)
    diff = jnp.asarray(src, jnp.float32) - dst
    divergence = 0.0
    for axis in (-3, -2):  # rows, then columns of [..., H, W, C]
        last = jax.lax.slice_in_dim(diff, diff.shape[axis] - 1, None, axis=diff.ndim + axis)
        forward = jnp.diff(diff, axis=axis, append=last)  # forward differences, 0 past the end
        divergence = divergence + jnp.diff(domain.guide * forward, axis=axis, prepend=0.0)
    correction = solve_poisson(jnp.moveaxis(divergence, -1, -3), 0.0, domain.box[..., None, :])
    _, interior = _box_masks(*(domain.box[..., i] for i in range(4)), *dst.shape[-3:-1])
    return jnp.where(interior[..., None], jnp.clip(dst + jnp.moveaxis(correction, -3, -1), 0.0, 1.0), dst)
