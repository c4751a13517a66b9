"""XSeg's training augmentation on the device (DFL_SPEC §2.3), per sample, jittable, batched.

Order per sample (each step's probability as in DFL):
1. geometry: random affine (rotation +-10 deg, scale +-0.05, shift +-0.05, flip p=0.4) and DFL's
   elastic warp, applied identically to the face (bicubic, replicated border) and the label
   (bilinear, zero border, then re-binarised at 0.5). As in the SAEHD pipeline, the output pixels
   are mapped through jitter^-1 -> elastic -> re-crop^-1 (`base_matrices`) and the stored face
   is sampled once, so re-cropping to the model's face type costs no extra resampling.
2. 50 %: background swap. The batch's next sample (rolled by one) is placed with its own random
   transform (rotation +-180 deg, scale +-0.10, shift +-0.10, flip p=0.5), recoloured (HSV shift or
   RGB levels, 50/50) and blended outside c = 1-(1-bg_mask)(1-mask) with weight rnd in [0.15, 1].
   DFL swaps before warping; here the background is drawn straight into the warped frame (it has
   its own random transform anyway), which keeps one resampling per output.
3. 50 % face flare, 50 % background flare: img += GaussianBlur(img*mask (or 1-mask), k),
   k odd in [R/4, R).
4. HSV shift or RGB levels (50/50) inside a random faded circle.
5. 25 % sharpen (unsharp, amount 1 or 3, kernel 1..5) or else 25 % Gaussian blur (kernel 1..9),
   inside a random faded circle.
6. 25 % down-then-up resize by a factor in [0.25, 1], nearest or bilinear (50/50), in a circle.
Left out: motion blur (step 5) and JPEG re-compression (step 7): no JAX equivalent worth its
compile time; both only degrade texture, which steps 5-6 already do.

Gaussian blurs are two dense [R, R] matrix products (the kernel renormalised at the borders,
where OpenCV reflects): cheap at XSeg's sizes on every backend, and any sigma compiles once.
Randomness: keys from (seed, step, sample id) via `engine.augment.sample_keys`, so results do
not depend on batch position or device count (except the background partner, by design).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.augment import sample_keys
from engine.augment.color import HsvJitter, apply_hsv_jitter
from engine.augment.geometry import (compose, invert_affine, jitter_matrix, random_affine_jitter,
                                     resize_matrix, transform_points)
from engine.augment.resample import pixel_grid, sample
from engine.augment.warp import elastic_map, random_elastic_warp

MIN_WARP_WIDTH = 64  # DFL draws warps for narrower images at this width
FLIP_PROB = 0.4


def _face_image(face: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.clip(sample(face, x, y, method="cubic", border="replicate") / 255.0, 0.0, 1.0)


def _binary_mask(mask: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return (sample(mask, x, y, method="linear", border="constant") >= 127.5).astype(jnp.float32)


def recrop(faces: jax.Array, masks: jax.Array | None, face_to_model: jax.Array,
           resolution: int) -> tuple[jax.Array, jax.Array | None]:
    """Faceset crops uint8 [B,S,S,3] (and labels uint8 [B,S,S,1]) -> the model's crop: images
    float32 [B,R,R,3] in [0, 1] (bicubic) and binary labels [B,R,R,1]; no augmentation."""

    def one(face, mask, matrix):
        x, y = transform_points(invert_affine(matrix.astype(jnp.float32)), *pixel_grid(resolution, resolution))
        return _face_image(face, x, y), None if mask is None else _binary_mask(mask, x, y)

    return jax.vmap(one)(faces, masks, face_to_model)


# ------------------------------------------------------------------------------ pixel filters
def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: jax.Array) -> jax.Array:
    """Separable Gaussian of [H, W, C] with taps |d| <= radius (traced values allowed)."""
    size = image.shape[0]
    d = jnp.arange(size, dtype=jnp.float32)
    d = d[:, None] - d[None, :]
    weights = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * jnp.square(d / sigma)), 0.0)
    weights = weights / jnp.sum(weights, axis=1, keepdims=True)
    return jnp.einsum("ij,jkc,lk->ilc", weights, image, weights)


def kernel_sigma(k: jax.Array) -> jax.Array:
    """OpenCV's sigma for a Gaussian kernel of odd size k given sigma 0."""
    return 0.3 * ((k - 1.0) * 0.5 - 1.0) + 0.8


