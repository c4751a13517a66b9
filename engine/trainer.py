"""The training loop around the compiled step: set-up, resume, checks, logging, stopping.

Start-up order matters for users: validate the config, open the facesets, build the model and
optimiser, restore the last checkpoint (refusing incompatible edits), compile the step ahead of
time and check its memory against the device — all before the first step, so a bad option or a
model that will not fit fails in seconds with advice instead of hours in.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm

from engine import distributed, memory_savers, optim, parallel, pretrain
from engine.augment.pipeline import CT_MODES
from engine.checkpoint import Checkpointer, check_config_compatible
from engine.data import TrainData
from engine.flops import step_flops
from engine.metrics import MetricsWriter
from engine.models import SAEHD, parse_archi, validate_model_config
from engine.preview import write_preview_grid
from engine.profiling import StepProfiler
from engine.train_step import (StepOptions, init_state, make_critics, make_eval_step, make_train_step,
                               reuses_previous_batch, validate_critic_options)
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType

log = logging.getLogger(__name__)

PEAK_FLOPS = 790e12  # bf16 matmul rate measured on H100/H200 (GPU_MACHINE.md): MFU is reported against it


def compute_dtype(name: str) -> jnp.dtype:
    """bf16 on GPU/TPU, fp32 on CPU (XLA's CPU bf16 convolutions are no faster), unless forced."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    if name not in ("float32", "bfloat16"):
        raise UserError(f"--config.train.compute_dtype={name!r}: choose auto, float32 or bfloat16")
    return jnp.dtype(name)


def validate_config(cfg) -> None:
    """Every option checked up front, each failure one clear line."""
    try:
        validate_model_config(cfg.model)
    except ValueError as e:
        raise UserError(f"--config.model: {e}") from None
    t = cfg.train
    if t.batch_size < 1 or t.micro_batches < 1 or t.batch_size % t.micro_batches:
        raise UserError(f"--config.train.batch_size={t.batch_size} must be a positive multiple of "
                        f"train.micro_batches={t.micro_batches}")
    if t.optimizer not in ("adabelief", "rmsprop"):
        raise UserError(f"--config.train.optimizer={t.optimizer!r}: choose adabelief or rmsprop")
    if t.ct_mode not in CT_MODES:
        raise UserError(f"--config.train.ct_mode={t.ct_mode!r}: choose one of {', '.join(CT_MODES)}")
    if not 0.0 <= t.random_hsv_power <= 0.3:
        raise UserError(f"--config.train.random_hsv_power={t.random_hsv_power}: must be in [0, 0.3]")
    validate_critic_options(cfg)
    memory_savers.validate_memory_options(cfg, jax.device_count())
    if t.lr <= 0:
        raise UserError(f"--config.train.lr={t.lr}: must be positive")
    # The loop takes these modulo / compares against them: 0 would fail mid-run, after compiling.
    for name, value in (("train.nan_patience", t.nan_patience), ("log.every_steps", cfg.log.every_steps),
                        ("log.preview_every_steps", cfg.log.preview_every_steps)):
        if value < 1:
            raise UserError(f"--config.{name}={value}: must be >= 1")


class Trainer:
    """Owns the model state, the data, the compiled step and the workdir of one training run."""

    def __init__(self, cfg, src: str | None, dst: str | None, workdir: str, progress: bool = True,
                 profiler: StepProfiler | None = None, devices: Sequence[jax.Device] | None = None,
                 pretrain_faceset: str | None = None):
        """`profiler`: a trace window over some steps of `run`; `devices`: the mesh's devices
        (default all; benchmarks/scaling.py times subsets); `pretrain_faceset`: what src and dst
        both read when cfg.train.pretrain is on (engine/pretrain.py)."""
        cfg = pretrain.effective_config(cfg)
        src, dst = pretrain.training_facesets(cfg, src, dst, pretrain_faceset)
        self.pretrain_faceset = src if pretrain.is_pretraining(cfg) else None
        validate_config(cfg)
        self.cfg, self.workdir, self.progress, self.profiler = cfg, workdir, progress, profiler
        os.makedirs(workdir, exist_ok=True)
        self.mesh = parallel.make_mesh(cfg.mesh, devices)
        self.dtype = compute_dtype(cfg.train.compute_dtype)
        # Facesets and a refused resume fail here, before the model is built and anything compiled.
        self.data = TrainData(src, dst, cfg, self.mesh, FaceType.from_flag(cfg.model.face_type),
                              cfg.model.resolution, cfg.seed)
        self.ckpt = self._checkpointer()
        if self.ckpt.latest_step() is not None:
            check_config_compatible(self.ckpt.saved_config(), cfg)  # raises on a shape change
        self.graphdef, params = init_model(cfg, self.dtype)
        self.tx = optim.make_optimizer(cfg.train, cfg.seed, frozen=self._frozen_components())
        self.opts = StepOptions.from_config(cfg)
        self.critics, critic_params = make_critics(cfg, self.dtype)  # GAN / true-face discriminators
        state = init_state(params, self.tx, self.critics, critic_params)
        self.state_sharding = parallel.param_shardings(state, self.mesh)  # replicated unless mesh.fsdp > 1
        if cfg.train.opt_on_host:  # DFL's models_opt_on_gpu=False
            memory_savers.check_host_offload(list(self.mesh.devices.flat))
            self.state_sharding = memory_savers.offload_opt_state(self.state_sharding)
        self.batch_sharding = parallel.batch_sharding(self.mesh)
        state = parallel.put_global(state, self.state_sharding)
        self.state = self._restore_or_start(state)
        self._write_config()
        self.step_fn = self._compile()
        # Replicated outputs: process 0 can read the whole preview batch in a multi-host run.
        self.eval_fn = jax.jit(make_eval_step(self.graphdef, self.opts, self.mesh),
                               out_shardings=parallel.replicated(self.mesh))
        # Records past the restored step (all of them on a fresh start) are from a run that died
        # before checkpointing them: they are logged again.
        self.metrics = MetricsWriter(workdir, is_main_process=jax.process_index() == 0,
                                     resume_step=int(self.state["step"]))
        flops = step_flops(cfg.model, cfg.train.batch_size, swap=self.opts.trains_swap)
        self.flops_per_step = float(flops["train_step"])
        self._stop_signal: str | None = None
        self._rolled_back_to: int | None = None

    # ------------------------------------------------------------------ set-up
    def _frozen_components(self) -> tuple[str, ...]:
        """LIAE trains without its InterAB when random warp is off (DFL_SPEC §3.3)."""
        if parse_archi(self.cfg.model.archi).kind == "liae" and not self.cfg.train.random_warp:
            return ("inter_AB",)
        return ()

    def _checkpointer(self) -> Checkpointer:
        c = self.cfg.checkpoint
        return Checkpointer(self.workdir, keep=c.keep, every_steps=c.every_steps, every_minutes=c.every_minutes)

    def _checkpoint_source(self) -> Checkpointer | None:
        """The workdir's checkpoints, else a pretraining phase's whose switch to normal training has
        not saved yet (engine/pretrain.py), else None (a fresh start)."""
        if self.ckpt.latest_step() is not None:
            return self.ckpt
        archived = None if pretrain.is_pretraining(self.cfg) else pretrain.archived_workdir(self.workdir)
        return None if archived is None else Checkpointer(archived, keep=0, every_steps=0, every_minutes=0)

    def _restore_or_start(self, state: dict) -> dict:
        source = self._checkpoint_source()
        if source is None:
            return state
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        saved_cfg = source.saved_config()  # the newest readable checkpoint's
        switch = pretrain.switch(saved_cfg, self.cfg)
        warnings = check_config_compatible(saved_cfg, self.cfg)
        reset_optimizer = any("optimizer" in w for w in warnings)
        for w in warnings:
            log.warning(w)
            print(f"warning: {w}")
        if reset_optimizer:
            abstract = {k: v for k, v in abstract.items() if k != "opt_state"}
        if any("discriminator" in w for w in warnings):  # its shape changed: start it afresh
            abstract = {k: v for k, v in abstract.items() if not k.startswith("disc_")}
        restored, meta = source.restore(abstract)
        # Items the checkpoint lacks (a discriminator switched on mid-run) or that were dropped above
        # start fresh.
        restored = {k: state[k] if restored.get(k) is None else restored[k] for k in state}
        if switch == "off":
            return self._end_pretraining(source, restored)
        if switch == "on":  # other facesets: their sample order starts afresh
            print(f"pretraining a model trained normally: it continues from step {int(restored['step'])} "
                  f"on {self.pretrain_faceset}")
        elif "data" in meta:  # an imported model (engine.import_dfl) has no data position yet
            self.data.restore(meta["data"])
        print(f"resumed from step {int(restored['step'])} in {self.workdir}")
        return restored

    def _end_pretraining(self, source: Checkpointer, restored: dict) -> dict:
        """Pretraining switched off (DFL_SPEC §3.2): step 0, the inters and their optimiser moments
        re-initialised as a fresh start would, the pretraining phase's outputs moved to pretrain/."""
        _, params = init_model(self.cfg, self.dtype)
        fresh = init_state(params, self.tx)
        fresh = parallel.put_global(fresh, {k: self.state_sharding[k] for k in fresh})
        names = pretrain.inter_names(self.cfg.model)
        switched = pretrain.reinit_inters(restored, fresh, names)
        for ckpt in {source, self.ckpt}:
            ckpt.close()
        pretrain.archive_phase(self.workdir)
        self.ckpt = self._checkpointer()
        print(f"pretraining switched off at step {int(restored['step'])}: training restarts at step 0 with "
              f"{' and '.join(sorted(names))} re-initialised (encoder and decoder kept); the pretraining "
              f"checkpoints and logs are in {os.path.join(self.workdir, pretrain.ARCHIVE)}")
        return switched

    def _write_config(self) -> None:
        if distributed.is_main_process():
            write_config(self.workdir, self.cfg)

    def _compile(self):
        """AOT-compiles the step and refuses, with advice, a step that will not fit the device."""
        step = make_train_step(self.graphdef, self.tx, self.opts, self.critics, self.mesh)
        replicated = parallel.replicated(self.mesh)
        jitted = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding, replicated),
                         out_shardings=(self.state_sharding, replicated), donate_argnums=0)
        batch_shape = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                   self._validation_batch())
        compiled = jitted.lower(self.state, batch_shape, jax.ShapeDtypeStruct((), jnp.bool_)).compile()
        check_memory(compiled, self.cfg)
        return compiled

    # ------------------------------------------------------------------ loop
    def _validation_batch(self):
        """The held-out faces, one global batch of them (same shapes as a training batch)."""
        return self.data.validation_batch(self.cfg.train.batch_size)

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signal.Signals(signum).name

    def _meta(self) -> dict:
        return {"step": int(self.state["step"]), "data": self.data.state(), "seed": self.cfg.seed,
                "config": json.loads(self.cfg.to_json_best_effort()), "optimizer": self.cfg.train.optimizer,
                "pretrain_faceset": self.pretrain_faceset}

    def save(self, force: bool = False) -> None:
        self.ckpt.save(int(self.state["step"]), self.state, self._meta(), force=force)

    def run(self) -> dict[str, float]:
        """Trains until max_steps / max_minutes / a signal; saves on the way out."""
        t = self.cfg.train
        start_step = int(self.state["step"])
        deadline = time.time() + 60 * t.max_minutes if t.max_minutes > 0 else None
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        last: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        bar = tqdm(total=t.max_steps or None, initial=start_step, unit="step",
                   disable=not self.progress or not distributed.is_main_process())
        try:
            step, batch = start_step, None
            while True:
                if t.max_steps and step >= t.max_steps:
                    break
                if distributed.any_process(deadline and time.time() > deadline or bool(self._stop_signal)):
                    break
                if self.profiler:
                    self.profiler.before_step(step, self.state)
                batch = self._batch_for(step, batch)
                logs = (step + 1) % self.cfg.log.every_steps == 0 or step + 1 == t.max_steps
                metrics = self.train_step(batch, report=logs)
                step += 1
                if self.profiler:
                    self.profiler.after_step(step, (self.state, metrics))
                window_steps += 1
                bar.update(1)
                if logs:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
                    step_time = (time.perf_counter() - window_start) / window_steps
                    self._log(step, last, step_time)
                    window_start, window_steps = time.perf_counter(), 0
                    bar.set_postfix(src=f"{last['src_loss']:.4f}", dst=f"{last['dst_loss']:.4f}", refresh=False)
                    if last["nonfinite"] >= t.nan_patience:
                        step, batch = self._roll_back(step), None
                        bar.n = step
                if step % self.cfg.log.preview_every_steps == 0:
                    self.preview(step)
                if self.ckpt.should_save(step):
                    self.save()
        finally:
            bar.close()
            if self.profiler:
                self.profiler.stop()  # a run that ended inside the window
            for s, handler in old.items():
                signal.signal(s, handler)
        if self._stop_signal:
            print(f"{self._stop_signal}: saving step {int(self.state['step'])} and stopping")
        self.save(force=True)  # not after an exception: the state may be what went wrong
        self.ckpt.wait()
        self.preview(int(self.state["step"]))
        return last

    def train_step(self, batch: dict, report: bool = False) -> dict[str, jax.Array]:
        """One step on `batch`, keeping the new state; with `report` the metrics' update_norm and
        param_norm are computed too (the run loop asks on the steps it logs; else they are NaN)."""
        self.state, metrics = self.step_fn(self.state, batch, report)
        return metrics

    def _batch_for(self, step: int, previous: dict | None) -> dict:
        """The next batch, or the previous one again on Quick96's no-warp steps. Without one in
        hand (just resumed) the data position steps back one batch to fetch it again, so a resumed
        run feeds what the uninterrupted one did."""
        if not reuses_previous_batch(self.opts, step):
            return self.data.next_batch()
        if previous is None:
            back = self.cfg.train.batch_size
            self.data.restore({side: {**pos, "samples": max(0, pos["samples"] - back)}
                               for side, pos in self.data.state().items()})
            previous = self.data.next_batch()
        return previous

    def _log(self, step: int, metrics: dict[str, float], step_time: float) -> None:
        """Metrics of this step plus validation loss; step_time = mean wall time per step since the last log."""
        vloss, vterms, _, _ = self.eval_fn(self.state["params"], self._validation_batch(), self.state["step"])
        out = dict(metrics)
        out.update(val_loss=float(vloss), val_src_loss=float(vterms["src_loss"]),
                   val_dst_loss=float(vterms["dst_loss"]), step_time_s=step_time,
                   samples_per_s=2 * self.cfg.train.batch_size / step_time,
                   mfu=self.flops_per_step / step_time / PEAK_FLOPS / jax.device_count())
        self.metrics.write(step, out)

    def _roll_back(self, step: int) -> int:
        """Restores the last checkpoint after nan_patience non-finite steps in a row; returns the step
        training continues from. The step is deterministic, so a second streak before a newer
        checkpoint exists would only repeat itself: that stops the run instead of looping forever."""
        self.ckpt.wait()  # a save still being written is not yet a checkpoint to restore
        latest = self.ckpt.latest_step()
        streak = f"{self.cfg.train.nan_patience} non-finite steps in a row at step {step}"
        advice = "lower train.lr or enable train.clipgrad"
        if latest is None:
            raise UserError(f"{self.workdir}: {streak} and no checkpoint to roll back to; {advice}")
        if latest == self._rolled_back_to:
            raise UserError(f"{self.workdir}: {streak} again after rolling back to step {latest}; {advice}")
        print(f"warning: {streak}; rolling back to the checkpoint of step {latest}")
        self._rolled_back_to = latest
        self.state = self._restore_or_start(self.state)
        restored = int(self.state["step"])
        self.metrics.close()  # the replayed steps' records replace the abandoned ones
        self.metrics = MetricsWriter(self.workdir, is_main_process=jax.process_index() == 0,
                                     resume_step=restored)
        return restored

    def preview(self, step: int) -> str:
        """Writes preview.png from the validation faces."""
        _, _, aug, preds = self.eval_fn(self.state["params"], self._validation_batch(), self.state["step"])
        path = os.path.join(self.workdir, "preview.png")
        if not distributed.is_main_process():
            return path
        aug, preds = jax.device_get((aug, preds))
        write_preview_grid(path, aug["target_src"], preds["pred_src_src"], aug["target_dst"],
                           preds["pred_dst_dst"], preds["pred_src_dst"])
        return path

    def close(self) -> None:
        self.ckpt.close()
        self.metrics.close()
        self.data.close()


