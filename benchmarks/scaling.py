"""Weak and strong scaling of the training step over 1..N devices, data and fsdp meshes.

  python -m benchmarks.scaling --devices=4 --model=tiny:32 --device_counts=1,2,4 \\
      --meshes=data,half,fsdp --scaling=weak,strong --per_device_batch=2 --global_batch=8 \\
      --steps=5 --output=scaling.json [--network_gbps=100 --hosts=2,4]

MEASURED: for each device count n and mesh (data = n x 1, half = n/2 x 2, fsdp = 1 x n, as
data x fsdp), a Trainer over the first n devices (the real end-to-end step: TrainData.next_batch,
augmentation, model, losses, optimiser) on a synthetic faceset, timed like train_throughput (median
of --steps steps after --warmup, each waited for). Weak scaling keeps --per_device_batch per
device (global batch n x it), strong scaling splits --global_batch over the n devices; efficiency =
T_1 / T_n (weak) or T_1 / (n T_n) (strong) against the 1-device row. From the compiled step's HLO
(benchmarks/hlo_collectives.py) each row reports the communication per step: operand MB of the
all-reduces, reduce-scatters, all-gathers and the rest (all-to-all, collective-permute: activation
resharding), the ring model's wire MB per device, and the analytic gradient bytes G = parameters x
4 (fp32 gradients); a data mesh all-reduces G once per step, so "all-reduce/G" should be about 1
(the rest is a few scalars: losses, norms), each device sending 2(n-1)/n x G.

PREDICTED (benchmarks/scaling_model.py, its docstring has the model and the NVLink / network
assumptions): weak and strong efficiency of plain data parallelism on 8 GPUs of one host over
NVLink and on --hosts hosts of 8 GPUs over --network_gbps, from T_1 (--single_device_step_ms,
default the H200 time GPU_MACHINE.md measured for --predict_case) and G of --predict_case's
model (parameters x --reduce_bytes).

Devices: --devices=N makes JAX's CPU backend present N devices (jax_num_cpu_devices, set before
the backend starts); accelerators are used as they are (all visible ones, CUDA_VISIBLE_DEVICES to
restrict). Forced host devices share the machine's cores, so on a CPU the measured times show the
mechanics and the communication volume, not a speedup.

Flags shared with train_throughput: --steps, --warmup, --compute_dtype, --output (JSON; the
Markdown tables go to stdout and next to it as .md), --faces, --dir, --prefetch, and
--profile_steps/--profile_dir (a trace of the first measured configuration, summary on stderr).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any, Sequence

import jax
import ml_collections
from absl import app, flags
from flax import nnx

from benchmarks.data_throughput import build
from benchmarks.hlo_collectives import collective_bytes
from benchmarks.scaling_model import (GPUS_PER_HOST, NETWORK_EFFICIENCY, NVLINK_BUS_GBS, STEP_MS_MEASURED,
                                      Prediction, predict)
from benchmarks.train_throughput import machine, profiler_from_flags, run_in_workdir, step_times, write_json
from configs.saehd import get_config
from engine.models import SAEHD
from engine.models.saehd import param_counts, validate_model_config
from engine.profiling import StepProfiler
from engine.trainer import Trainer
from preprocessing.errors import UserError, check_command_line, cli_main

FLAGS = flags.FLAGS
_DEVICES = flags.DEFINE_integer("devices", 0, "CPU only: present this many host devices (0 = as they are)")
_DEVICE_COUNTS = flags.DEFINE_list("device_counts", None, "device counts to measure (default 1, 2, 4, ... up to all)")
_MESHES = flags.DEFINE_list("meshes", ["data", "half", "fsdp"],
                            "mesh shapes data x fsdp: data = n x 1, half = n/2 x 2, fsdp = 1 x n")
_SCALING = flags.DEFINE_list("scaling", ["weak", "strong"], "weak (fixed per-device batch), strong (fixed global)")
_MODEL = flags.DEFINE_string("model", "tiny:32", "ARCHI:RESOLUTION measured (configs/saehd.py argument)")
_PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", 2, "weak scaling: batch per device")
_GLOBAL_BATCH = flags.DEFINE_integer("global_batch", 0, "strong scaling: global batch (0 = per_device_batch x "
                                                        "the largest device count)")
_PREDICT_CASE = flags.DEFINE_string("predict_case", "liae:128:32",
                                    "ARCHI:RESOLUTION:BATCH of the prediction (default dims)")
_SINGLE_MS = flags.DEFINE_float("single_device_step_ms", 0.0,
                                "one GPU's step time for --predict_case (0 = GPU_MACHINE.md's measurement)")
_NETWORK = flags.DEFINE_float("network_gbps", 100.0, "network bandwidth per host, Gbit/s")
_HOSTS = flags.DEFINE_list("hosts", ["2", "4"], "host counts (8 GPUs each) to predict across the network")
_OVERLAP = flags.DEFINE_float("overlap", 0.0, "fraction of the communication hidden behind compute (0..1)")
_NVLINK = flags.DEFINE_float("nvlink_gbs", NVLINK_BUS_GBS, "NVLink all-reduce bus bandwidth, GB/s")
_REDUCE_BYTES = flags.DEFINE_integer("reduce_bytes", 4, "bytes per gradient element reduced (4 fp32, 2 bf16)")

MESHES = {"data": lambda n: (n, 1), "half": lambda n: (n // 2, 2), "fsdp": lambda n: (1, n)}
MEASURED_COLUMNS = ("scaling", "devices", "mesh", "global batch", "batch/device", "step ms", "samples/s",
                    "efficiency", "all-reduce MB", "reduce-scatter MB", "all-gather MB", "other MB",
                    "wire MB/device", "gradient MB", "all-reduce/G")
PREDICTED_COLUMNS = ("setting", "scaling", "GPUs", "global batch", "compute ms", "comm ms", "step ms",
                     "efficiency", "samples/s")


def _ints(values: Sequence[str], flag: str) -> list[int]:
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise UserError(f"--{flag}={','.join(values)}: expected integers") from None
    if any(v < 1 for v in out):
        raise UserError(f"--{flag}={','.join(values)}: must be >= 1")
    return out


def mesh_shapes(n: int, names: Sequence[str]) -> list[tuple[int, int]]:
    """The distinct (data, fsdp) shapes of `names` for n devices (half needs an even n >= 4)."""
    shapes = []
    for name in names:
        if name not in MESHES:
            raise UserError(f"--meshes: unknown mesh {name!r}; choose from {', '.join(MESHES)}")
        if name == "half" and (n < 4 or n % 2):
            continue
        shape = MESHES[name](n)
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def model_config(flag: str, archi: str, resolution: int) -> ml_collections.ConfigDict:
    """configs/saehd.py's config for `archi` at `resolution`, checked (a UserError naming `flag`)."""
    cfg = get_config(archi)
    cfg.model.resolution = resolution
    try:
        validate_model_config(cfg.model)
    except ValueError as e:
        raise UserError(f"--{flag}: {e}") from None
    return cfg