def faded_circle(key: jax.Array, size: int) -> jax.Array:
    """[S, S, 1] weight: 1 inside a random circle, fading linearly to 0 over a random width."""
    u = jax.random.uniform(key, (4,))
    cx, cy = u[0] * size, u[1] * size
    radius = (0.1 + 0.9 * u[2]) * size
    fade = (0.1 + 0.9 * u[3]) * radius
    x, y = pixel_grid(size, size)
    dist = jnp.sqrt(jnp.square(x - cx) + jnp.square(y - cy))
    return jnp.clip((radius - dist) / fade, 0.0, 1.0)[..., None]


def random_levels(key: jax.Array, image: jax.Array) -> jax.Array:
    """DFL's random RGB levels: in/out black U[0,.25], white 1-U[0,.25], gamma U[.5,1.5] per channel."""
    u = jax.random.uniform(key, (5, 3))
    in_black, out_black = 0.25 * u[0], 0.25 * u[1]
    in_white, out_white = 1.0 - 0.25 * u[2], 1.0 - 0.25 * u[3]
    gamma = 0.5 + u[4]
    x = jnp.clip((image - in_black) / (in_white - in_black), 0.0, 1.0)
    return jnp.clip(x ** (1.0 / gamma) * (out_white - out_black) + out_black, 0.0, 1.0)


def random_hsv_shift(key: jax.Array, image: jax.Array) -> jax.Array:
    """DFL's XSeg HSV shift: hue + U{0..359} degrees, S and V + U[-.5, .5]."""
    u = jax.random.uniform(key, (3,))
    jitter = HsvJitter(hue_deg=jnp.floor(u[0] * 360.0), saturation=u[1] - 0.5, value=u[2] - 0.5)
    return apply_hsv_jitter(image, jitter)


def random_recolour(key: jax.Array, image: jax.Array) -> jax.Array:
    """HSV shift or RGB levels, 50/50."""
    pick, k_hsv, k_levels = jax.random.split(key, 3)
    return jnp.where(jax.random.bernoulli(pick), random_hsv_shift(k_hsv, image),
                     random_levels(k_levels, image))


def down_up_resize(image: jax.Array, scale: jax.Array, nearest: jax.Array) -> jax.Array:
    """Downscale by `scale` in (0, 1] and back up, nearest or bilinear, at a static shape."""
    size = image.shape[0]
    shape = image.shape
    spatial = (0, 1)
    scale2 = jnp.stack([scale, scale])
    zero = jnp.zeros(2, jnp.float32)
    small = jax.image.scale_and_translate(image, shape, spatial, scale2, zero, method="linear")
    linear = jax.image.scale_and_translate(small, shape, spatial, 1.0 / scale2, zero, method="linear",
                                           antialias=False)
    # Nearest: output pixel x falls in coarse cell floor((x + 0.5) * s), whose centre is read.
    coarse = jnp.floor((jnp.arange(size, dtype=jnp.float32) + 0.5) * scale)
    index = jnp.clip(jnp.round((coarse + 0.5) / scale - 0.5), 0, size - 1).astype(jnp.int32)
    near = image[index][:, index]
    return jnp.clip(jnp.where(nearest, near, linear), 0.0, 1.0)


# ------------------------------------------------------------------------------ one sample
def _geometry(key: jax.Array, face: jax.Array, label: jax.Array, base_matrix: jax.Array,
              resolution: int) -> tuple[jax.Array, jax.Array]:
    width = max(resolution, MIN_WARP_WIDTH)
    k_affine, k_warp = jax.random.split(key)
    jitter = random_affine_jitter(k_affine, rotation_range=(-10.0, 10.0), scale_range=(-0.05, 0.05),
                                  shift_range=(-0.05, 0.05), flip_prob=FLIP_PROB)
    output_to_warp = compose(invert_affine(jitter_matrix(jitter, width)), resize_matrix(resolution, width))
    warp_to_face = compose(invert_affine(base_matrix.astype(jnp.float32)), resize_matrix(width, resolution))
    wx, wy = transform_points(output_to_warp, *pixel_grid(resolution, resolution))
    fx, fy = transform_points(warp_to_face, *elastic_map(random_elastic_warp(k_warp, width), wx, wy))
    return _face_image(face, fx, fy), _binary_mask(label, fx, fy)


