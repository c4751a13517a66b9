"""SAEHD's swap forward as a DeepFaceLive `.dfm` graph (DFL_SPEC §3.10).

Input `in_face:0` [N,res,res,3] BGR in [0,1]; outputs, in DeepFaceLive's order, `out_face_mask:0`
(the dst decoder's mask of the dst code, [N,res,res,1]), `out_celeb_face:0` (the swap, BGR
[N,res,res,3]) and `out_celeb_face_mask:0` (the swap's mask). The network was trained on RGB: the
encoder's first conv reads its input channels reversed and the RGB heads write theirs reversed, so
the graph is BGR end to end with no extra ops. Unlike `SAEHD.swap`, only the mask branch runs on
the dst code (its RGB is not an output).
"""
from __future__ import annotations

import numpy as np
import onnx
from flax import nnx

from engine.dfm.graph import IN_FACE, NCHW_TO_NHWC, NHWC_TO_NCHW, OnnxGraph, nhwc_value
from engine.models.layers import (RESIDUAL_SLOPE, UPDOWN_SLOPE, Downscale, DownscaleBlock,
                                  ResidualBlock, Upscale)
from engine.models.saehd import SAEHD, Decoder, Encoder, Inter

OUT_FACE_MASK = "out_face_mask:0"
OUT_CELEB_FACE = "out_celeb_face:0"
OUT_CELEB_FACE_MASK = "out_celeb_face_mask:0"
PIXEL_NORM_EPS = 1e-6  # layers.pixel_norm's default


def _block(g: OnnxGraph, x: str, layer: nnx.Module, name: str, reverse_in: bool = False) -> str:
    """One of the blocks in engine/models/layers.py (or a Sequential of them)."""
    if isinstance(layer, nnx.Sequential):
        for i, sub in enumerate(layer.layers):
            x = _block(g, x, sub, f"{name}/layers/{i}", reverse_in and i == 0)
        return x
    if isinstance(layer, DownscaleBlock):
        return _block(g, x, layer.downs, f"{name}/downs", reverse_in)
    if isinstance(layer, Downscale):
        return g.leaky_relu(g.conv(x, layer.conv, f"{name}/conv", reverse_in=reverse_in), UPDOWN_SLOPE)
    if reverse_in:
        raise ValueError(f"{name}: the input layer must be a Downscale to read BGR")
    if isinstance(layer, Upscale):
        return g.depth_to_space(g.leaky_relu(g.conv(x, layer.conv, f"{name}/conv"), UPDOWN_SLOPE))
    if isinstance(layer, ResidualBlock):
        y = g.leaky_relu(g.conv(x, layer.conv1, f"{name}/conv1"), RESIDUAL_SLOPE)
        y = g.conv(y, layer.conv2, f"{name}/conv2")
        return g.leaky_relu(g.op("Add", [x, y]), RESIDUAL_SLOPE)
    raise TypeError(f"{name}: no ONNX export for {type(layer).__name__}")


def _encoder(g: OnnxGraph, x: str, encoder: Encoder) -> str:
    x = g.op("Flatten", [_block(g, x, encoder.body, "encoder/body", reverse_in=True)], axis=1)
    if encoder.use_pixel_norm:
        x = g.rsqrt_normalise(x, [1], g.const("pixel_norm_eps", np.float32(PIXEL_NORM_EPS)))
    return x


def _inter(g: OnnxGraph, x: str, inter: Inter, name: str) -> str:
    x = g.linear(g.linear(x, inter.dense1, f"{name}/dense1"), inter.dense2, f"{name}/dense2")
    x = g.unflatten(x, inter.ae_out, inter.low_res, inter.low_res)
    return _block(g, x, inter.upscale, f"{name}/upscale") if inter.upscale is not None else x


def _decoder_rgb(g: OnnxGraph, z: str, decoder: Decoder, name: str) -> str:
    """The BGR face (RGB heads with reversed output channels)."""
    x = _block(g, z, decoder.rgb, f"{name}/rgb")
    heads = [g.conv(x, head, f"{name}/rgb_heads/{i}", reverse_out=True)
             for i, head in enumerate(decoder.rgb_heads)]
    x = g.op("Concat", heads, axis=1) if len(heads) > 1 else heads[0]
    return g.op("Sigmoid", [g.depth_to_space(x) if decoder.double_res else x])


def _decoder_mask(g: OnnxGraph, z: str, decoder: Decoder, name: str) -> str:
    x = _block(g, z, decoder.mask, f"{name}/mask")
    return g.op("Sigmoid", [g.conv(x, decoder.mask_head, f"{name}/mask_head")])


def saehd_onnx(model: SAEHD, metadata: dict[str, str]) -> onnx.ModelProto:
    """The DFM graph of `model` (see the module docstring); parameters as float32 initializers."""
    g = OnnxGraph()
    feats = _encoder(g, g.op("Transpose", [IN_FACE], perm=list(NHWC_TO_NCHW)), model.encoder)
    if model.archi.kind == "df":
        z = _inter(g, feats, model.inter, "inter")
        celeb = _decoder_rgb(g, z, model.decoder_src, "decoder_src")
        celeb_mask = _decoder_mask(g, z, model.decoder_src, "decoder_src")
        face_mask = _decoder_mask(g, z, model.decoder_dst, "decoder_dst")
    else:
        ab = _inter(g, feats, model.inter_AB, "inter_AB")
        swap_code = g.op("Concat", [ab, ab], axis=1)
        dst_code = g.op("Concat", [_inter(g, feats, model.inter_B, "inter_B"), ab], axis=1)
        celeb = _decoder_rgb(g, swap_code, model.decoder, "decoder")
        celeb_mask = _decoder_mask(g, swap_code, model.decoder, "decoder")
        face_mask = _decoder_mask(g, dst_code, model.decoder, "decoder")
    res = model.resolution
    outputs = [(OUT_FACE_MASK, face_mask, 1), (OUT_CELEB_FACE, celeb, 3),
               (OUT_CELEB_FACE_MASK, celeb_mask, 1)]
    for out_name, tensor, _ in outputs:
        g.op("Transpose", [tensor], output=out_name, perm=list(NCHW_TO_NHWC))
    return g.model([nhwc_value(IN_FACE, res, 3)],
                   [nhwc_value(out_name, res, ch) for out_name, _, ch in outputs],
                   "saehd_dfm", metadata)
