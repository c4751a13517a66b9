"""Training throughput: the real SAEHD step end to end against the bare model step.

For each case (config, resolution, global batch) it builds a Trainer on a synthetic 256 px
whole_face faceset (jittered astronaut crops, benchmarks.data_throughput.build; src and dst read the
same faceset) and times two compiled steps on the same network, optimiser, compute dtype and mesh:

* end to end: `Trainer.train_step` (the step `python -m engine.train` runs) fed by
  `TrainData.next_batch()`: uint8 faces -> re-crop, warp and colour augmentation on the device ->
  model -> DSSIM + MSE + mask losses -> optimiser update; a step whose metrics are not logged,
  like most of a run's (a logged step, 1 in log.every_steps, also computes the update and
  parameter norms);
* model-only: the network + MSE (RGB and mask outputs of src->src and dst->dst) + the same
  optimiser on float inputs already on the device (uniform random: the step's speed does not
  depend on the pixel values): no data pipeline, no augmentation, no DSSIM. This is the
  kind of step GPU_MACHINE.md's anchor timed (there with RMSprop), and the gap between the two is
  the input, augmentation and loss share.

Definitions (also written into the JSON):
* step ms: median wall time of one step over --steps steps after --warmup steps, each waited for
  with jax.block_until_ready (end to end includes its next_batch() call); the two steps take
  turns, so a load change on the machine affects both alike;
* samples/s: src + dst faces per second = 2 x batch / step time;
* FLOP/step: engine.flops.step_flops(model, batch)['train_step'], counted analytically (XLA's GPU
  cost analysis misses cuDNN convolutions); the same number for both steps;
* TFLOP/s = FLOP/step / step time; MFU = TFLOP/s / (790 TFLOP/s x devices), the bf16 matmul rate
  measured on H100/H200: reported, not a gate (on a CPU it is only a unit);
* e2e/model = model-only step time / end-to-end step time (target >= 0.85);
* data batches/s: TrainData.next_batch() calls per second, each waited for (one batch = B src +
  B dst faces); data/step = that rate x the end-to-end step time, i.e. how many times over the
  pipeline feeds the step (target >= 3).

A case that fails (e.g. the memory check refuses it) is reported with its error and the next one
runs. Each finished case is printed as a Markdown table row at once and the JSON (--output) is
rewritten, so an interrupted run keeps what it measured.

Run: python -m benchmarks.train_throughput [--archis=liae-ud,df-ud --resolutions=128,256
     --batches=8,16,32 --steps=20 --output=train_throughput.json]
Defaults by platform: resolutions 128,256 and batches 8,16,32,64 on GPU/TPU; resolution 64 and
batch 4 on CPU.
Profiling: --profile_steps=FIRST:LAST [--profile_dir=profile] traces end-to-end steps after the
first case's timing (so the trace does not slow the timed steps) and prints engine/profiling.py's
per-op summary to stderr.
Flags shared with the other benchmarks (their modules build the faceset): --batches (global batch
sizes), --faces (faces in the faceset), --dir (where to build it), --prefetch (batches in flight
when a faceset is streamed); the others they define (--resolution, --modes, --sizes, --codecs,
--batch, --seconds) do not apply here.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from absl import app, flags, logging
from flax import nnx

from benchmarks.data_throughput import build
from configs.saehd import get_config
from engine import parallel
from engine.profiling import StepProfiler, parse_profile_steps
from engine.trainer import PEAK_FLOPS, Trainer
from preprocessing.errors import UserError, check_command_line, cli_main

FLAGS = flags.FLAGS
_ARCHIS = flags.DEFINE_list("archis", ["liae-ud", "df-ud"],
                            "configs/saehd.py arguments: architectures (liae-ud, df-ud, liae, ...) or "
                            "presets (tiny, tiny-df: small dims)")
_RESOLUTIONS = flags.DEFINE_list("resolutions", None, "model resolutions (default: 128,256 on GPU/TPU, 64 on CPU)")
_CASES = flags.DEFINE_list("cases", None,
                           "explicit ARCHI:RESOLUTION:BATCH cases run in this order (e.g. liae-ud:128:32); "
                           "overrides --archis/--resolutions/--batches")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per measurement (also next_batch calls timed)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps before timing (both steps are compiled ahead of "
                                            "time; these let allocators and caches settle)")
_DTYPE = flags.DEFINE_enum("compute_dtype", "auto", ["auto", "float32", "bfloat16"],
                           "compute dtype: auto = the trainer's rule (bf16 on GPU/TPU, fp32 on CPU)")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file for the results (rewritten after each case)")
_BUDGET = flags.DEFINE_float("budget_s", 0.0, "start no new case after this many seconds (0 = no limit)")
_PROFILE_STEPS = flags.DEFINE_string("profile_steps", None,
                                     "FIRST:LAST: after timing the first case, run LAST more end-to-end steps, "
                                     "trace steps FIRST..LAST of them and print the op summary to stderr")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "profile", "where --profile_steps writes its trace")

FACESET_SIZE = 256
_PLATFORM_DEFAULTS = {"cpu": {"resolutions": [64], "batches": [4]},
                      "accelerator": {"resolutions": [128, 256], "batches": [8, 16, 32, 64]}}
# Model-only loss: MSE of each trained output against its target (masks too, so the mask decoder
# is trained and the counted FLOPs are the ones run).
_MSE_PAIRS = (("pred_src_src", "target_src"), ("pred_dst_dst", "target_dst"),
              ("pred_src_srcm", "target_srcm"), ("pred_dst_dstm", "target_dstm"))
_MODEL_INPUT_CHANNELS = {"warped_src": 3, "warped_dst": 3, "target_src": 3, "target_dst": 3,
                         "target_srcm": 1, "target_dstm": 1}
DEFINITIONS = {
    "samples_per_s": "src + dst faces per second = 2 x batch / step time",
    "step_ms": "median wall time per step after warm-up, each step waited for (block_until_ready); "
               "end-to-end and model-only steps alternate",
    "flops_per_step": "engine.flops.step_flops(model, batch)['train_step'] (analytic, 2 x MACs)",
    "mfu": f"achieved FLOP/s / ({PEAK_FLOPS / 1e12:.0f} TFLOP/s x devices)",
    "end_to_end": "Trainer.train_step (not logged) fed by TrainData.next_batch: augmentation, model, DSSIM+MSE+mask "
                  "losses, optimiser",
    "model_only": "network + MSE (RGB and masks) + the same optimiser on uniform random float inputs "
                  "already on the device",
    "e2e_over_model": "model-only step time / end-to-end step time (target >= 0.85)",
    "data_over_step": "TrainData.next_batch batches/s x end-to-end step time (target >= 3)",
}


class Case(NamedTuple):
    archi: str  # a configs/saehd.py argument
    resolution: int
    batch: int


def _ints(values: Sequence[str], flag: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UserError(f"--{flag}={','.join(values)}: expected integers") from None


def cases_from_flags() -> list[Case]:
    """--cases as given, else resolutions x archis x batches (resolution outermost)."""
    if _CASES.value:
        cases = []
        for text in _CASES.value:
            parts = text.split(":")
            if len(parts) != 3:
                raise UserError(f"--cases: {text!r} is not ARCHI:RESOLUTION:BATCH")
            cases.append(Case(parts[0], *_ints(parts[1:], "cases")))
        return cases
    defaults = _PLATFORM_DEFAULTS["cpu" if jax.default_backend() == "cpu" else "accelerator"]
    resolutions = _ints(_RESOLUTIONS.value, "resolutions") if _RESOLUTIONS.value else defaults["resolutions"]
    batches = _ints(FLAGS.batches, "batches") if FLAGS["batches"].present else defaults["batches"]
    return [Case(archi, res, batch) for res in resolutions for archi in _ARCHIS.value for batch in batches]


def step_times(steps_by_name: dict[str, Callable[[], Any]], steps: int, warmup: int) -> dict[str, list[float]]:
    """Wall seconds per call of each function, each call waited for, after `warmup` calls of each.

    The functions take turns, one call each per round, so a load change on the machine (another
    process taking a core) hits them alike and their ratio stays fair.
    """
    for run_step in steps_by_name.values():
        for _ in range(warmup):
            jax.block_until_ready(run_step())
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, run_step in steps_by_name.items():
            start = time.perf_counter()
            jax.block_until_ready(run_step())
            times[name].append(time.perf_counter() - start)
    return times


def model_only_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
    """(state {params, opt_state}, inputs) -> (state, loss): the model, MSE and the optimiser alone."""

    def loss_fn(params, inputs: dict[str, jax.Array]) -> jax.Array:
        preds = nnx.merge(graphdef, params)(inputs["warped_src"], inputs["warped_dst"], swap=False)
        return sum(jnp.mean(jnp.square(preds[p] - inputs[t])) for p, t in _MSE_PAIRS)

    def step(state: dict, inputs: dict[str, jax.Array]) -> tuple[dict, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], inputs)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

    return step


def model_only_inputs(mesh: jax.sharding.Mesh, batch: int, resolution: int) -> dict[str, jax.Array]:
    """Uniform [0, 1) float32 inputs and targets, batch-sharded on the devices like a real batch."""
    key = jax.random.key(0)
    return {name: jax.device_put(jax.random.uniform(jax.random.fold_in(key, i),
                                                    (batch, resolution, resolution, channels)),
                                 parallel.batch_sharding(mesh))
            for i, (name, channels) in enumerate(_MODEL_INPUT_CHANNELS.items())}


def _timing(times: list[float], batch: int, flops: float, devices: int) -> dict[str, Any]:
    step = statistics.median(times)
    return {"step_ms": 1e3 * step, "samples_per_s": 2 * batch / step, "tflops_per_s": flops / step / 1e12,
            "mfu": flops / step / (PEAK_FLOPS * devices), "step_ms_all": [1e3 * t for t in times]}


def measure(case: Case, faceset: str, workdir: str, profiler: StepProfiler | None = None) -> dict[str, Any]:
    """Times one case end to end and model-only (see the module docstring); then, with a
    `profiler`, runs its window's steps end to end again under the trace (untimed)."""
    cfg = get_config(case.archi)
    cfg.model.resolution = case.resolution
    cfg.train.batch_size = case.batch
    cfg.train.compute_dtype = _DTYPE.value
    cfg.data.prefetch = FLAGS.prefetch
    start = time.perf_counter()
    trainer = Trainer(cfg, faceset, faceset, workdir, progress=False)  # compiles the step ahead
    setup_s = time.perf_counter() - start
    try:
        mesh, steps, warmup = trainer.mesh, _STEPS.value, _WARMUP.value
        params = sum(x.size for x in jax.tree.leaves(trainer.state["params"]))
        # The model-only step starts from a copy of the trainer's state (each step donates its own).
        replicated = parallel.replicated(mesh)
        state = jax.device_put(jax.tree.map(jnp.copy, {"params": trainer.state["params"],
                                                       "opt_state": trainer.state["opt_state"]}), replicated)
        inputs = model_only_inputs(mesh, case.batch, case.resolution)
        start = time.perf_counter()
        model_step = jax.jit(model_only_step(trainer.graphdef, trainer.tx),
                             in_shardings=(replicated, parallel.batch_sharding(mesh)),
                             out_shardings=(replicated, replicated), donate_argnums=0
                             ).lower(state, inputs).compile()
        model_compile_s = time.perf_counter() - start

        def end_to_end():
            metrics = trainer.train_step(trainer.data.next_batch())
            return trainer.state, metrics

        def model_only():
            nonlocal state
            state, loss = model_step(state, inputs)
            return state, loss

        times = step_times({"end_to_end": end_to_end, "model_only": model_only}, steps, warmup)
        loss = float(end_to_end()[1]["loss"])
        # Back to back: the sustained rate (a prefetch queue filled during the steps would hide it).
        data_times = step_times({"next_batch": trainer.data.next_batch}, steps, 1)["next_batch"]
        data_rate = len(data_times) / sum(data_times)
        if profiler is not None:
            profiler.trace(end_to_end)
        devices = mesh.devices.size
        e2e, model = (_timing(times[name], case.batch, trainer.flops_per_step, devices)
                      for name in ("end_to_end", "model_only"))
        return {
            "config": case.archi, "archi": cfg.model.archi, "resolution": case.resolution,
            "batch": case.batch, "dtype": jnp.dtype(trainer.dtype).name,
            "dims": {k: cfg.model[k] for k in ("ae_dims", "e_dims", "d_dims", "d_mask_dims")},
            "params": int(params), "data_mode": trainer.data.info["src"]["mode"],
            "flops_per_step": trainer.flops_per_step, "setup_s": setup_s, "model_compile_s": model_compile_s,
            "end_to_end": e2e, "model_only": model, "e2e_over_model": model["step_ms"] / e2e["step_ms"],
            "data_batches_per_s": data_rate, "data_over_step": data_rate * e2e["step_ms"] / 1e3,
            "loss": loss,
        }
    finally:
        trainer.close()