def gradient_bytes(params: int, bytes_per_element: int = 4) -> int:
    return params * bytes_per_element


def measure(archi: str, resolution: int, batch: int, mesh: tuple[int, int], faceset: str,
            workdir: str, profiler: StepProfiler | None = None) -> dict[str, Any]:
    """One Trainer on the first data x fsdp devices: step time and the step's collectives (then, with a
    `profiler`, its window's steps again under the trace)."""
    cfg = model_config("model", archi, resolution)
    cfg.train.batch_size = batch
    cfg.train.compute_dtype = FLAGS.compute_dtype
    cfg.data.prefetch = FLAGS.prefetch
    cfg.mesh.data, cfg.mesh.fsdp = mesh
    n = mesh[0] * mesh[1]
    trainer = Trainer(cfg, faceset, faceset, workdir, progress=False, devices=jax.devices()[:n])
    try:
        def end_to_end():
            metrics = trainer.train_step(trainer.data.next_batch())
            return trainer.state, metrics

        times = step_times({"step": end_to_end}, FLAGS.steps, FLAGS.warmup)["step"]
        params = sum(int(x.size) for x in jax.tree.leaves(trainer.state["params"]))
        comm = collective_bytes(trainer.step_fn.as_text(), n)
        if profiler is not None:
            profiler.trace(end_to_end)
    finally:
        trainer.close()
    step = statistics.median(times)
    return {"devices": n, "mesh": list(mesh), "global_batch": batch, "step_ms": 1e3 * step,
            "samples_per_s": 2 * batch / step, "step_ms_all": [1e3 * t for t in times], "params": params,
            "gradient_bytes": gradient_bytes(params), "collective_count": comm.count,
            "collective_operand_bytes": comm.operand_bytes, "collective_wire_bytes_per_device": comm.wire_bytes}


