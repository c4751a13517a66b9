"""Where the training step's time goes: its parts compiled and timed one by one on the same device.

benchmarks.train_throughput finds the real step slower than the bare model step; this program
splits the difference. For each case (its --cases flag; default on a GPU liae-ud 128 px batch 32,
on a CPU the tiny preset at 32 px batch 4) it builds the same Trainer on the same synthetic
faceset and times, each compiled on its own:

* data: `TrainData.next_batch()` (uint8 faces, masks and matrices gathered on the device);
* augment: `engine.train_step.augmented_inputs` (uint8 batch -> warped inputs, targets, masks);
* losses: `engine.train_step.step_losses` (DSSIM + MSE + mask terms, soft masks) and its gradient
  with respect to the predictions, on predictions in the compute dtype;
* model: train_throughput's model-only step (network + MSE + optimiser on device inputs);
* full step: `Trainer.train_step` on a batch already on the device (augment + model + losses + update).

Share = part / full step. "rest" = full - augment - losses - model: what the parts do not explain
(fusion across their boundaries, the NaN guard, the gradient norm it needs). Data is not part of
the full step, but train_throughput's end-to-end time adds it: that benchmark waits for every step,
so next_batch's host work runs between steps there, while in training it overlaps the running step
(its device gather, if resident, does not).
Each time is the median over --steps rounds in which every part runs once, each call waited for.

Run: python -m benchmarks.train_breakdown [--cases=liae-ud:128:32 --steps=20 --output=breakdown.json]
The flags are train_throughput's (--cases, --steps, --warmup, --compute_dtype, --output, --faces,
--dir, --prefetch); --archis/--resolutions/--batches/--budget_s pick cases as they do there.
"""
from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.data_throughput import build
from benchmarks.train_throughput import (run_in_workdir, FACESET_SIZE, Case, cases_from_flags, machine, model_only_inputs,
                                         model_only_step, step_times, write_json)
from configs.saehd import get_config
from engine import parallel
from engine.train_step import augmented_inputs, step_losses
from engine.trainer import Trainer
from preprocessing.errors import check_command_line, cli_main

FLAGS = flags.FLAGS
PARTS = ("data", "augment", "losses", "model", "full step")
_DEFAULT_CASES = {"cpu": "tiny:32:4", "accelerator": "liae-ud:128:32"}
_PRED_CHANNELS = {"pred_src_src": 3, "pred_src_srcm": 1, "pred_dst_dst": 3, "pred_dst_dstm": 1}


def _loss_grad(opts, aug: dict[str, jax.Array], preds: dict[str, jax.Array]):
    """(loss, d loss / d predictions): the loss work the full step does for a given model output."""
    return jax.value_and_grad(lambda p: step_losses(opts, aug, p)[0])(preds)


def _predictions(mesh, batch: int, resolution: int, dtype) -> dict[str, jax.Array]:
    """Uniform predictions in the compute dtype, batch-sharded like the model's outputs."""
    key = jax.random.key(1)
    return {name: jax.device_put(jax.random.uniform(jax.random.fold_in(key, i),
                                                    (batch, resolution, resolution, channels), dtype),
                                 parallel.batch_sharding(mesh))
            for i, (name, channels) in enumerate(_PRED_CHANNELS.items())}