def _background(key: jax.Array, face: jax.Array, label: jax.Array, base_matrix: jax.Array,
                resolution: int) -> tuple[jax.Array, jax.Array]:
    k_affine, k_colour = jax.random.split(key)
    jitter = random_affine_jitter(k_affine, rotation_range=(-180.0, 180.0), scale_range=(-0.1, 0.1),
                                  shift_range=(-0.1, 0.1), flip_prob=0.5)
    output_to_face = compose(invert_affine(base_matrix.astype(jnp.float32)),
                             invert_affine(jitter_matrix(jitter, resolution)))
    x, y = transform_points(output_to_face, *pixel_grid(resolution, resolution))
    return random_recolour(k_colour, _face_image(face, x, y)), _binary_mask(label, x, y)


def augment_sample(key: jax.Array, face: jax.Array, label: jax.Array, base_matrix: jax.Array,
                   bg_face: jax.Array, bg_label: jax.Array, bg_matrix: jax.Array,
                   resolution: int) -> tuple[jax.Array, jax.Array]:
    """One training pair (image float32 [R,R,3], binary mask [R,R,1]); see the module docstring.
    bg_* is another labelled face, the background-swap partner."""
    keys = jax.random.split(key, 12)
    u = jax.random.uniform(keys[0], (12,))
    image, mask = _geometry(keys[1], face, label, base_matrix, resolution)

    bg, bg_mask = _background(keys[2], bg_face, bg_label, bg_matrix, resolution)
    c = 1.0 - (1.0 - bg_mask) * (1.0 - mask)
    rnd = 0.15 + 0.85 * u[1]
    swapped = image * c + (1.0 - c) * (image * rnd + bg * (1.0 - rnd))
    image = jnp.where(u[2] < 0.5, swapped, image)

    flare_k = 2.0 * jnp.floor(resolution / 8.0 + u[3] * (resolution / 2.0 - resolution / 8.0)) + 1.0
    flare_k = jnp.minimum(flare_k, resolution - 1.0)
    for region, p in ((mask, u[4]), (1.0 - mask, u[5])):
        flared = jnp.clip(image + gaussian_blur(image * region, kernel_sigma(flare_k), flare_k // 2), 0.0, 1.0)
        image = jnp.where(p < 0.5, flared, image)

    circle = faded_circle(keys[3], resolution)
    image = image + circle * (random_recolour(keys[4], image) - image)

    small_k = 1.0 + jnp.floor(u[6] * 5.0)  # 1..5
    blurred = gaussian_blur(image, kernel_sigma(small_k), small_k // 2)
    amount = jnp.where(u[7] < 0.5, 1.0, 3.0)
    sharpened = jnp.clip(image + amount * (image - blurred), 0.0, 1.0)
    blur_k = 2.0 * jnp.floor(u[8] * 5.0) + 1.0  # 1, 3, .., 9
    soft = gaussian_blur(image, jnp.maximum(kernel_sigma(blur_k), 0.3), blur_k // 2)
    sharpen_branch = u[9] < 0.5
    use_filter = u[10] < 0.25
    filtered = jnp.where(sharpen_branch, sharpened, soft)
    circle = faded_circle(keys[5], resolution)
    image = jnp.where(use_filter, image + circle * (filtered - image), image)

    v = jax.random.uniform(keys[6], (3,))
    resized = down_up_resize(image, 0.25 + 0.75 * v[0], v[1] < 0.5)
    circle = faded_circle(keys[7], resolution)
    image = jnp.where(v[2] < 0.25, image + circle * (resized - image), image)
    return jnp.clip(image, 0.0, 1.0), mask


def augment_batch(seed: int, step: jax.Array, batch: dict[str, jax.Array],
                  resolution: int) -> tuple[jax.Array, jax.Array]:
    """batch: faces uint8 [B,S,S,3], targets uint8 [B,S,S,1], base_matrices [B,2,3], sample_ids
    int32 [B] -> (images float32 [B,R,R,3], masks {0,1} [B,R,R,1])."""
    keys = sample_keys(seed, step, batch["sample_ids"])
    partner = {k: jnp.roll(batch[k], 1, axis=0) for k in ("faces", "targets", "base_matrices")}
    return jax.vmap(augment_sample, in_axes=(0,) * 7 + (None,))(
        keys, batch["faces"], batch["targets"], batch["base_matrices"],
        partner["faces"], partner["targets"], partner["base_matrices"], resolution)
