"""SAEHD's per-sample augmentation on the device (DFL_SPEC §3.6): 4 outputs per face.

For each src and dst face: `warped` (the network input: elastic warp + affine + flip), `target`
(affine + flip), `target_mask` (the face mask, same transform) and `target_em` (eyes and mouth
mask times the face mask binarised at 0.5, same transform, divided by its maximum). All four outputs of a
sample share its random affine and flip; only the input gets the elastic warp. src samples may
then be recoloured toward the dst target of the same batch position (`ct_mode`), and the src input
gets the HSV jitter.

Deliberate change from DFL: ONE resampling per output. DFL resamples a face up to three times
(re-crop to the model's face type, elastic remap, warpAffine), blurring it each time. Here each
output pixel is mapped back through flip^-1 -> affine^-1 -> elastic map (input only) ->
re-crop^-1 (`base_matrices`: faceset-face pixels -> model-face pixels, computed on the host from
the stored landmarks) and the stored uint8 face is sampled once: bicubic (OpenCV's a = -0.75) with
replicated borders for images, bilinear with a zero border for masks. It is sharper and cheaper;
one visible difference is that content rotated in from outside the model crop comes from the
faceset face (when it holds more, e.g. whole_face -> full) instead of replicated crop edges.
Other choices: models narrower than 64 px draw their warp and affine at 64 px as DFL does (by
composing a resize); HSV and colour transfer are applied after sampling (DFL does them before
warping; both are per-pixel maps, so only the interpolation order differs), and rct maps the src
input with the src target's statistics so both get the same colour map, as in DFL. Like DFL's
training ct, the statistics are over the whole crop (no masks). The elastic map drops DFL's
half-pixel shift between input and target (see `warp`).

Randomness: every sample's key is derived from (seed, step, its global index in the faceset) and
the side, never from its batch position or the device, so a batch gives the same result in one
call, split in halves, or sharded over any number of devices.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from engine.augment.color import apply_hsv_jitter, random_hsv_jitter
from engine.augment.geometry import (
    compose,
    invert_affine,
    jitter_matrix,
    random_affine_jitter,
    resize_matrix,
    transform_points,
)
from engine.augment.resample import pixel_grid, sample
from engine.augment.warp import elastic_map, random_elastic_warp
from engine.color_transfer import color_transfer, rct_apply, rct_moments

FLIP_PROB = 0.4  # DFL's random_src_flip / random_dst_flip probability
MIN_WARP_WIDTH = 64  # DFL draws warps for narrower images at this width
CT_MODES = ("none", "rct", "lct", "mkl", "idt", "sot")  # DFL's training choices (§3.2)
SCALE_RANGE = (-0.15, 0.15)  # DFL's gen_warp_params default: zoom U[1/1.15, 1.15]
INPUT_KEYS = ("faces", "masks", "eyes_mouth_masks", "base_matrices", "sample_ids")
_SIDE_STREAM = {"src": 0, "dst": 1}
_CT_STREAM = 3  # folded into a src sample's key for its colour transfer draws (idt, sot)


def sample_keys(seed: int, step: int | jax.Array, sample_ids: jax.Array, stream: int = 0) -> jax.Array:
    """One PRNG key per sample from (seed, step, global sample id): [B] typed keys.

    `stream` separates independent uses of the same ids (augment_batch: 0 = src, 1 = dst).
    """
    step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)
    return jax.vmap(lambda sample_id: jax.random.fold_in(step_key, sample_id))(sample_ids)


def augment_batch(
    seed: int,
    step: int | jax.Array,
    src: Mapping[str, jax.Array],
    dst: Mapping[str, jax.Array],
    *,
    resolution: int,
    random_warp: bool,
    src_flip: bool,
    dst_flip: bool,
    hsv_power: float,
    ct_mode: str = "none",
    scale_range: Sequence[float] = SCALE_RANGE,
    rotation_range: Sequence[float] = (-10.0, 10.0),
    shift_range: Sequence[float] = (-0.05, 0.05),
    input_is_target: bool | jax.Array = False,
) -> dict[str, jax.Array]:
    """Augments one src and one dst batch; jittable (all keyword options are static Python values).

    src, dst: faces uint8 [B,S,S,3], masks uint8 [B,S,S,1], eyes_mouth_masks uint8 [B,S,S,1],
    base_matrices float32 [B,2,3], sample_ids int32 [B]. Returns float32 in [0, 1]: warped_src,
    target_src [B,r,r,3]; target_srcm, target_srcm_em [B,r,r,1]; the same four for dst.
    hsv_power (0 = off) jitters the src input; ct_mode recolours the src input and target toward the
    dst target at the same batch position: "rct" after sampling (using the src target's statistics
    for both), "lct", "mkl", "idt", "sot" on the stored src face before sampling.
    rotation_range (degrees) and shift_range (fractions of the width) exist so tests can turn the
    jitter off; training keeps DFL's defaults (Quick96 narrows scale_range).
    input_is_target may be traced: where it is true, every input is exactly its target (no elastic
    warp, no HSV jitter), as on Quick96's no-warp steps, without compiling a second program.
    """
    if ct_mode not in CT_MODES:
        raise ValueError(f"ct_mode {ct_mode!r} is not supported; expected one of {CT_MODES}")
    ranges = dict(rotation_range=tuple(rotation_range), scale_range=tuple(scale_range),
                  shift_range=tuple(shift_range))
    keys, outputs = {}, {}
    for side, batch, flip in (("dst", dst, dst_flip), ("src", src, src_flip)):  # src may need dst's targets
        missing = [k for k in INPUT_KEYS if k not in batch]
        if missing:
            raise ValueError(f"{side} batch lacks {missing}")
        keys[side] = sample_keys(seed, step, batch["sample_ids"], stream=_SIDE_STREAM[side])
        faces = batch["faces"]
        if side == "src" and ct_mode not in ("none", "rct"):
            faces = _recolour_faces(ct_mode, keys[side], faces, outputs["dst"]["target"])
        augment_one = functools.partial(_augment_sample, resolution=resolution, random_warp=random_warp,
                                        flip_prob=FLIP_PROB if flip else 0.0, ranges=ranges)
        outputs[side] = jax.vmap(augment_one)(
            keys[side], faces, batch["masks"], batch["eyes_mouth_masks"], batch["base_matrices"])

    s, d = outputs["src"], outputs["dst"]
    if ct_mode == "rct":
        from_moments, to_moments = rct_moments(s["target"]), rct_moments(d["target"])
        s["warped"] = rct_apply(s["warped"], from_moments, to_moments)
        s["target"] = rct_apply(s["target"], from_moments, to_moments)
    if hsv_power > 0:
        jitters = jax.vmap(lambda key: random_hsv_jitter(_streams(key)[2], hsv_power))(keys["src"])
        s["warped"] = jax.vmap(apply_hsv_jitter)(s["warped"], jitters)

    result = {}
    for side, out in outputs.items():
        if input_is_target is not False:  # a select, so the input is bit for bit the target
            out["warped"] = jnp.where(input_is_target, out["target"], out["warped"])
        result[f"warped_{side}"] = out["warped"]
        result[f"target_{side}"] = out["target"]
        result[f"target_{side}m"] = out["target_mask"]
        result[f"target_{side}m_em"] = out["target_em"]
    return result


def _recolour_faces(mode: str, keys: jax.Array, faces: jax.Array, references: jax.Array) -> jax.Array:
    """src faces (uint8, faceset size) recoloured toward the dst targets of their batch positions,
    before any sampling, as DFL recolours the sample before warping it: the input and the target
    then share one colour map whatever the transfer (lct, mkl, idt, sot are not per-pixel-only
    maps like rct's Lab shift). Unmasked, like DFL's training ct. Returns float32 in 0..255."""
    def one(key: jax.Array, face: jax.Array, reference: jax.Array) -> jax.Array:
        key = jax.random.fold_in(key, _CT_STREAM)
        return color_transfer(mode, face.astype(jnp.float32) / 255.0, reference, key=key) * 255.0

    return jax.vmap(one)(keys, faces, references)


def _streams(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A sample's independent streams: (affine + flip, elastic warp, HSV)."""
    affine, warp, hsv = jax.random.split(key, 3)
    return affine, warp, hsv


def _augment_sample(
    key: jax.Array,
    face: jax.Array,
    mask: jax.Array,
    eyes_mouth_mask: jax.Array,
    base_matrix: jax.Array,
    *,
    resolution: int,
    random_warp: bool,
    flip_prob: float,
    ranges: dict,
) -> dict[str, jax.Array]:
    """The 4 geometric outputs of one sample (see the module docstring for the chain)."""
    affine_key, warp_key, _ = _streams(key)
    width = max(resolution, MIN_WARP_WIDTH)
    jitter = random_affine_jitter(affine_key, flip_prob=flip_prob, **ranges)
    output_to_warp = compose(invert_affine(jitter_matrix(jitter, width)), resize_matrix(resolution, width))
    warp_to_face = compose(invert_affine(base_matrix.astype(jnp.float32)), resize_matrix(width, resolution))

    wx, wy = transform_points(output_to_warp, *pixel_grid(resolution, resolution))
    fx, fy = transform_points(warp_to_face, wx, wy)
    target = _sample_face(face, fx, fy)
    target_mask = sample(mask, fx, fy, method="linear", border="constant") / 255.0
    # The eyes/mouth weight only counts inside the face mask; it is rescaled to peak at 1.
    em_source = eyes_mouth_mask.astype(jnp.float32) * (mask >= 128)
    target_em = sample(em_source, fx, fy, method="linear", border="constant")
    em_peak = jnp.max(target_em)
    target_em = target_em / jnp.where(em_peak > 0, em_peak, 1.0)
    if random_warp:
        ex, ey = elastic_map(random_elastic_warp(warp_key, width), wx, wy)
        warped = _sample_face(face, *transform_points(warp_to_face, ex, ey))
    else:
        warped = target
    return {"warped": warped, "target": target, "target_mask": jnp.clip(target_mask, 0.0, 1.0),
            "target_em": jnp.clip(target_em, 0.0, 1.0)}


def _sample_face(face: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Bicubic, replicated border, scaled to [0, 1] and clipped (the kernel overshoots)."""
    return jnp.clip(sample(face, x, y, method="cubic", border="replicate") / 255.0, 0.0, 1.0)