def measured_row(mode: str, r: dict[str, Any]) -> str:
    mb = lambda b: f"{b / 1e6:.3f}"  # noqa: E731
    ops = r["collective_operand_bytes"]
    cells = [mode, str(r["devices"]), f"{r['mesh'][0]}x{r['mesh'][1]}", str(r["global_batch"]),
             str(r["global_batch"] // r["devices"]), f"{r['step_ms']:.1f}", f"{r['samples_per_s']:.2f}",
             f"{100 * r['efficiency']:.0f}%" if r.get("efficiency") is not None else "",
             mb(ops["all-reduce"]), mb(ops["reduce-scatter"]), mb(ops["all-gather"]),
             mb(ops["all-to-all"] + ops["collective-permute"]),
             mb(sum(r["collective_wire_bytes_per_device"].values())), mb(r["gradient_bytes"]),
             f"{ops['all-reduce'] / r['gradient_bytes']:.3f}"]
    return "| " + " | ".join(cells) + " |"


def predicted_row(p: Prediction) -> str:
    cells = [p.setting, p.mode, str(p.devices), str(p.global_batch), f"{p.compute_ms:.2f}", f"{p.comm_ms:.2f}",
             f"{p.step_ms:.2f}", f"{100 * p.efficiency:.1f}%", f"{p.samples_per_s:.0f}"]
    return "| " + " | ".join(cells) + " |"


def header(columns: Sequence[str]) -> str:
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def predict_case() -> tuple[str, int, int, float, int]:
    """(archi, resolution, batch, single-GPU step ms, parameters) of --predict_case."""
    parts = _PREDICT_CASE.value.split(":")
    if len(parts) != 3:
        raise UserError(f"--predict_case={_PREDICT_CASE.value}: expected ARCHI:RESOLUTION:BATCH")
    archi, (resolution, batch) = parts[0], _ints(parts[1:], "predict_case")
    single_ms = _SINGLE_MS.value or STEP_MS_MEASURED.get((archi, resolution, batch), 0.0)
    if single_ms <= 0:
        raise UserError(f"--predict_case={_PREDICT_CASE.value}: no measured single-GPU time for it "
                        f"(known: {', '.join(':'.join(map(str, k)) for k in STEP_MS_MEASURED)}); "
                        f"give --single_device_step_ms")
    cfg = model_config("predict_case", archi, resolution)
    model = nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0)))
    return archi, resolution, batch, single_ms, param_counts(model)["total"]


def predictions() -> tuple[dict[str, Any], list[Prediction]]:
    archi, resolution, batch, single_ms, params = predict_case()
    grad = gradient_bytes(params, _REDUCE_BYTES.value)
    settings = [("1 host NVLink", 1)] + [(f"{h} hosts {_NETWORK.value:g} Gb/s", h)
                                         for h in _ints(_HOSTS.value, "hosts")]
    rows = [predict(name, mode, single_ms, batch, grad, GPUS_PER_HOST, hosts, _OVERLAP.value, _NVLINK.value,
                    _NETWORK.value) for name, hosts in settings for mode in ("weak", "strong")]
    assumptions = {"case": _PREDICT_CASE.value, "single_device_step_ms": single_ms,
                   "single_device_step_source": "--single_device_step_ms" if _SINGLE_MS.value else
                   "GPU_MACHINE.md (H200, JAX, bf16, plain LIAE, model + MSE + RMSprop)",
                   "params": params, "reduce_bytes_per_element": _REDUCE_BYTES.value, "gradient_bytes": grad,
                   "nvlink_bus_GBps": _NVLINK.value, "network_gbps": _NETWORK.value,
                   "network_efficiency": NETWORK_EFFICIENCY, "gpus_per_host": GPUS_PER_HOST,
                   "overlap": _OVERLAP.value}
    return assumptions, rows


