"""Data-parallel gradients reduced in a narrower dtype (`train.grad_allreduce_dtype`).

By default XLA partitions the step itself and all-reduces the float32 gradients (4 bytes per
parameter per step). With "bfloat16" the step computes each device's gradients on its own slice
of the batch under `jax.shard_map`, casts them to bf16, averages them with one `pmean` over the
mesh (2 bytes per parameter) and casts the mean back, so the optimiser still runs in float32.
The price is bf16's 8-bit mantissa on the averaged gradient (relative error ~2^-9 per element).

Only data parallelism is supported (mesh.fsdp = 1): under FSDP the gradients are reduce-scattered
onto their parameter shards by the partitioner, which this module does not replace.

XLA:CPU promotes bf16 all-reduces to float32 when it compiles (the values are still rounded to
bf16 first); GPU and TPU backends reduce in bf16. `benchmarks/hlo_collectives.py` counts the bytes
of either program (`lowered.compiler_ir("hlo").as_hlo_module().to_string()`, `compiled.as_text()`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from engine import parallel

GRAD_DTYPES = ("float32", "bfloat16")


def data_parallel_gradients(compute: Callable, mesh: Mesh, dtype: str) -> Callable:
    """`compute(params, critic_params, aug) -> (loss, terms, grads, {critic: (loss, grads)})` run on
    each device's batch slice, with the gradients averaged over the mesh in `dtype` and the losses
    and terms in float32 (all are batch means, so the mean of equal slices is the global value)."""
    axes, grad_dtype = parallel.AXES, jnp.dtype(dtype)

    def mean_grads(tree: Any) -> Any:
        return jax.tree.map(lambda g: jax.lax.pmean(g.astype(grad_dtype), axes).astype(g.dtype), tree)

    def local(params, critic_params, aug):
        # Varying copies: otherwise JAX all-reduces the gradient of a replicated input itself, in fp32.
        params, critic_params = jax.lax.pcast((params, critic_params), axes, to="varying")
        loss, terms, grads, critic_out = compute(params, critic_params, aug)
        mean = lambda tree: jax.lax.pmean(tree, axes)  # noqa: E731
        return (mean(loss), mean(terms), mean_grads(grads),
                {name: (mean(c_loss), mean_grads(c_grads)) for name, (c_loss, c_grads) in critic_out.items()})

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axes)), out_specs=P())
