"""The compiled per-face merge (DFL_SPEC §4.3), on a batch of faces cut from their frames.

`merge_faces` runs, for N faces in regions of one bucket size S, everything DFL's
`MergeMaskedFace` does per face on the CPU: crop the dst face, predict the swap and its masks,
build and process the working mask, warp mask and face back into the region, colour-transfer,
histogram-match or Poisson-blend, and the face-space post-processing. Static options choose the
program; numeric options are traced [N] arrays (see `options`), so a keyframe file never
recompiles it. Faces that DFL would skip (a mask under 4 px) come back with a zero mask.

Each face is processed in its region of the frame rather than on the whole frame, which gives
the same pixels (`geometry` keeps a margin around the crop squares): Poisson blending still
solves on OpenCV's domain, the bounding box of the mask (`poisson`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from engine import color_transfer
from engine.augment.resample import pixel_grid, sample, warp_affine
from engine.merge import filters, mask_ops, poisson
from engine.merge.options import StaticOptions, uses_xseg

_MASK_SUBRES = 4  # DFL processes the mask at 4x the model resolution
_MIN_MASK = 1.0 / 255.0
_SKIP_LEVEL = 0.1  # a face whose mask >= 0.1 spans fewer than 4 px is skipped (DFL)
_SKIP_PIXELS = 4
_XSEG_FLOOR = 0.1  # DFL's XSeg extract() zeroes probabilities below this


def _to_face(image: jax.Array, mat: jax.Array, size: int, method: str) -> jax.Array:
    """Region -> face crop (`mat` maps region to face pixels), zero outside the region."""
    return warp_affine(image, mat, (size, size), method=method, border="constant")


def _to_region(face: jax.Array, mat: jax.Array, size: int, method: str) -> jax.Array:
    """Face -> region (OpenCV's WARP_INVERSE_MAP with the region -> face `mat`), zero outside the face."""
    return warp_affine(face, mat, (size, size), method=method, border="constant", inverse_map=True)


def _upsample(mask: jax.Array, factor: int) -> jax.Array:
    """cv2.resize(INTER_CUBIC) by an integer factor: half-pixel centres, replicated edges."""
    size = mask.shape[0] * factor
    x, y = pixel_grid(size, size)
    return sample(mask, (x + 0.5) / factor - 0.5, (y + 0.5) / factor - 0.5, method="cubic", border="replicate")


def _downsample4(mask: jax.Array) -> jax.Array:
    """cv2.resize(INTER_LINEAR) by 1/4: each output pixel samples at 4i + 1.5, the mean of two taps."""
    rows = (mask[1::4] + mask[2::4]) / 2.0
    return (rows[:, 1::4] + rows[:, 2::4]) / 2.0


def _working_mask(mode: str, hull: jax.Array, prd_mask: jax.Array, dst_mask: jax.Array,
                  xseg_prd: jax.Array | None, xseg_dst: jax.Array | None) -> jax.Array:
    """The mask_mode's mask at model resolution, values under 1/255 zeroed (§4.3 step 4)."""
    masks = {
        "full": lambda: jnp.ones_like(prd_mask),
        "dst": lambda: hull,
        "learned-prd": lambda: prd_mask,
        "learned-dst": lambda: dst_mask,
        "learned-prd*learned-dst": lambda: prd_mask * dst_mask,
        "learned-prd+learned-dst": lambda: jnp.clip(prd_mask + dst_mask, 0.0, 1.0),
        "xseg-prd": lambda: xseg_prd,
        "xseg-dst": lambda: xseg_dst,
        "xseg-prd*xseg-dst": lambda: xseg_prd * xseg_dst,
        "learned-prd*learned-dst*xseg-prd*xseg-dst": lambda: prd_mask * dst_mask * xseg_prd * xseg_dst,
    }
    mask = masks[mode]()
    return jnp.where(mask < _MIN_MASK, 0.0, mask)


def _xseg_masks(xseg: nnx.Module, faces: jax.Array) -> jax.Array:
    """XSeg's mask of model-resolution faces [N,r,r,3], as DFL's merger uses it: the faces resized to
    the XSeg resolution, sigmoid probabilities resized back, values under 0.1 zeroed (no binarising)."""
    n, r = faces.shape[0], faces.shape[1]
    res = xseg.resolution
    probs = jax.nn.sigmoid(xseg(jax.image.resize(faces, (n, res, res, 3), "linear")).astype(jnp.float32))
    probs = jnp.clip(jax.image.resize(probs, (n, r, r, 1), "linear"), 0.0, 1.0)
    return jnp.where(probs < _XSEG_FLOOR, 0.0, probs)


def _too_small(mask: jax.Array) -> jax.Array:
    """True when the bounding box of mask >= 0.1 is under 4 px wide or high (or empty)."""
    on = mask[..., 0] >= _SKIP_LEVEL

    def extent(any_along: jax.Array) -> jax.Array:
        n = any_along.shape[0]
        first = jnp.argmax(any_along)
        last = n - 1 - jnp.argmax(any_along[::-1])
        return jnp.where(any_along.any(), last - first + 1, 0)

    return (extent(on.any(axis=0)) < _SKIP_PIXELS) | (extent(on.any(axis=1)) < _SKIP_PIXELS)


def _recolour(mode: str, face: jax.Array, reference: jax.Array, area: jax.Array, key: jax.Array) -> jax.Array:
    if mode == "none":
        return face
    return color_transfer.color_transfer(mode, face, reference, area, area, key=key)


def _hist_match(face: jax.Array, reference: jax.Array, area: jax.Array, threshold: jax.Array,
                masked: bool) -> jax.Array:
    mask = area if masked else None
    return color_transfer.hist_match(face, reference, threshold, mask, mask)


def _merge_one(static: StaticOptions, resolution: int, region: jax.Array, background: jax.Array,
               dst_face: jax.Array, prd: jax.Array, prd_mask: jax.Array, dst_mask: jax.Array,
               xseg_prd: jax.Array | None, xseg_dst: jax.Array | None, hull: jax.Array, face_mat: jax.Array,
               out_mat: jax.Array, num: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One face: (region with the face merged in [S, S, 3] in [0, 1], its alpha [S, S, 1])."""
    r, size, method, mode = resolution, region.shape[0], static.interpolation, static.mode
    raw = mode.startswith("raw")
    mask = _working_mask(static.mask_mode, hull, prd_mask, dst_mask, xseg_prd, xseg_dst)
    fine = _upsample(mask, _MASK_SUBRES)
    if not raw:  # erode/blur in the 4r space, padded by r (DFL's units)
        fine = mask_ops.process_mask(fine, num["erode"], num["blur"], r)
    alpha = jnp.clip(_to_region(fine, out_mat * _MASK_SUBRES, size, "cubic"), 0.0, 1.0)
    alpha = jnp.where(alpha < _MIN_MASK, 0.0, alpha)
    area = (_downsample4(fine) > 0).astype(jnp.float32)
    if mode == "original":
        return region, alpha
    if mode == "raw-rgb":  # the whole predicted square pasted hard
        return _paste_face(prd, region, out_mat, method), alpha

    alpha = jnp.where(_too_small(alpha), 0.0, alpha)
    seamless = mode.startswith("seamless")
    if not seamless:
        prd = _recolour(static.color_transfer, prd, dst_face, area, key)
    if mode == "hist-match":
        prd = _hist_match(prd, dst_face, area, num["hist_match_threshold"], static.masked_hist_match)
    warped = _paste_face(prd, region, out_mat, method)
    if seamless:
        binary = (alpha > _SKIP_LEVEL).astype(jnp.float32)
        warped = poisson.seamless_clone(region, warped, binary)
    out = region * (1.0 - alpha) + warped * alpha

    # Face-space post-processing (§4.3 step 7.5), recomposited over the (denoised/degraded) frame.
    face = _to_face(out, face_mat, r, method)
    if seamless:
        face = _recolour(static.color_transfer, face, dst_face, area, key)
    if mode == "seamless-hist-match":
        face = _hist_match(face, dst_face, area, num["hist_match_threshold"], static.masked_hist_match)
    face = mask_ops.motion_blur(face, num["motion_kernel"], num["motion_deg"])
    # a negative amount blurs whatever the sharpen mode (DFL)
    sharpen = None if static.sharpen_mode == "none" else static.sharpen_mode
    face = filters.blur_sharpen(face, sharpen, num["blursharpen_amount"])
    post = (num["motion_kernel"] >= 1) | (num["blursharpen_amount"] != 0) | (num["frame_ops"] > 0)
    if (seamless and static.color_transfer != "none") or mode == "seamless-hist-match":
        post = jnp.asarray(True)
    redone = background * (1.0 - alpha) + _to_region(face, face_mat, size, method) * alpha
    return jnp.where(post, redone, out), alpha


def _paste_face(face: jax.Array, region: jax.Array, mat: jax.Array, method: str) -> jax.Array:
    """The face warped into the region over the region's own pixels: DFL's warpAffine with
    BORDER_TRANSPARENT onto the frame, as OpenCV 5 does it (measured): a pixel is written where
    floor(u) and floor(v) of its face coordinate lie in [-1, r], taps beyond the face read 0, the
    rest keeps the frame. Seamless modes see these pixels in their guidance field when the mask
    reaches the crop's edge."""
    size, r = region.shape[0], face.shape[0]
    x, y = pixel_grid(size, size)
    u = jnp.floor(mat[0, 0] * x + mat[0, 1] * y + mat[0, 2])
    v = jnp.floor(mat[1, 0] * x + mat[1, 1] * y + mat[1, 2])
    inside = ((u >= -1) & (u <= r) & (v >= -1) & (v <= r))[..., None]
    return jnp.where(inside, _to_region(face, mat, size, method), region)


def merge_faces(graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array], num: dict[str, jax.Array],
                keys: jax.Array, xseg_params: Any = None, *, static: StaticOptions, resolution: int,
                compute_dtype: Any = jnp.float32, xseg_graphdef: nnx.GraphDef | None = None) -> dict[str, jax.Array]:
    """N faces of one region size -> {"region": uint8 [N,S,S,3], "alpha": uint8 [N,S,S,1]}, or for
    raw-predict {"face": uint8 [N,r,r,3], "alpha": uint8 [N,r,r,1]} (the predicted crop itself).

    batch: "regions" uint8 [N,S,S,3] and, only when a frame is denoised or degraded, "backgrounds"
    (the changed frame behind the face; absent: the regions themselves), "face_mats"/"out_mats" float32 [N,2,3] (region ->
    face), "hulls" uint8 [N,r,r,1]. num: the numeric options as float32 [N] arrays plus
    "motion_power" (px), "motion_deg" and "frame_ops" (non-zero when the frame background changed).
    XSeg mask modes need `xseg_graphdef` and `xseg_params` (a trained XSeg): XSeg-prd segments the
    predicted face, XSeg-dst the dst face, both at the model's crop.
    """
    r = resolution
    regions = batch["regions"].astype(jnp.float32) / 255.0
    backgrounds = batch["backgrounds"].astype(jnp.float32) / 255.0 if "backgrounds" in batch else regions
    dst_faces = jax.vmap(lambda im, m: _to_face(im, m, r, "cubic"))(regions, batch["face_mats"])
    model = nnx.merge(graphdef, params)
    prd, prd_mask, dst_mask = (jnp.clip(x.astype(jnp.float32), 0.0, 1.0)
                               for x in model.swap(dst_faces.astype(compute_dtype)))
    hulls = batch["hulls"].astype(jnp.float32) / 255.0
    xseg_prd = xseg_dst = None
    if uses_xseg(static.mask_mode):
        xseg = nnx.merge(xseg_graphdef, xseg_params)
        xseg_prd, xseg_dst = _xseg_masks(xseg, prd), _xseg_masks(xseg, dst_faces)
    if static.mode == "raw-predict":
        mask = jax.vmap(lambda *a: _working_mask(static.mask_mode, *a))(hulls, prd_mask, dst_mask, xseg_prd, xseg_dst)
        return {"face": _to_uint8(prd), "alpha": _to_uint8(mask)}
    num = dict(num, motion_kernel=mask_ops.motion_kernel_size(num["motion_power"], num["motion_blur_power"]))
    merged, alpha = jax.vmap(
        lambda *a: _merge_one(static, r, *a))(regions, backgrounds, dst_faces, prd, prd_mask, dst_mask, xseg_prd,
                                              xseg_dst, hulls, batch["face_mats"], batch["out_mats"], num, keys)
    return {"region": _to_uint8(merged), "alpha": _to_uint8(alpha)}


def _to_uint8(x: jax.Array) -> jax.Array:
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)