def checked_flags() -> tuple[str, int, list[int], list[str], int]:
    """(archi, resolution, device counts, scaling modes, strong-scaling global batch), or a UserError."""
    if not 0 <= _OVERLAP.value <= 1:
        raise UserError(f"--overlap={_OVERLAP.value}: must be in [0, 1]")
    if _REDUCE_BYTES.value not in (2, 4):
        raise UserError(f"--reduce_bytes={_REDUCE_BYTES.value}: 4 (fp32) or 2 (bf16)")
    if _PER_DEVICE_BATCH.value < 1 or _GLOBAL_BATCH.value < 0:
        raise UserError("--per_device_batch must be >= 1 and --global_batch >= 0")
    archi, _, res_text = _MODEL.value.partition(":")
    resolution = _ints([res_text], "model")[0] if res_text else get_config(archi).model.resolution
    model_config("model", archi, resolution)
    total = jax.device_count()
    counts = (_ints(_DEVICE_COUNTS.value, "device_counts") if _DEVICE_COUNTS.value
              else [1 << i for i in range(total.bit_length()) if 1 << i <= total])
    if max(counts) > total:
        raise UserError(f"--device_counts={','.join(map(str, counts))}: only {total} device(s) present "
                        f"(--devices=N forces N host devices on a CPU)")
    mesh_shapes(max(counts), _MESHES.value)  # unknown mesh names fail here, before any work
    modes = list(_SCALING.value)
    if set(modes) - {"weak", "strong"}:
        raise UserError(f"--scaling={','.join(modes)}: choose weak and/or strong")
    global_batch = _GLOBAL_BATCH.value or _PER_DEVICE_BATCH.value * max(counts)
    bad = [n for n in counts if global_batch % n]
    if "strong" in modes and bad:
        raise UserError(f"--global_batch={global_batch} is not a multiple of device count(s) {bad}")
    return archi, resolution, counts, modes, global_batch


def run(root: str) -> dict[str, Any]:
    archi, resolution, counts, modes, global_batch = checked_flags()
    total = jax.device_count()
    assumptions, predicted = predictions()  # bad prediction flags fail before any measuring
    profiler = profiler_from_flags()
    faceset = os.path.join(root, "faceset")
    build(faceset, FLAGS.faces, max(64, resolution))
    info = machine()
    print(f"{info['devices']} x {info['device_kind']} ({info['platform']}), {info['cpus']} CPUs, jax {info['jax']}"
          f"; model {archi} at {resolution} px; {FLAGS.steps} timed steps after {FLAGS.warmup}", flush=True)
    if info["platform"] == "cpu" and total > 1:
        print(f"note: the {total} CPU devices share {info['cpus']} cores: the times show the mechanics and "
              f"the communication volume, not a speedup", flush=True)
    report: dict[str, Any] = {"machine": info, "model": _MODEL.value, "steps": FLAGS.steps,
                              "warmup": FLAGS.warmup, "measured": [], "predicted_assumptions": assumptions,
                              "predicted": [dataclasses.asdict(p) for p in predicted]}
    lines = ["MEASURED on this machine (HLO collective bytes per step; G = parameters x 4 bytes):",
             header(MEASURED_COLUMNS)]
    print("\n".join(lines), flush=True)
    cache: dict[tuple, dict[str, Any]] = {}
    for mode in modes:
        first: dict[str, Any] | None = None
        for n in counts:
            batch = _PER_DEVICE_BATCH.value * n if mode == "weak" else global_batch
            for mesh in mesh_shapes(n, _MESHES.value):
                key = (batch, mesh)
                if key not in cache:
                    cache[key] = measure(archi, resolution, batch, mesh, faceset,
                                         os.path.join(root, f"run_{batch}_{mesh[0]}x{mesh[1]}"),
                                         None if cache else profiler)
                r = dict(cache[key], scaling=mode)
                first = first or (r if n == 1 else None)
                if first is not None:
                    scale = 1 if mode == "weak" else n
                    r["efficiency"] = first["step_ms"] / (scale * r["step_ms"])
                report["measured"].append(r)
                lines.append(measured_row(mode, r))
                print(lines[-1], flush=True)
                _save(report, lines)
    lines += ["", f"PREDICTED (benchmarks/scaling_model.py; assumptions, not measurements): {_PREDICT_CASE.value}, "
              f"T_1 = {assumptions['single_device_step_ms']} ms ({assumptions['single_device_step_source']}), "
              f"G = {assumptions['params'] / 1e6:.1f} M parameters x {_REDUCE_BYTES.value} B = "
              f"{assumptions['gradient_bytes'] / 1e6:.0f} MB, NVLink bus {_NVLINK.value:g} GB/s, network "
              f"{_NETWORK.value:g} Gbit/s per host x {NETWORK_EFFICIENCY:g}, overlap {_OVERLAP.value:g}:",
              header(PREDICTED_COLUMNS)] + [predicted_row(p) for p in predicted]
    print("\n".join(lines[lines.index("") :]), flush=True)
    _save(report, lines)
    return report


def _save(report: dict[str, Any], lines: list[str]) -> None:
    if not FLAGS.output:
        return
    write_json(FLAGS.output, report)
    with open(os.path.splitext(FLAGS.output)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, quiet=False)
    if _DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _DEVICES.value)  # before the backend starts
    run_in_workdir(run, "scaling_")


if __name__ == "__main__":
    app.run(cli_main(main))
