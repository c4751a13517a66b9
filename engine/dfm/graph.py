"""A small ONNX graph builder for the layers our Flax models are made of, computing in NCHW.

ONNX's Conv, ConvTranspose and DepthToSpace are defined on NCHW, so the exported graphs transpose
the NHWC input once and compute channel-first from there. In NCHW the project's channel-major
flatten (`layers.flatten_channel_major`) is a plain Flatten and its inverse a plain Reshape, and
TF's DCR depth-to-space is ONNX's `DepthToSpace(mode="DCR")`: no extra transposes inside.

Parameters become initializers named after their module path; emitting the same module twice
(a decoder's mask branch run on two codes) reuses them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from flax import nnx
from onnx import TensorProto, helper, numpy_helper

from preprocessing.errors import UserError

# Opset 13 and IR 7 (ONNX 1.8) load in the onnxruntime builds DeepFaceLive and FaceFusion ship;
# DFL itself wrote opset 12 (.dfm) and 13 (XSeg).
OPSET = 13
IR_VERSION = 7
IN_FACE = "in_face:0"  # the input of both DFL formats: [N,res,res,3] BGR in [0,1], NHWC
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
_PROTOBUF_LIMIT = 2**31 - 2**24  # a single ModelProto must serialise below 2 GiB; 16 MiB for the graph


def _pair(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return [1, 1]
    return [int(value)] * 2 if isinstance(value, int) else [int(v) for v in value]


def _array(param: nnx.Param) -> np.ndarray:
    return np.asarray(param[...], dtype=np.float32)


class OnnxGraph:
    """Nodes and float32 initializers of one graph; every method returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._counter = 0

    def const(self, name: str, array: np.ndarray) -> str:
        """An initializer, added once per name."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        """One node with one output; the output gets a fresh name unless `output` names it."""
        if output is None:
            self._counter += 1
            output = f"{op_type.lower()}_{self._counter}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def conv(self, x: str, layer: nnx.Conv, name: str, *, reverse_in: bool = False,
             reverse_out: bool = False) -> str:
        """An nnx.Conv with explicit padding. `reverse_in`/`reverse_out` flip the order of its
        input/output channels in the weights: how the exported graphs take BGR in and give BGR out
        from a network trained on RGB, at no run-time cost."""
        if isinstance(layer.padding, str):
            raise ValueError(f"{name}: only explicit conv padding is exported, got {layer.padding!r}")
        kernel = _array(layer.kernel)  # [kh, kw, in, out]
        bias = _array(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
        if reverse_in:
            kernel = kernel[:, :, ::-1, :]
        if reverse_out:
            kernel, bias = kernel[..., ::-1], bias[::-1]
        (top, bottom), (left, right) = layer.padding
        return self.op("Conv", [x, self.const(f"{name}/kernel", kernel.transpose(3, 2, 0, 1)),
                                self.const(f"{name}/bias", bias)],
                       kernel_shape=list(kernel.shape[:2]), strides=_pair(layer.strides),
                       dilations=_pair(layer.kernel_dilation), pads=[top, left, bottom, right],
                       group=int(layer.feature_group_count))

    def conv_transpose(self, x: str, layer: nnx.ConvTranspose, name: str) -> str:
        """An nnx.ConvTranspose with "SAME" padding (lax.conv_transpose, kernel not transposed).

        lax dilates the input by the stride and runs the kernel as is over it, padded by
        (ceil((k+s-2)/2), floor((k+s-2)/2)) when s <= k-1; ONNX's ConvTranspose runs the spatially
        flipped kernel with (k-1-pad_begin, k-1-pad_end) instead, hence the flip and these pads.
        """
        if layer.padding != "SAME" or layer.transpose_kernel or _pair(layer.kernel_dilation) != [1, 1]:
            raise ValueError(f"{name}: only SAME, undilated, non-transposed ConvTranspose is exported")
        kernel = _array(layer.kernel)  # [kh, kw, in, out]
        pads_begin, pads_end = [], []
        for k, s in zip(kernel.shape[:2], _pair(layer.strides)):
            if s > k - 1:
                raise ValueError(f"{name}: stride {s} > kernel {k} - 1 is not exported")
            total = k + s - 2
            lax_begin = -(-total // 2)
            pads_begin.append(k - 1 - lax_begin)
            pads_end.append(k - 1 - (total - lax_begin))
        weight = kernel[::-1, ::-1].transpose(2, 3, 0, 1)  # [in, out, kh, kw]
        bias = _array(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
        return self.op("ConvTranspose", [x, self.const(f"{name}/kernel", weight),
                                         self.const(f"{name}/bias", bias)],
                       kernel_shape=list(kernel.shape[:2]), strides=_pair(layer.strides),
                       pads=pads_begin + pads_end)

    def linear(self, x: str, layer: nnx.Linear, name: str) -> str:
        """[B, in] -> [B, out]."""
        return self.op("Gemm", [x, self.const(f"{name}/kernel", _array(layer.kernel)),
                                self.const(f"{name}/bias", _array(layer.bias))])

    def leaky_relu(self, x: str, slope: float) -> str:
        return self.op("LeakyRelu", [x], alpha=float(slope))

    def depth_to_space(self, x: str, block: int = 2) -> str:
        """TF's DCR order, as `layers.depth_to_space` on NHWC."""
        return self.op("DepthToSpace", [x], blocksize=block, mode="DCR")

    def unflatten(self, x: str, channels: int, height: int, width: int) -> str:
        """[B, C*H*W] read as (C,H,W): `layers.unflatten_channel_major` in NCHW."""
        shape = self.const(f"shape_{channels}x{height}x{width}",
                           np.array([-1, channels, height, width], np.int64))
        return self.op("Reshape", [x, shape])

    def rsqrt_normalise(self, x: str, axes: Sequence[int], eps: str) -> str:
        """x / sqrt(mean(x^2 over axes) + eps), `eps` a tensor name: pixel norm and FRN's core."""
        mean_sq = self.op("ReduceMean", [self.op("Mul", [x, x])], axes=list(axes), keepdims=1)
        return self.op("Div", [x, self.op("Sqrt", [self.op("Add", [mean_sq, eps])])])

    def model(self, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto],
              name: str, metadata: dict[str, str]) -> onnx.ModelProto:
        """The checked ModelProto; UserError when the weights pass protobuf's 2 GiB file limit."""
        size = sum(len(t.raw_data) for t in self.initializers.values())
        if size >= _PROTOBUF_LIMIT:
            raise UserError(f"{name}: {size / 2**30:.2f} GiB of weights do not fit one ONNX file "
                            "(protobuf's 2 GiB limit); export a smaller model")
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs),
                                  initializer=list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="faceswap-jax", ir_version=IR_VERSION)
        helper.set_model_props(model, metadata)
        onnx.checker.check_model(model, full_check=True)
        return model


def nhwc_value(name: str, size: int, channels: int) -> onnx.ValueInfoProto:
    """A float32 [N, size, size, channels] tensor with a dynamic batch."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", size, size, channels])
