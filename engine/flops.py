"""Analytic FLOPs of the SAEHD networks: the numerator of MFU.

XLA's GPU cost analysis misses cuDNN convolutions, so we count ourselves. Each component is traced
to a jaxpr at batch 1, abstractly (nothing is allocated or compiled), and every convolution and
matrix product in it counts 2 x its multiply-adds: a conv 2*H_out*W_out*C_in*C_out*k*k (Upscale's
conv at its own, pre-depth-to-space size), a Dense 2*in*out. Element-wise work (bias, activations,
sigmoid, pixel-norm) is not counted; it is memory-bound and a few percent of XLA's count.

One forward (`SAEHD.__call__`) at batch B runs, per sample: the encoder twice (src, dst), the
inter(s) on both codes (LIAE: inter_AB on both, inter_B on dst only), a decoder twice (src->src,
dst->dst) and, with swap=True, a third time (the swap src->dst). The training step decodes the swap
only for the style losses (StepOptions.trains_swap) and counts 3 x its forward (forward + a
backward of about twice its cost). Face style's second swap decoding (from a stop-gradient code)
is not counted.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jax_core

from engine.models.saehd import SAEHD, parse_archi

# How many times per sample one forward without the swap runs each component, and which decoder
# decodes the swap.
_USES = {
    "df": {"encoder": 2, "inter": 2, "decoder_src": 1, "decoder_dst": 1},
    "liae": {"encoder": 2, "inter_AB": 2, "inter_B": 1, "decoder": 2},
}
_SWAP_DECODER = {"df": "decoder_src", "liae": "decoder"}


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    """One conv or matmul of a traced forward: a readable label, its output shape and its FLOPs."""
    op: str
    out_shape: tuple[int, ...]
    flops: int


def _conv_flops(eqn) -> LayerFlops:
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    _, rhs_spec, _ = eqn.params["dimension_numbers"]
    c_in, c_out = rhs.shape[rhs_spec[1]], rhs.shape[rhs_spec[0]]
    window = [rhs.shape[i] for i in rhs_spec[2:]]
    stride = eqn.params["window_strides"][0]
    label = f"conv {'x'.join(map(str, window))}/{stride} {c_in}->{c_out}"
    return LayerFlops(label, tuple(out.shape), 2 * math.prod(out.shape) * c_in * math.prod(window))


def _dot_flops(eqn) -> LayerFlops:
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    depth = math.prod(lhs.shape[i] for i in lhs_contract)
    label = f"dense {depth}->{out.shape[-1]}"
    return LayerFlops(label, tuple(out.shape), 2 * math.prod(out.shape) * depth)


_COUNTERS = {"conv_general_dilated": _conv_flops, "dot_general": _dot_flops}


def _walk(jaxpr) -> list[LayerFlops]:
    """Counted ops in execution order, descending into nested jaxprs (pjit, custom_jvp, remat).

    Loops are not expanded: these networks have none.
    """
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _COUNTERS:
            found.append(_COUNTERS[eqn.primitive.name](eqn))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    found += _walk(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    found += _walk(sub)
    return found


def traced_flops(fn: Callable[..., Any], *args: Any) -> tuple[list[LayerFlops], Any]:
    """Traces fn(*args) (arrays or jax.ShapeDtypeStruct) -> (counted ops, output shapes)."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    return _walk(closed.jaxpr), out_shape


def module_flops(module: nnx.Module, *args: Any, method: str = "__call__"
                 ) -> tuple[list[LayerFlops], Any]:
    """`traced_flops` for a (possibly nnx.eval_shape'd) module's method."""
    graphdef, state = nnx.split(module)
    return traced_flops(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a), state, *args)


def layer_flops(model_cfg) -> dict[str, list[LayerFlops]]:
    """Per component, the counted ops of one application to one sample."""
    model = nnx.eval_shape(lambda: SAEHD(model_cfg, rngs=nnx.Rngs(0)))
    face = jax.ShapeDtypeStruct((1, model_cfg.resolution, model_cfg.resolution, 3), jnp.float32)
    per_component = {}
    per_component["encoder"], feats = module_flops(model.encoder, face)
    _, (code, _, _) = module_flops(model, face, face, method="inter_codes")
    for name, component in model.components().items():
        if name != "encoder":
            per_component[name], _ = module_flops(
                component, feats if name.startswith("inter") else code)
    return per_component


def step_flops(model_cfg, batch_size: int, swap: bool = False) -> dict[str, Any]:
    """FLOPs (2*MACs) at `batch_size` src + `batch_size` dst faces; `swap`: whether the step
    decodes the swap (StepOptions.trains_swap).

    Returns {'forward': one SAEHD.__call__(swap=swap), 'train_step': 3 x forward, 'components':
    forward FLOPs per component, 'per_sample': per component, one application to one face}.
    """
    kind = parse_archi(model_cfg.archi).kind
    per_sample = {name: sum(op.flops for op in ops) for name, ops in layer_flops(model_cfg).items()}
    uses = dict(_USES[kind])
    uses[_SWAP_DECODER[kind]] += 1 if swap else 0
    components = {name: batch_size * n * per_sample[name] for name, n in uses.items()}
    forward = sum(components.values())
    return {"forward": forward, "train_step": 3 * forward, "components": components, "per_sample": per_sample}
