"""Memory savers of the training step: rematerialisation and optimiser state in host memory.

* `train.remat` = "none" | "dots" | "full", optionally ":" and the components to wrap
  (e.g. "full:decoder" or "dots:encoder,decoder_src,decoder_dst"; default: every component of
  `SAEHD.components()`). Each wrapped component's forward runs under `jax.checkpoint` inside the
  training loss only (inference and the eval step are untouched): "full" keeps only the
  component's inputs for the backward pass and recomputes everything else; "dots"
  (`jax.checkpoint_policies.dots_saveable`) keeps the outputs of the convolutions and matmuls and
  recomputes the cheap elementwise work between them (activations, pixel norm, adds). Its
  "no batch dims" variant would save nothing of a conv net (it only knows dot_general), so it is
  not offered. Losses and gradients are those of "none" (the same float ops, recomputed). Inside a
  wrapped component convolutions stay convolutions on a CPU too (`layers.plain_convolutions`).
* `train.opt_on_host` (DeepFaceLab's models_opt_on_gpu=False): the generator's and critics'
  optimiser states live in pinned host memory between steps; the step copies them to the device,
  updates them and XLA writes them back to host memory through the step's out_shardings. On a CPU
  the host and the "device" are the same RAM: it runs (the arrays carry the pinned_host memory
  kind, the compiled program's layouts the host memory space S(5)) but saves nothing.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import jax
from flax import nnx

from engine.grad_reduce import GRAD_DTYPES
from engine.models import SAEHD
from engine.models.layers import plain_convolutions
from preprocessing.errors import UserError

log = logging.getLogger(__name__)

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
HOST_MEMORY = "pinned_host"
OPT_STATE_KEYS = ("opt_state", "disc_opt_state", "code_disc_opt_state")  # train_step's state items


def parse_remat(text: str, components: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """'full:decoder' -> ("full", ("decoder",)); 'dots' -> ("dots", every one of `components`);
    'none' -> ("none", ()). A UserError names the bad policy or component and the valid ones."""
    policy, _, names = str(text).strip().partition(":")
    policy = policy.lower()
    if policy not in REMAT_POLICIES:
        raise UserError(f"--config.train.remat={text!r}: choose {' | '.join(REMAT_POLICIES)}, optionally "
                        f"followed by ':' and components (e.g. 'full:decoder')")
    chosen = tuple(n.strip() for n in names.split(",") if n.strip()) if names else tuple(components)
    unknown = [n for n in chosen if n not in components]
    if unknown:
        raise UserError(f"--config.train.remat={text!r}: the model has no component {', '.join(unknown)}; "
                        f"choose from {', '.join(components)}")
    return policy, (() if policy == "none" else chosen)


def validate_memory_options(cfg, device_count: int) -> None:
    """train.remat and train.grad_allreduce_dtype, each failure one line (opt_on_host: see
    `check_host_offload`, which needs the devices)."""
    t = cfg.train
    abstract = nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0)))
    parse_remat(t.remat, tuple(abstract.components()))
    dtype = t.grad_allreduce_dtype
    if dtype not in GRAD_DTYPES:
        raise UserError(f"--config.train.grad_allreduce_dtype={dtype!r}: choose {' or '.join(GRAD_DTYPES)}")
    if dtype != "float32":
        if cfg.mesh.fsdp != 1:
            raise UserError(f"--config.train.grad_allreduce_dtype={dtype}: only for data parallelism; FSDP "
                            f"(mesh.fsdp={cfg.mesh.fsdp}) reduce-scatters float32 gradients")
        per_device = t.batch_size // device_count
        if t.batch_size % device_count or per_device % t.micro_batches:
            raise UserError(f"--config.train.grad_allreduce_dtype={dtype}: each of the {device_count} devices "
                            f"needs a batch slice divisible by train.micro_batches={t.micro_batches} "
                            f"(train.batch_size={t.batch_size})")


def rematerialise(model: SAEHD, remat: str) -> None:
    """Wraps the components `remat` (train.remat) names in place: for a model merged inside the
    training loss and used once."""
    policy, names = parse_remat(remat, tuple(model.components()))
    for name in names:
        setattr(model, name, Rematerialised(getattr(model, name), REMAT_POLICIES[policy]))


class Rematerialised(nnx.Module):
    """A component whose forward pass is recomputed in the backward pass (see the module docstring)."""

    def __init__(self, inner: nnx.Module, policy: Callable[..., bool] | None):
        self.inner, self.policy = inner, policy

    def __call__(self, *args: jax.Array) -> Any:
        with plain_convolutions():
            return nnx.remat(lambda module, *xs: module(*xs), policy=self.policy)(self.inner, *args)


def check_host_offload(devices: Sequence[jax.Device]) -> None:
    """Refuses train.opt_on_host where the devices have no pinned host memory; warns on a CPU."""
    kinds = {m.kind for m in devices[0].addressable_memories()}
    if HOST_MEMORY not in kinds:
        raise UserError(f"--config.train.opt_on_host=true: {devices[0].platform} devices have no "
                        f"{HOST_MEMORY} memory (only {', '.join(sorted(kinds))}); set it to false")
    if devices[0].platform == "cpu":
        log.warning("train.opt_on_host on a CPU: host and device memory are the same RAM, so it saves nothing")


def offload_opt_state(state_shardings: dict[str, Any]) -> dict[str, Any]:
    """The state's shardings with every optimiser state item moved to pinned host memory."""
    return {key: jax.tree.map(lambda s: s.with_memory_kind(HOST_MEMORY), value) if key in OPT_STATE_KEYS
            else value for key, value in state_shardings.items()}


def to_device(tree: Any) -> Any:
    """Inside the jitted step: host-resident leaves copied to device memory for the update."""
    return jax.device_put(tree, jax.memory.Space.Device)
