"""Export to DeepFaceLive: SAEHD as a `.dfm` ONNX model and XSeg as `XSeg_model.onnx` (DFL_SPEC §3.10).

The graphs are emitted with `onnx.helper` from the Flax modules' structure (engine/dfm/graph.py),
not through a JAX->ONNX converter: jax2onnx 0.17.1, the maintained one, requires
orbax-checkpoint < 0.11.37 while the project pins 0.12.4 (the GPU image's), so pip cannot
install it next to our stack. Our networks use a dozen ONNX ops (Conv, ConvTranspose, Gemm,
DepthToSpace, LeakyRelu, ...), and every written file is checked against the JAX forward in
onnxruntime (engine/dfm/export.py), so a hand-emitted graph cannot silently drift from the model.
Needs the `onnx` extra (onnx, onnxruntime); it runs on the CPU.
"""
from engine.dfm.export import require_onnx, write_dfm, write_xseg_onnx

__all__ = ["require_onnx", "write_dfm", "write_xseg_onnx"]