_COLUMNS = ("archi", "res", "batch", "dtype", "GFLOP/step", "e2e ms", "e2e samples/s", "e2e TFLOP/s",
            "e2e MFU", "model ms", "model samples/s", "model TFLOP/s", "model MFU", "e2e/model",
            "data batches/s", "data/step")


def table_header() -> str:
    return "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS)


def table_row(r: dict[str, Any]) -> str:
    """One Markdown row; a failed case shows its error after the case columns."""
    head = [r["config"], str(r["resolution"]), str(r["batch"])]
    if "error" in r:
        return "| " + " | ".join(head + [f"error: {r['error']}"] + [""] * (len(_COLUMNS) - 4)) + " |"
    e2e, model = r["end_to_end"], r["model_only"]
    cells = head + [r["dtype"], f"{r['flops_per_step'] / 1e9:.1f}"]
    for t in (e2e, model):
        cells += [f"{t['step_ms']:.1f}", f"{t['samples_per_s']:.1f}", f"{t['tflops_per_s']:.3g}",
                  f"{100 * t['mfu']:.2g}%"]
    cells += [f"{100 * r['e2e_over_model']:.0f}%", f"{r['data_batches_per_s']:.1f}", f"{r['data_over_step']:.1f}x"]
    return "| " + " | ".join(cells) + " |"


