"""What the GAN, FSDP and the memory savers cost and save: one table, each variant against a baseline.

Every row is a `Trainer` (the step `python -m engine.train` compiles) on one synthetic faceset and
one case (train_throughput's --cases; first case only; default on a CPU the tiny preset at 32 px,
batch 8; on an accelerator liae-ud 128 px batch 16), with one config change against the
baseline (the case as configured: data parallel over every device, no GAN, no remat, optimiser
state on the device, float32 gradient all-reduce):

* gan: `train.gan_power=0.1` (the UNet patch discriminator and its update in the same step);
* fsdp: `mesh.fsdp=2` (data = devices/2) and `mesh.fsdp=<devices>` (needs >= 2, resp. 4, devices);
* remat: `train.remat=dots` and `train.remat=full` (engine/memory_savers.py);
* offload: `train.opt_on_host=true` (optimiser state in pinned host memory);
* allreduce: `train.grad_allreduce_dtype=bfloat16` (needs >= 2 devices).

Columns: step ms (median of --steps steps after --warmup, each waited for, on a batch already on
the device; the variants of a section and the baseline take turns, so load changes hit them
alike), x baseline (step time / the baseline's in the same rounds), and per device from the
compiled step's `memory_analysis()`: arguments, outputs, temporaries, and host-memory arguments
(the offloaded optimiser state, where the backend reports it: XLA:CPU counts host memory as
device memory). all-reduce MB: operand bytes per step (benchmarks/hlo_collectives.py) of the
compiled program, and in brackets what the program asks for before compilation where it holds
all-reduces itself (the bf16 reduction; XLA:CPU promotes bf16 all-reduces to float32 when it
compiles, GPUs and TPUs reduce in bf16).

On a CPU with one device the program restarts itself with --host_devices forced host devices
(XLA_FLAGS must be set before JAX starts); they share the machine's cores, so their step times
show the extra work, not a parallel speed-up.

Run: python -m benchmarks.memory_savers [--sections=gan,fsdp,remat,offload,allreduce
     --cases=tiny:32:8 --steps=5 --output=memory_savers.json]
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Sequence

import jax
from absl import app, flags

from benchmarks.data_throughput import build
from benchmarks.hlo_collectives import collective_bytes
from benchmarks.train_throughput import (FACESET_SIZE, Case, cases_from_flags, machine, run_in_workdir,
                                         step_times, write_json)
from configs.saehd import get_config
from engine import parallel
from engine.train_step import make_train_step
from engine.trainer import Trainer
from preprocessing.errors import UserError, check_command_line, cli_main

FLAGS = flags.FLAGS
SECTIONS = ("gan", "fsdp", "remat", "offload", "allreduce")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), f"which comparisons, in order: {', '.join(SECTIONS)}")
_HOST_DEVICES = flags.DEFINE_integer("host_devices", 4, "forced host devices when a CPU shows only one "
                                                        "(0 = keep one)")
_DEFAULT_CASES = {"cpu": "tiny:32:8", "accelerator": "liae-ud:128:16"}
_COLUMNS = ("section", "variant", "devices", "mesh", "step ms", "x baseline", "args MB", "outputs MB",
            "temp MB", "host args MB", "all-reduce MB")


def variants(section: str, devices: int) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """(name, config overrides) of a section's variants, and why it is skipped ('' if it runs)."""
    if section == "gan":
        return [("gan_power=0.1", {"train.gan_power": 0.1})], ""
    if section == "fsdp":
        sizes = sorted({n for n in (2, devices) if n >= 2 and devices % n == 0})
        return ([(f"data={devices // n} x fsdp={n}", {"mesh.data": devices // n, "mesh.fsdp": n}) for n in sizes],
                "" if sizes else "needs >= 2 devices")
    if section == "remat":
        return [(f"remat={p}", {"train.remat": p}) for p in ("dots", "full")], ""
    if section == "offload":
        kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
        return ([("opt_on_host", {"train.opt_on_host": True})], "" if "pinned_host" in kinds
                else f"{jax.devices()[0].platform} has no pinned_host memory")
    if section == "allreduce":
        return [("bf16 all-reduce", {"train.grad_allreduce_dtype": "bfloat16"})], \
            "" if devices >= 2 else "needs >= 2 devices"
    raise UserError(f"--sections: unknown section {section!r}; choose from {', '.join(SECTIONS)}")


def _config(case: Case, overrides: dict[str, Any]):
    cfg = get_config(case.archi)
    cfg.model.resolution, cfg.train.batch_size = case.resolution, case.batch
    cfg.data.prefetch = FLAGS.prefetch
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def _reduced_bytes(trainer: Trainer, batch: dict) -> dict[str, int]:
    """All-reduce bytes of the compiled step and, before compilation, of the program as lowered
    (the trainer's jit of the step, lowered again: the compiled object keeps no unoptimised HLO)."""
    devices = trainer.mesh.devices.size
    step = make_train_step(trainer.graphdef, trainer.tx, trainer.opts, trainer.critics, trainer.mesh)
    lowered = jax.jit(step, in_shardings=(trainer.state_sharding, trainer.batch_sharding),
                      out_shardings=(trainer.state_sharding, parallel.replicated(trainer.mesh))
                      ).lower(trainer.state, batch).compiler_ir("hlo").as_hlo_module().to_string()
    return {name: collective_bytes(text, devices).operand_bytes["all-reduce"]
            for name, text in (("compiled", trainer.step_fn.as_text()), ("requested", lowered))}


def _memory(trainer: Trainer) -> dict[str, float]:
    m = trainer.step_fn.memory_analysis()
    return {"args_mb": m.argument_size_in_bytes / 1e6, "outputs_mb": m.output_size_in_bytes / 1e6,
            "temp_mb": m.temp_size_in_bytes / 1e6, "host_args_mb": m.host_argument_size_in_bytes / 1e6}


class _Run:
    """A built trainer, its fixed device batch and a step closure for step_times."""

    def __init__(self, case: Case, overrides: dict[str, Any], faceset: str, workdir: str):
        self.trainer = Trainer(_config(case, overrides), faceset, faceset, workdir, progress=False)
        self.batch = self.trainer.data.next_batch()
        self.info = {**_memory(self.trainer), **_reduced_bytes(self.trainer, self.batch),
                     "devices": self.trainer.mesh.devices.size,
                     "mesh": "x".join(f"{k}={v}" for k, v in self.trainer.mesh.shape.items())}

    def step(self) -> Any:
        return self.trainer.train_step(self.batch)


def row(r: dict[str, Any]) -> str:
    if "error" in r or "skipped" in r:
        return f"| {r['section']} | {r['variant']} | {r.get('error') or 'skipped: ' + r['skipped']} |" + " |" * 8
    reduced = f"{r['compiled'] / 1e6:.2f}" + (f" ({r['requested'] / 1e6:.2f} requested)" if r["requested"] else "")
    return (f"| {r['section']} | {r['variant']} | {r['devices']} | {r['mesh']} | {r['step_ms']:.1f} | "
            f"{r['ratio']:.2f} | {r['args_mb']:.2f} | {r['outputs_mb']:.2f} | {r['temp_mb']:.2f} | "
            f"{r['host_args_mb']:.2f} | {reduced} |")


def run(root: str) -> list[dict[str, Any]]:
    if not any(FLAGS[name].present for name in ("cases", "archis", "resolutions", "batches")):
        FLAGS.cases = [_DEFAULT_CASES["cpu" if jax.default_backend() == "cpu" else "accelerator"]]
    case = cases_from_flags()[0]
    started = time.perf_counter()
    faceset = f"{root}/faceset"
    build(faceset, FLAGS.faces, FACESET_SIZE)
    info = machine()
    print(f"{info['devices']} x {info['device_kind']} ({info['platform']}), {info['cpus']} CPUs, jax {info['jax']}; "
          f"{case.archi} {case.resolution} px, global batch {case.batch}; median of {FLAGS.steps} steps after "
          f"{FLAGS.warmup}; memory per device from the compiled step", flush=True)
    print("| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS), flush=True)
    report = {"machine": info, "case": case._asdict(), "steps": FLAGS.steps, "results": []}
    baseline = _Run(case, {}, faceset, f"{root}/baseline")
    try:
        for s, section in enumerate(_SECTIONS.value):
            chosen, skipped = variants(section, jax.device_count())
            if skipped or (FLAGS.budget_s and time.perf_counter() - started > FLAGS.budget_s):
                reason = skipped or f"time budget of {FLAGS.budget_s:.0f} s spent"
                results = [{"section": section, "variant": "all", "skipped": reason}]
            else:
                runs: dict[str, _Run] = {"baseline": baseline}
                results = []
                for name, overrides in chosen:
                    try:
                        runs[name] = _Run(case, overrides, faceset, f"{root}/{section}_{len(runs)}")
                    except Exception as e:  # one variant that fails must not cost the others
                        results.append({"section": section, "variant": name, "error": f"{type(e).__name__}: "
                                        f"{str(e).splitlines()[0] if str(e) else ''}"[:200]})
                times = step_times({name: r.step for name, r in runs.items()}, FLAGS.steps, FLAGS.warmup)
                base_ms = 1e3 * statistics.median(times["baseline"])
                for name, r in runs.items():
                    ms = 1e3 * statistics.median(times[name])
                    results.append({"section": section, "variant": name, **r.info, "step_ms": ms,
                                    "ratio": ms / base_ms})
                for name, r in runs.items():
                    if name != "baseline":
                        r.trainer.close()
            for r in results:
                print(row(r), flush=True)
            report["results"] += results
            if FLAGS.output:
                write_json(FLAGS.output, report)
    finally:
        baseline.trainer.close()
    return report["results"]


def _restart_with_host_devices(n: int) -> None:
    """Re-executes this program with n forced CPU devices (only possible before JAX starts, hence exec)."""
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                                     f"--xla_force_host_platform_device_count={n}".strip())
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.memory_savers", *sys.argv[1:]], env)


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, quiet=False)
    for section in _SECTIONS.value:
        variants(section, 4)  # an unknown name fails here, before anything is built
    if _HOST_DEVICES.value > 1 and jax.default_backend() == "cpu" and jax.device_count() == 1:
        _restart_with_host_devices(_HOST_DEVICES.value)
    results = run_in_workdir(run, "memory_savers_")
    failed = [r for r in results if "error" in r]
    if failed:
        raise UserError(f"{FLAGS.output or 'memory_savers'}: {len(failed)} variant(s) failed")


if __name__ == "__main__":
    app.run(cli_main(main))
