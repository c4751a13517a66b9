"""A bandwidth model of data-parallel training: predicted step time and efficiency on N GPUs.

benchmarks/scaling.py prints these figures as PREDICTED next to its MEASURED ones. The model:

  T(n)   = T_compute(n) + (1 - overlap) x T_comm(n)
  T_comm = wire bytes per device / link bandwidth          (bandwidth-bound: latency is ignored,
                                                          XLA combines the gradients into a few
                                                          large all-reduces of hundreds of MB)
  one host, g GPUs (ring over NVLink):     wire = 2(g-1)/g x G
  h hosts x g GPUs (hierarchical: reduce-scatter and all-gather inside each host over NVLink, and
  an all-reduce of each GPU's 1/g slice across hosts; the g slices of a host share its network
  bandwidth):   T_comm = 2(g-1)/g x G / B_nvlink + 2(h-1)/h x G / B_network
  G = gradient bytes = parameters x bytes per element of the reduction (4 in fp32, 2 in bf16)

  weak scaling (fixed per-device batch):    T_compute(n) = T_1
  strong scaling (fixed global batch):      T_compute(n) = T_1 / n   (linear in the per-device
                                            batch: an upper bound, small per-device batches run a
                                            GPU below its peak)
  efficiency = T_compute(n) / T(n)   (weak: T_1 / T(n); strong: (T_1 / n) / T(n))
  samples/s  = 2 x global batch / T(n)   (src + dst faces)

`overlap` is the fraction of T_comm hidden behind the backward pass (0 = none, the conservative
default: a combined gradient all-reduce at the end of the step overlaps nothing; XLA's GPU
latency-hiding scheduler can start per-layer reductions earlier). FSDP is not modelled here: its
all-gathers and reduce-scatter move about 1.5x the all-reduce's bytes (BUILD.md "Scaling out").

Assumptions (figures, not measurements):
* NVLink: H100 SXM and H200 SXM both have NVLink 4, 18 links x 50 GB/s = 900 GB/s per GPU in both
  directions together, 450 GB/s each way (NVIDIA H100 / H200 datasheets). NCCL's ring all-reduce
  reaches a bus bandwidth of roughly 80% of that on an 8-GPU HGX board: NVLINK_BUS_GBS = 360 GB/s.
* Network: `network_gbps` Gbit/s per host (e.g. 100 for one 100 GbE / EDR InfiniBand NIC, 400 for
  NDR), of which NETWORK_EFFICIENCY = 80% is reached by NCCL's inter-host rings.
* T_1: measured on one GPU (GPU_MACHINE.md: JAX, H200, bf16, plain LIAE, model + MSE + RMSprop;
  STEP_MS_MEASURED) or given with --single_device_step_ms.
"""
from __future__ import annotations

import dataclasses

NVLINK_BUS_GBS = 360.0  # GB/s, see the docstring
NETWORK_EFFICIENCY = 0.8
GPUS_PER_HOST = 8
# GPU_MACHINE.md (2026-11-26, one H200, JAX 0.11.2, bf16): plain LIAE step time in ms by (archi, res, batch).
STEP_MS_MEASURED = {("liae", 128, 32): 26.1, ("liae", 256, 16): 48.3, ("liae", 256, 64): 184.0}


def ring_allreduce_s(grad_bytes: float, n: int, bandwidth_bytes_s: float) -> float:
    """Seconds of a bandwidth-bound ring all-reduce of grad_bytes over n devices."""
    return 2 * (n - 1) / n * grad_bytes / bandwidth_bytes_s if n > 1 else 0.0


def comm_s(grad_bytes: float, gpus_per_host: int, hosts: int, nvlink_gbs: float = NVLINK_BUS_GBS,
           network_gbps: float = 100.0) -> float:
    """Seconds per step for the gradient all-reduce (hierarchical across hosts, see the docstring)."""
    intra = ring_allreduce_s(grad_bytes, gpus_per_host, nvlink_gbs * 1e9)
    inter = ring_allreduce_s(grad_bytes, hosts, network_gbps * 1e9 / 8 * NETWORK_EFFICIENCY)
    return intra + inter


@dataclasses.dataclass(frozen=True)
class Prediction:
    setting: str
    mode: str  # weak | strong
    devices: int
    global_batch: int
    compute_ms: float
    comm_ms: float
    step_ms: float
    efficiency: float
    samples_per_s: float


def predict(setting: str, mode: str, single_step_ms: float, batch: int, grad_bytes: float,
            gpus_per_host: int, hosts: int, overlap: float = 0.0, nvlink_gbs: float = NVLINK_BUS_GBS,
            network_gbps: float = 100.0) -> Prediction:
    """One predicted row. `batch` is the single-GPU batch of `single_step_ms`: weak scaling keeps it
    per device (global batch x n), strong scaling splits it over the n devices."""
    if mode not in ("weak", "strong"):
        raise ValueError(f"mode {mode!r}: weak or strong")
    n = gpus_per_host * hosts
    compute = single_step_ms if mode == "weak" else single_step_ms / n
    comm = 1e3 * comm_s(grad_bytes, gpus_per_host, hosts, nvlink_gbs, network_gbps)
    step = compute + (1 - overlap) * comm
    global_batch = batch * n if mode == "weak" else batch
    return Prediction(setting, mode, n, global_batch, compute, comm, step, compute / step,
                      2 * global_batch / step * 1e3)