def machine() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
            "cpus": os.cpu_count(), "jax": jax.__version__}


def write_json(path: str, report: dict[str, Any]) -> None:
    """Atomic rewrite, so a run killed mid-case leaves the previous cases readable."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def profiler_from_flags() -> StepProfiler | None:
    """--profile_steps as a profiler whose summary goes to stderr (stdout holds the table)."""
    if not _PROFILE_STEPS.value:
        return None
    return StepProfiler(parse_profile_steps(_PROFILE_STEPS.value), _PROFILE_DIR.value,
                        report=lambda text: print(text, file=sys.stderr))


def run(root: str) -> list[dict[str, Any]]:
    cases = cases_from_flags()
    profiler = profiler_from_flags()
    started = time.perf_counter()
    faceset = os.path.join(root, "faceset")
    build(faceset, FLAGS.faces, FACESET_SIZE)
    info = machine()
    print(f"{info['devices']} x {info['device_kind']} ({info['platform']}), {info['cpus']} CPUs, jax "
          f"{info['jax']}; faceset: {FLAGS.faces} whole_face faces of {FACESET_SIZE} px; {_STEPS.value} "
          f"timed steps after {_WARMUP.value}; samples = src + dst faces", flush=True)
    print(table_header(), flush=True)
    report = {"machine": info, "definitions": DEFINITIONS, "steps": _STEPS.value, "warmup": _WARMUP.value,
              "faces": FLAGS.faces, "results": []}
    if _OUTPUT.value:
        write_json(_OUTPUT.value, report)
    for i, case in enumerate(cases):
        if _BUDGET.value and time.perf_counter() - started > _BUDGET.value:
            print(f"time budget of {_BUDGET.value:.0f} s spent: skipped {len(cases) - i} case(s): "
                  + ", ".join(":".join(map(str, c)) for c in cases[i:]), flush=True)
            break
        try:
            result = measure(case, faceset, os.path.join(root, f"run{i}"), profiler if i == 0 else None)
        except Exception as e:  # a case that does not fit or fails must not cost the other cases
            result = failed_case(case, e)
        report["results"].append(result)
        print(table_row(result), flush=True)
        if _OUTPUT.value:
            write_json(_OUTPUT.value, report)
    return report["results"]


def failed_case(case: Case, e: Exception) -> dict[str, Any]:
    """The result row of a case that raised: the other cases still run."""
    return {"config": case.archi, "resolution": case.resolution, "batch": case.batch,
            "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}


def run_in_workdir(run_fn: Callable[[str], list[dict[str, Any]]], prefix: str) -> list[dict[str, Any]]:
    """Checks the shared flags, then runs `run_fn(root)` in --dir or in a temporary folder."""
    if FLAGS.steps < 1 or FLAGS.warmup < 0:
        raise UserError(f"--steps={FLAGS.steps} must be >= 1 and --warmup={FLAGS.warmup} >= 0")
    logging.set_verbosity(logging.WARNING)  # the trainer's and orbax's INFO lines would break the table
    if FLAGS.dir:
        return run_fn(FLAGS.dir)
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        return run_fn(root)


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, quiet=False)
    results = run_in_workdir(run, "train_throughput_")
    failed = [r for r in results if "error" in r]
    if failed:
        raise UserError(f"{_OUTPUT.value or 'train_throughput'}: {len(failed)} of {len(results)} case(s) failed")


if __name__ == "__main__":
    app.run(cli_main(main))