def write_config(workdir: str, cfg) -> None:
    """The resolved config as `<workdir>/config.json` (atomically), for people and tools to read."""
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(cfg.to_json_best_effort(indent=2))
    os.replace(tmp, path)


def init_model(cfg, dtype) -> tuple[nnx.GraphDef, dict]:
    """The model's graph and freshly initialised parameters (a pure dict of arrays).

    Initialisation runs as one jitted program with the "rbg" PRNG: eager NNX init compiles one
    small kernel per parameter shape, which took 10x longer on a 2-core CPU.
    """
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0), dtype=dtype)))

    @jax.jit
    def init(key):
        return nnx.to_pure_dict(nnx.split(SAEHD(cfg.model, rngs=nnx.Rngs(params=key), dtype=dtype))[1])

    return graphdef, init(jax.random.key(cfg.seed, impl="rbg"))


def check_memory(compiled, cfg) -> None:
    """Refuses a step whose buffers exceed the device's memory, with what to change."""
    analysis = compiled.memory_analysis()
    limit = cfg.train.device_memory_mb * 2**20 or _device_memory_limit()
    if analysis is None or not limit:
        return
    need = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
    if need > limit:
        raise UserError(
            f"the training step needs {need / 2**30:.1f} GiB but the device has {limit / 2**30:.1f} GiB: "
            f"lower --config.train.batch_size (now {cfg.train.batch_size}), raise train.micro_batches, or use "
            f"smaller model dims (ae_dims {cfg.model.ae_dims}, d_dims {cfg.model.d_dims}) or resolution")


def _device_memory_limit() -> int | None:
    """Bytes one device can hold: the accelerator's limit, or the host's physical memory on CPU."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, jax.local_device_count())
    return None


def summarize(metrics: dict[str, Any]) -> str:
    keys = ("src_loss", "dst_loss", "val_loss", "samples_per_s")
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
