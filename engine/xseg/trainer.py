"""The XSeg training loop: set-up, resume, compiled step, held-out IoU, previews, checkpoints.

Organised like `engine.trainer` (SAEHD) and reusing its pieces: the mesh and shardings
(`engine.parallel`), DFL's RMSprop + lr_dropout (`engine.optim.make_optimizer`), orbax checkpoints
with resume-compatibility checks (`engine.checkpoint`), metrics.jsonl + TensorBoard
(`engine.metrics`) and the preview grid (`engine.preview`). Everything is validated and the step
compiled before the first step; rerunning the same command resumes from the last checkpoint.

metrics.jsonl, every log.every_steps: loss (the last step's), val_loss and val_iou (over every
held-out face: IoU of sigmoid > 0.5 against the label, summed over the pixels of all faces),
samples_per_s. preview.png: rows of held-out faces | label | prediction over the face in red.
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np
from tqdm import tqdm

from engine import optim, parallel
from engine.checkpoint import Checkpointer, check_config_compatible
from engine.metrics import MetricsWriter
from engine.preview import preview_grid, write_png_atomic
from engine.trainer import compute_dtype, write_config
from engine.xseg.data import XsegData
from engine.xseg.model import init_model, validate_model_config
from engine.xseg.step import init_state, make_eval_step, make_train_step
from preprocessing.errors import UserError


def validate_config(cfg) -> None:
    validate_model_config(cfg.model)
    t = cfg.train
    if t.lr <= 0:
        raise UserError(f"--config.train.lr={t.lr}: must be positive")
    for name, value in (("log.every_steps", cfg.log.every_steps),
                        ("log.preview_every_steps", cfg.log.preview_every_steps)):
        if value < 1:
            raise UserError(f"--config.{name}={value}: must be >= 1")


class XsegTrainer:
    """Owns the model state, data, compiled steps and workdir of one XSeg run."""

    def __init__(self, cfg, facesets: list[str], workdir: str, progress: bool = True):
        validate_config(cfg)
        self.cfg, self.workdir, self.progress = cfg, workdir, progress
        self.mesh = parallel.make_mesh(cfg.mesh)
        dtype = compute_dtype(cfg.train.compute_dtype)
        self.data = XsegData(facesets, cfg, self.mesh)  # bad facesets fail before anything compiles
        os.makedirs(workdir, exist_ok=True)
        self.ckpt = Checkpointer(workdir, keep=cfg.checkpoint.keep, every_steps=cfg.checkpoint.every_steps,
                                 every_minutes=cfg.checkpoint.every_minutes)
        self.graphdef, params = init_model(cfg.model, cfg.seed, dtype)
        self.tx = optim.make_optimizer(cfg.train, cfg.seed)
        self.replicated = parallel.replicated(self.mesh)
        state = jax.device_put(init_state(params, self.tx), self.replicated)
        self.state = self._restore_or_start(state)
        write_config(self.workdir, self.cfg)
        resolution = int(cfg.model.resolution)
        step = make_train_step(self.graphdef, self.tx, int(cfg.seed), resolution)
        batch = self.data.next_batch()
        self.data.position -= self.data.batch_size  # only its shapes were needed
        self.step_fn = jax.jit(step, in_shardings=(self.replicated, parallel.batch_sharding(self.mesh)),
                               out_shardings=(self.replicated, self.replicated),
                               donate_argnums=0).lower(self.state, batch).compile()
        self.eval_fn = jax.jit(make_eval_step(self.graphdef, resolution))
        self.validation = self.data.validation_batches()
        self.metrics = MetricsWriter(workdir, is_main_process=jax.process_index() == 0,
                                     resume_step=int(self.state["step"]))
        self._stop_signal: str | None = None

    def _restore_or_start(self, state: dict) -> dict:
        if self.ckpt.latest_step() is None:
            return state
        for warning in check_config_compatible(self.ckpt.saved_config(), self.cfg):
            print(f"warning: {warning}")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored, meta = self.ckpt.restore(abstract)
        if restored.get("opt_state") is None or meta.get("optimizer") != self.cfg.train.optimizer:
            restored["opt_state"] = state["opt_state"]
        self.data.restore(meta["data"])
        print(f"resumed from step {int(restored['step'])} in {self.workdir}")
        return restored

    def _meta(self) -> dict:
        return {"data": self.data.state(), "seed": self.cfg.seed, "optimizer": self.cfg.train.optimizer,
                "config": json.loads(self.cfg.to_json_best_effort())}

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signal.Signals(signum).name

    def evaluate(self) -> dict[str, float]:
        """val_loss and val_iou over every held-out face."""
        sums = {"loss_sum": 0.0, "count": 0.0, "intersection": 0.0, "union": 0.0}
        for batch in self.validation:
            out = self.eval_fn(self.state["params"], batch)
            for k in sums:
                sums[k] += float(out[k])
        return {"val_loss": sums["loss_sum"] / max(sums["count"], 1.0),
                "val_iou": sums["intersection"] / max(sums["union"], 1.0)}

    def run(self) -> dict[str, float]:
        """Trains until train.max_steps / max_minutes / a signal; saves on the way out."""
        t = self.cfg.train
        step = int(self.state["step"])
        deadline = time.time() + 60 * t.max_minutes if t.max_minutes > 0 else None
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        last: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        bar = tqdm(total=t.max_steps or None, initial=step, unit="step", disable=not self.progress)
        try:
            while not (t.max_steps and step >= t.max_steps) and not self._stop_signal:
                if deadline and time.time() > deadline:
                    break
                self.state, metrics = self.step_fn(self.state, self.data.next_batch())
                step += 1
                window_steps += 1
                bar.update(1)
                if step % self.cfg.log.every_steps == 0 or step == t.max_steps:
                    last = {"loss": float(metrics["loss"])}  # waits for the step
                    elapsed = time.perf_counter() - window_start
                    last.update(self.evaluate(), samples_per_s=window_steps * self.data.batch_size / elapsed)
                    self.metrics.write(step, last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", iou=f"{last['val_iou']:.3f}", refresh=False)
                    window_start, window_steps = time.perf_counter(), 0
                if step % self.cfg.log.preview_every_steps == 0:
                    self.preview()
                self.ckpt.save(step, self.state, self._meta())
        finally:
            bar.close()
            for s, handler in old.items():
                signal.signal(s, handler)
        if self._stop_signal:
            print(f"{self._stop_signal}: saving step {step} and stopping")
        self.ckpt.save(step, self.state, self._meta(), force=True)
        self.ckpt.wait()
        self.preview()
        return last

    def preview(self) -> str:
        """preview.png: held-out face | label | prediction overlaid in red (atomically replaced)."""
        out = jax.device_get(self.eval_fn(self.state["params"], self.validation[0]))
        images, probs = out["images"], out["probs"]
        red = np.zeros_like(images)
        red[..., 0] = 1.0
        overlay = images * (1.0 - 0.5 * probs) + red * 0.5 * probs
        grid = preview_grid([images, np.repeat(out["targets"], 3, axis=-1), overlay], max_rows=4)
        path = os.path.join(self.workdir, "preview.png")
        write_png_atomic(path, grid)
        return path

    def close(self) -> None:
        self.ckpt.close()
        self.metrics.close()