def measure(case: Case, faceset: str, workdir: str) -> dict[str, Any]:
    """Times the parts of one case (see the module docstring); ms are medians."""
    cfg = get_config(case.archi)
    cfg.model.resolution = case.resolution
    cfg.train.batch_size = case.batch
    cfg.train.compute_dtype = FLAGS.compute_dtype
    cfg.data.prefetch = FLAGS.prefetch
    trainer = Trainer(cfg, faceset, faceset, workdir, progress=False)  # compiles the full step
    try:
        mesh, opts = trainer.mesh, trainer.opts
        replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        batch = trainer.data.next_batch()
        step = jnp.int32(1)
        augment = jax.jit(functools.partial(augmented_inputs, opts), in_shardings=(None, sharded),
                          out_shardings=sharded).lower(step, batch).compile()
        aug = augment(step, batch)
        preds = _predictions(mesh, case.batch, case.resolution, trainer.dtype)
        loss_grad = jax.jit(functools.partial(_loss_grad, opts), in_shardings=(sharded, sharded),
                            out_shardings=(replicated, sharded)).lower(aug, preds).compile()
        # The model-only step starts from a copy of the trainer's state (each step donates its own).
        model_state = jax.device_put(jax.tree.map(jnp.copy, {"params": trainer.state["params"],
                                                             "opt_state": trainer.state["opt_state"]}), replicated)
        inputs = model_only_inputs(mesh, case.batch, case.resolution)
        model_step = jax.jit(model_only_step(trainer.graphdef, trainer.tx), in_shardings=(replicated, sharded),
                             out_shardings=(replicated, replicated), donate_argnums=0
                             ).lower(model_state, inputs).compile()

        def model():
            nonlocal model_state
            model_state, loss = model_step(model_state, inputs)
            return loss

        def full_step():
            return trainer.train_step(batch)

        parts = {"data": trainer.data.next_batch, "augment": lambda: augment(step, batch),
                 "losses": lambda: loss_grad(aug, preds), "model": model, "full step": full_step}
        times = step_times(parts, FLAGS.steps, FLAGS.warmup)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        full = ms["full step"]
        ms["rest"] = full - ms["augment"] - ms["losses"] - ms["model"]
        return {"config": case.archi, "archi": cfg.model.archi, "resolution": case.resolution,
                "batch": case.batch, "dtype": jnp.dtype(trainer.dtype).name, "ms": ms,
                "share": {name: value / full for name, value in ms.items()},
                "ms_all": {name: [1e3 * x for x in t] for name, t in times.items()}}
    finally:
        trainer.close()


def table(r: dict[str, Any]) -> str:
    """The Markdown table of one case: a row per part, in PARTS order, then the rest."""
    lines = [f"**{r['config']} ({r['archi']}) {r['resolution']} px, batch {r['batch']}, {r['dtype']}**", "",
             "| part | ms | share of full step |", "|---|---|---|"]
    for name in PARTS + ("rest",):
        lines.append(f"| {name} | {r['ms'][name]:.2f} | {100 * r['share'][name]:.0f}% |")
    return "\n".join(lines)


def _cases() -> list[Case]:
    """The cases train_throughput's flags name; without any of them, this platform's default case."""
    if not any(FLAGS[name].present for name in ("cases", "archis", "resolutions", "batches")):
        FLAGS.cases = [_DEFAULT_CASES["cpu" if jax.default_backend() == "cpu" else "accelerator"]]
    return cases_from_flags()


def run(root: str) -> list[dict[str, Any]]:
    cases = _cases()
    started = time.perf_counter()
    faceset = f"{root}/faceset"
    build(faceset, FLAGS.faces, FACESET_SIZE)
    info = machine()
    print(f"{info['devices']} x {info['device_kind']} ({info['platform']}), {info['cpus']} CPUs, jax "
          f"{info['jax']}; median of {FLAGS.steps} rounds after {FLAGS.warmup}", flush=True)
    report = {"machine": info, "steps": FLAGS.steps, "warmup": FLAGS.warmup, "results": []}
    for i, case in enumerate(cases):
        if FLAGS.budget_s and time.perf_counter() - started > FLAGS.budget_s:
            print(f"time budget of {FLAGS.budget_s:.0f} s spent: skipped {len(cases) - i} case(s)", flush=True)
            break
        result = measure(case, faceset, f"{root}/run{i}")
        report["results"].append(result)
        print("\n" + table(result), flush=True)
        if FLAGS.output:
            write_json(FLAGS.output, report)
    return report["results"]


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, quiet=False)
    run_in_workdir(run, "train_breakdown_")


if __name__ == "__main__":
    app.run(cli_main(main))
