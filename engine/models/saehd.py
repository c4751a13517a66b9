"""SAEHD autoencoders (DFL_SPEC §3.3): DF and LIAE with the -u, -d, -t options in any combination.

`SAEHD(cfg.model, rngs=..., dtype=...)` builds the components DFL saves as separate files
(encoder, inter / inter_AB + inter_B, decoder_src + decoder_dst / decoder) and runs the three
outputs a training step needs: src->src, dst->dst and the swap src->dst, each RGB + learned mask.
Computation runs in `dtype` (bf16 on GPU); parameters are float32 and outputs are returned as
float32 in [0,1].

Reads cfg.model fields: archi, resolution, face_type, ae_dims, e_dims, d_dims, d_mask_dims.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from engine.models.layers import (Downscale, DownscaleBlock, ResidualBlock, Upscale, conv2d,
                                  conv_output_size, dense, depth_to_space, flatten_channel_major,
                                  pixel_norm, unflatten_channel_major)
from preprocessing.face_types import FaceType

_ARCHI_HELP = "expected 'df' or 'liae', optionally '-' and any of u, d, t (e.g. 'liae-ud', 'df-udt')"

# Inclusive ranges from DFL_SPEC §3.2. The lower bounds of resolution (DFL: 64) and d_mask_dims
# (DFL: 16) are lowered so that the `tiny` presets train in seconds on a CPU.
_RANGES = {
    "resolution": (32, 640),
    "ae_dims": (32, 1024),
    "e_dims": (16, 256),
    "d_dims": (16, 256),
    "d_mask_dims": (8, 256),
}
# DFL rounds these up to even; we ask for the even value instead of changing it silently.
_EVEN = ("e_dims", "d_dims")
_SAEHD_FACE_TYPES = (FaceType.HALF, FaceType.MID_FULL, FaceType.FULL, FaceType.WHOLE_FACE,
                     FaceType.HEAD)


class Archi(NamedTuple):
    """A parsed archi string: kind 'df'|'liae'; u = pixel-norm code, d = double res, t = deeper."""
    kind: str
    u: bool
    d: bool
    t: bool


def parse_archi(archi: str) -> Archi:
    """'liae-udt' -> Archi('liae', True, True, True); ValueError on anything else."""
    kind, sep, opts = str(archi).strip().lower().partition("-")
    if kind not in ("df", "liae") or (sep and not opts):
        raise ValueError(f"archi {archi!r}: {_ARCHI_HELP}")
    bad = sorted(set(opts) - set("udt"))
    if bad:
        raise ValueError(f"archi {archi!r}: unknown option(s) {', '.join(bad)}; {_ARCHI_HELP}")
    if len(set(opts)) != len(opts):
        raise ValueError(f"archi {archi!r}: an option is repeated; {_ARCHI_HELP}")
    return Archi(kind, "u" in opts, "d" in opts, "t" in opts)


def validate_model_config(cfg) -> None:
    """Raises ValueError naming the first bad field of cfg.model; the model needs nothing else."""
    archi = parse_archi(cfg.archi)
    for name, (lo, hi) in _RANGES.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"model.{name}={value!r}: must be an integer in {lo}..{hi}")
        if name in _EVEN and value % 2:
            raise ValueError(f"model.{name}={value}: must be even (DFL rounds it up to {value + 1})")
    multiple = 32 if archi.d else 16
    if cfg.resolution % multiple:
        why = " for -d archis" if archi.d else ""
        raise ValueError(f"model.resolution={cfg.resolution}: must be a multiple of {multiple}{why} "
                         f"(archi {cfg.archi!r})")
    try:
        face_type = FaceType.from_flag(cfg.face_type)
    except (ValueError, AttributeError):
        face_type = None
    if face_type not in _SAEHD_FACE_TYPES:
        raise ValueError(f"model.face_type={cfg.face_type!r}: SAEHD trains half, mid_full, full, "
                         "whole_face or head")


def encoder_out_features(archi: Archi, resolution: int, e_dims: int) -> int:
    """Length of the flattened encoder output: 8*e channels after 4 (5 with -t) k5 stride-2 convs."""
    size = resolution
    for _ in range(5 if archi.t else 4):
        size = conv_output_size(size, 5, 2)
    return size * size * 8 * e_dims


class Encoder(nnx.Module):
    """Image [B,res,res,3] -> flat code [B, 8e * (res/16)^2] (res/32 with -t), pixel-normed with -u."""

    def __init__(self, archi: Archi, e_dims: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        e, kw = e_dims, dict(dtype=dtype, rngs=rngs)
        if archi.t:
            self.body = nnx.Sequential(
                Downscale(3, e, **kw), ResidualBlock(e, **kw), Downscale(e, 2 * e, **kw),
                Downscale(2 * e, 4 * e, **kw), Downscale(4 * e, 8 * e, **kw),
                Downscale(8 * e, 8 * e, **kw), ResidualBlock(8 * e, **kw))
        else:
            self.body = DownscaleBlock(3, e, n=4, kernel_size=5, **kw)
        self.use_pixel_norm = archi.u

    def __call__(self, x: jax.Array) -> jax.Array:
        x = flatten_channel_major(self.body(x))
        return pixel_norm(x) if self.use_pixel_norm else x


class Inter(nnx.Module):
    """Flat code -> Dense(ae_dims) -> Dense(low*low*ae_out) -> [B,low,low,ae_out] (+ Upscale unless -t).

    The two Dense layers are linear (no activation), as in DFL.
    """

    def __init__(self, in_features: int, ae_dims: int, ae_out: int, low_res: int, upscale: bool, *,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        self.low_res, self.ae_out = low_res, ae_out
        self.dense1 = dense(in_features, ae_dims, dtype=dtype, rngs=rngs)
        self.dense2 = dense(ae_dims, low_res * low_res * ae_out, dtype=dtype, rngs=rngs)
        self.upscale = Upscale(ae_out, ae_out, dtype=dtype, rngs=rngs) if upscale else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = unflatten_channel_major(self.dense2(self.dense1(x)), self.low_res, self.low_res,
                                    self.ae_out)
        return self.upscale(x) if self.upscale is not None else x


class Decoder(nnx.Module):
    """Code from the inter(s) -> (RGB [B,res,res,3], mask [B,res,res,1]), float32 sigmoid outputs.

    Three Upscale+Residual stages (four with -t) for RGB and plain Upscales for the mask. With -d
    the RGB branch stops at half resolution and four heads (1x1 and three 3x3 convs, 3 channels
    each) are depth-to-spaced to full resolution, while the mask branch gets one more Upscale.
    """

    def __init__(self, in_ch: int, d_dims: int, d_mask_dims: int, archi: Archi, *,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        d, m, kw = d_dims, d_mask_dims, dict(dtype=dtype, rngs=rngs)
        rgb_widths = [8 * d, 8 * d, 4 * d, 2 * d] if archi.t else [8 * d, 4 * d, 2 * d]
        mask_widths = [8 * m, 8 * m, 4 * m, 2 * m] if archi.t else [8 * m, 4 * m, 2 * m]
        mask_widths += [m] if archi.d else []
        rgb = []
        for cin, cout in zip([in_ch] + rgb_widths[:-1], rgb_widths):
            rgb += [Upscale(cin, cout, **kw), ResidualBlock(cout, **kw)]
        self.rgb = nnx.Sequential(*rgb)
        self.mask = nnx.Sequential(*[Upscale(cin, cout, **kw)
                                     for cin, cout in zip([in_ch] + mask_widths[:-1], mask_widths)])
        self.double_res = archi.d
        head_kernels = [1, 3, 3, 3] if archi.d else [1]
        self.rgb_heads = nnx.List([conv2d(2 * d, 3, k, **kw) for k in head_kernels])
        self.mask_head = conv2d(mask_widths[-1], 1, 1, **kw)

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.rgb(z)
        rgb = jnp.concatenate([head(x) for head in self.rgb_heads], axis=-1)
        if self.double_res:
            rgb = depth_to_space(rgb)
        mask = self.mask_head(self.mask(z))
        return (jax.nn.sigmoid(rgb.astype(jnp.float32)),
                jax.nn.sigmoid(mask.astype(jnp.float32)))


def _concat_channels(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.concatenate([a, b], axis=-1)


class SAEHD(nnx.Module):
    """DF: shared encoder + inter, one decoder per identity. LIAE: shared encoder, inter_AB (both
    identities) and inter_B (dst only), one shared decoder. See `inter_codes` for the wiring.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        validate_model_config(cfg)
        archi = parse_archi(cfg.archi)
        self.archi, self.resolution, self.dtype = archi, cfg.resolution, dtype
        kw = dict(dtype=dtype, rngs=rngs)
        in_features = encoder_out_features(archi, cfg.resolution, cfg.e_dims)
        low_res = cfg.resolution // (32 if archi.d else 16)
        self.encoder = Encoder(archi, cfg.e_dims, **kw)
        if archi.kind == "df":
            self.inter = Inter(in_features, cfg.ae_dims, cfg.ae_dims, low_res, not archi.t, **kw)
            self.decoder_src = Decoder(cfg.ae_dims, cfg.d_dims, cfg.d_mask_dims, archi, **kw)
            self.decoder_dst = Decoder(cfg.ae_dims, cfg.d_dims, cfg.d_mask_dims, archi, **kw)
        else:
            ae_out = 2 * cfg.ae_dims
            self.inter_AB = Inter(in_features, cfg.ae_dims, ae_out, low_res, not archi.t, **kw)
            self.inter_B = Inter(in_features, cfg.ae_dims, ae_out, low_res, not archi.t, **kw)
            self.decoder = Decoder(2 * ae_out, cfg.d_dims, cfg.d_mask_dims, archi, **kw)

    def components(self) -> dict[str, nnx.Module]:
        """The parts DFL saves as separate files; the train step masks inter_AB's gradients with it."""
        if self.archi.kind == "df":
            names = ("encoder", "inter", "decoder_src", "decoder_dst")
        else:
            names = ("encoder", "inter_AB", "inter_B", "decoder")
        return {name: getattr(self, name) for name in names}

    def encode(self, x: jax.Array) -> jax.Array:
        """Faces [B,res,res,3] in [0,1] -> flat encoder output, in the compute dtype."""
        return self.encoder(x.astype(self.dtype))

    def inter_codes(self, src: jax.Array, dst: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The decoder inputs (src_code, dst_code, swap_code); also what code-level losses look at.

        DF: z = inter(encoder(x)) and the swap decodes z_dst with decoder_src.
        LIAE: src = [AB(e_s), AB(e_s)], dst = [B(e_d), AB(e_d)], swap = [AB(e_d), AB(e_d)]
        (channel concatenation).
        """
        n = src.shape[0]
        feats = self.encode(jnp.concatenate([src, dst], axis=0))
        if self.archi.kind == "df":
            z = self.inter(feats)
            return z[:n], z[n:], z[n:]
        ab = self.inter_AB(feats)
        ab_src, ab_dst = ab[:n], ab[n:]
        b_dst = self.inter_B(feats[n:])
        return (_concat_channels(ab_src, ab_src), _concat_channels(b_dst, ab_dst),
                _concat_channels(ab_dst, ab_dst))

    def __call__(self, warped_src: jax.Array, warped_dst: jax.Array, swap: bool = True) -> dict[str, jax.Array]:
        """Both batches [B,res,res,3] -> the predictions, float32 in [0,1].

        With swap=False the swap (pred_src_dst, pred_src_dstm) is left out: the training step needs
        it only for the style losses, and decoding it inside the same batched decoder call would
        cost its forward and a backward of zeros that XLA cannot prune (DFL's TF graph skips it too).
        """
        n = warped_src.shape[0]
        code_src, code_dst, code_swap = self.inter_codes(warped_src, warped_dst)
        if self.archi.kind == "df":
            rgb, mask = self.decoder_src(jnp.concatenate([code_src, code_swap], axis=0) if swap else code_src)
            dst_dst, dst_dstm = self.decoder_dst(code_dst)
        else:
            codes = [code_src, code_dst] + ([code_swap] if swap else [])
            rgb, mask = self.decoder(jnp.concatenate(codes, axis=0))
            dst_dst, dst_dstm = rgb[n:2 * n], mask[n:2 * n]
        preds = {"pred_src_src": rgb[:n], "pred_src_srcm": mask[:n],
                 "pred_dst_dst": dst_dst, "pred_dst_dstm": dst_dstm}
        if swap:
            preds.update(pred_src_dst=rgb[-n:], pred_src_dstm=mask[-n:])
        return preds

    def swap(self, dst: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """dst faces -> (pred_src_dst, pred_src_dstm, pred_dst_dstm): the merge program's forward.

        The third output is the dst decoder's mask ("learned-dst" in DFL's merger); its RGB is not
        needed, so LIAE decodes the dst code once more for the mask only when it is asked for.
        """
        feats = self.encode(dst)
        if self.archi.kind == "df":
            z = self.inter(feats)
            rgb, mask = self.decoder_src(z)
            return rgb, mask, self.decoder_dst(z)[1]
        ab = self.inter_AB(feats)
        codes = jnp.concatenate([_concat_channels(ab, ab), _concat_channels(self.inter_B(feats), ab)], axis=0)
        rgb, mask = self.decoder(codes)
        n = dst.shape[0]
        return rgb[:n], mask[:n], mask[n:]


def param_counts(model: SAEHD) -> dict[str, int]:
    """Trainable parameters per component and in total; works on nnx.eval_shape'd models too."""
    def count(module: nnx.Module) -> int:
        return sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
    counts = {name: count(module) for name, module in model.components().items()}
    counts["total"] = count(model)
    return counts
