"""The XSeg U-Net as DeepFaceLab's `XSeg_model.onnx`: `in_face:0` [N,R,R,3] BGR in [0,1] ->
`out_mask:0` [N,R,R,1], sigmoid probabilities.

The net was trained on RGB; its first conv reads the input channels reversed, so the graph takes
BGR with no extra op. BlurPool's separable binomial filter becomes one depthwise conv with the
outer-product kernel (same zero padding, stride 2).
"""
from __future__ import annotations

import numpy as np
import onnx
from flax import nnx

from engine.dfm.graph import IN_FACE, NCHW_TO_NHWC, NHWC_TO_NCHW, OnnxGraph, nhwc_value
from engine.models.xseg import BLUR_SIZES, BOTTLENECK, FRN, XSeg, binomial_taps

OUT_MASK = "out_mask:0"


def _channel_vector(param: nnx.Param) -> np.ndarray:
    """A per-channel [C] parameter shaped [1,C,1,1] to broadcast over NCHW."""
    return np.asarray(param[...], np.float32).reshape(1, -1, 1, 1)


def _frn(g: OnnxGraph, x: str, frn: FRN, name: str) -> str:
    eps = g.const(f"{name}/abs_eps", np.abs(np.asarray(frn.eps[...], np.float32)).reshape(1, 1, 1, 1))
    y = g.op("Mul", [g.rsqrt_normalise(x, [2, 3], eps), g.const(f"{name}/gamma", _channel_vector(frn.gamma))])
    y = g.op("Add", [y, g.const(f"{name}/beta", _channel_vector(frn.beta))])
    return g.op("Max", [y, g.const(f"{name}/tau", _channel_vector(frn.tau))])


def _conv_blocks(g: OnnxGraph, x: str, blocks: nnx.Sequential, name: str, reverse_in: bool = False) -> str:
    for i, block in enumerate(blocks.layers):
        x = g.conv(x, block.conv, f"{name}/layers/{i}/conv", reverse_in=reverse_in and i == 0)
        x = _frn(g, x, block.frn, f"{name}/layers/{i}/frn")
    return x


def _blur_pool(g: OnnxGraph, x: str, channels: int, size: int) -> str:
    """`models.xseg.blur_pool`: pad [(f-1)//2, f//2] on both axes, binomial filter, stride 2."""
    taps = binomial_taps(size)
    kernel = np.broadcast_to(np.outer(taps, taps), (channels, 1, size, size)).astype(np.float32)
    before, after = (size - 1) // 2, size // 2
    return g.op("Conv", [x, g.const(f"blur_{size}x{channels}", kernel)], kernel_shape=[size, size],
                strides=[2, 2], pads=[before, before, after, after], group=channels)


def xseg_onnx(model: XSeg, metadata: dict[str, str]) -> onnx.ModelProto:
    """The XSeg_model.onnx graph of `model` (see the module docstring)."""
    g = OnnxGraph()
    x = g.op("Transpose", [IN_FACE], perm=list(NHWC_TO_NCHW))
    skips = []
    for i, blocks in enumerate(model.encoder):
        x = _conv_blocks(g, x, blocks, f"encoder/{i}", reverse_in=i == 0)
        skips.append(x)
        x = _blur_pool(g, x, blocks.layers[-1].conv.out_features, BLUR_SIZES[i])
    channels = model.dense2.out_features // (BOTTLENECK * BOTTLENECK)
    x = g.linear(g.op("Flatten", [x], axis=1), model.dense1, "dense1")
    x = g.unflatten(g.linear(x, model.dense2, "dense2"), channels, BOTTLENECK, BOTTLENECK)
    for i in reversed(range(model.levels)):
        up = model.ups[i]
        x = _frn(g, g.conv_transpose(x, up.conv, f"ups/{i}/conv"), up.frn, f"ups/{i}/frn")
        x = _conv_blocks(g, g.op("Concat", [x, skips[i]], axis=1), model.decoder[i], f"decoder/{i}")
    mask = g.op("Sigmoid", [g.conv(x, model.out, "out")])
    g.op("Transpose", [mask], output=OUT_MASK, perm=list(NCHW_TO_NHWC))
    res = model.resolution
    return g.model([nhwc_value(IN_FACE, res, 3)], [nhwc_value(OUT_MASK, res, 1)], "xseg", metadata)
