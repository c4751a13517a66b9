"""Training checkpoints: orbax CheckpointManager behind a small interface the trainer can rely on.

Why a wrapper: the trainer needs three things orbax leaves to its caller. (1) A corrupt latest
checkpoint (a crash mid-write on a filesystem without atomic rename, a truncated copy) must not end
a run: restore warns, names it and falls back to the previous step. (2) Items added by later issues
(discriminators and their optimisers) must be optional, so older checkpoints still load: an item
the checkpoint lacks comes back as None. (3) A resumed run must refuse edits that change the
network's shape before it touches the weights (`check_config_compatible`).

Layout: `<workdir>/checkpoints/<step>/<item>/`, one orbax item per part of the train state:

    state key        item            contents
    params           generator       generator parameters (nnx.State or nested dict of arrays)
    opt_state        optimizer       optax state of the generator optimiser
    disc_params      discriminator   GAN discriminator (train.gan_power > 0)
    disc_opt_state   disc_optimizer  its optax state
    code_disc_params code_discriminator      true-face discriminator (train.true_face_power > 0)
    code_disc_opt_state code_disc_optimizer  its optax state
    step             (in meta)       the int32 step counter, rebuilt from meta["step"]
    other keys       the key itself

and `meta` (JSON): whatever the trainer passes (data position, RNG seed, the resolved config as
JSON under "config", the optimiser type) plus "step". Saves are asynchronous: `save` returns once
the arrays are copied to host memory and orbax writes and commits them in the background;
`wait()` blocks until that is done. Arrays are restored into abstract targets that carry their
shardings, so a checkpoint saved on 4 devices restores on 1 and vice versa.

Config fields used: checkpoint.keep, checkpoint.every_steps, checkpoint.every_minutes (passed in by
the trainer); nothing is added to configs/saehd.py.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from engine import distributed
from preprocessing.errors import UserError

log = logging.getLogger(__name__)

# Train-state keys and the orbax item each one is stored in (all but 'step', which the meta holds);
# a key missing here still saves under its own name, but each restore then warns about it.
ITEM_NAMES = {
    "params": "generator",
    "opt_state": "optimizer",
    "disc_params": "discriminator",
    "disc_opt_state": "disc_optimizer",
    "code_disc_params": "code_discriminator",
    "code_disc_opt_state": "code_disc_optimizer",
    "counters": "counters",
}
META_ITEM = "meta"


class CheckpointError(UserError):
    """No readable checkpoint where one was expected (the message names the folder and steps)."""


def _item_name(key: str) -> str:
    return ITEM_NAMES.get(key, key)


def _abstract_leaf(x: Any) -> jax.ShapeDtypeStruct:
    """Restore target for one leaf: shape, dtype and sharding (one device when it has none).

    A target without a sharding would make orbax reuse the saved one, which names devices this
    process may not have.
    """
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _abstract_tree(tree: Any) -> Any:
    """Accepts arrays or ShapeDtypeStructs (e.g. from nnx.eval_shape) as restore targets."""
    return jax.tree.map(_abstract_leaf, tree)


def _one_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception, shortened: tensorstore errors run to several kilobytes."""
    text = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checkpointer:
    """Saves and restores the train state under `<workdir>/checkpoints` (see the module docstring).

    Multi-host runs: every process calls `save` (orbax writes each process's shards); the
    time-based decision is process 0's, broadcast, or hosts would disagree on whether to save.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, every_steps: int = 1000,
                 every_minutes: float = 25.0, clock: Callable[[], float] = time.monotonic):
        """`every_steps` / `every_minutes` <= 0 turn that trigger off; `clock` is for tests."""
        self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")  # orbax needs absolute paths
        self.every_steps = int(every_steps)
        self.every_minutes = float(every_minutes)
        self._clock = clock
        self._last_save_time = clock()
        self._unreadable: set[int] = set()  # steps a restore in this process failed to read
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep > 0 else None, create=True, enable_async_checkpointing=True)
        # Every item's handler up front: a manager that has not yet saved or restored an item would
        # otherwise warn, on each partial read (config, generator), that it cannot restore the rest.
        handlers = {name: ocp.StandardCheckpointHandler() for name in ITEM_NAMES.values()}
        handlers[META_ITEM] = ocp.JsonCheckpointHandler()
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # ---- saving ---------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """True on every `every_steps`-th step, or `every_minutes` after the last save."""
        if self.every_steps > 0 and step > 0 and step % self.every_steps == 0:
            return True
        return self.every_minutes > 0 and distributed.agree(
            self._clock() - self._last_save_time >= 60.0 * self.every_minutes)

    def save(self, step: int, state: Mapping[str, Any], meta: Mapping[str, Any],
             force: bool = False) -> bool:
        """Starts an asynchronous save of `state` (and `meta`) as checkpoint `step`.

        Without `force` it saves only when `should_save(step)`; with it (exit, SIGTERM) always.
        Returns whether a save was started. A step that already has a readable checkpoint is not
        written again (the step counter is deterministic, so it holds this state); one that a
        restore found unreadable is deleted and replaced.
        """
        if not force and not self.should_save(step):
            return False
        if step in self._manager.all_steps():
            if step not in self._unreadable:
                log.info("%s: checkpoint %d exists; not saved again", self.directory, step)
                return False
            log.warning("%s: replacing unreadable checkpoint %d", self.directory, step)
            self._manager.delete(step)
            self._unreadable.discard(step)
        meta = dict(meta, step=int(step))
        json.dumps(meta)  # fail here, in the caller's thread, not in orbax's background writer
        items = {_item_name(k): ocp.args.StandardSave(v) for k, v in state.items() if k != "step"}
        items[META_ITEM] = ocp.args.JsonSave(meta)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._last_save_time = self._clock()
        return True

    # ---- restoring ------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, abstract_state: Mapping[str, Any],
                step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores the items named by `abstract_state`'s keys into its shapes and shardings.

        Leaves may be ShapeDtypeStructs (with `sharding=`) or arrays (their sharding is used).
        Returns `(state, meta)`; `state[k]` is None for an item the checkpoint does not hold (an
        older checkpoint: the trainer then initialises that part fresh). `state["step"]`, when
        asked for, is an int32 array placed like its target. With `step=None` the newest readable
        checkpoint is used (see `_restore_newest_readable`).
        """
        targets = {k: _abstract_tree(v) for k, v in abstract_state.items() if k != "step"}

        def read(s: int) -> tuple[dict[str, Any], dict[str, Any]]:
            present = set(self._manager.item_metadata(s).keys())
            args = {_item_name(k): ocp.args.StandardRestore(t) for k, t in targets.items()
                    if _item_name(k) in present}
            args[META_ITEM] = ocp.args.JsonRestore()
            got = self._manager.restore(s, args=ocp.args.Composite(**args))
            state = {k: got[_item_name(k)] if _item_name(k) in args else None for k in targets}
            meta = dict(got[META_ITEM])
            if "step" in abstract_state:
                sharding = getattr(abstract_state["step"], "sharding", None)
                step_value = np.asarray(meta.get("step", s), np.int32)
                state["step"] = (jax.device_put(step_value, sharding) if sharding is not None
                                 else jnp.asarray(step_value))
            return state, meta

        return self._restore_newest_readable(step, read)

    def restore_generator(self, abstract_params: Any, step: int | None = None) -> Any:
        """Restores only the generator's parameters (for merging); same fallback as `restore`."""
        target = _abstract_tree(abstract_params)

        def read(s: int) -> Any:
            args = ocp.args.Composite(**{ITEM_NAMES["params"]: ocp.args.StandardRestore(target)})
            return self._manager.restore(s, args=args)[ITEM_NAMES["params"]]

        return self._restore_newest_readable(step, read)

    def saved_config(self, step: int | None = None) -> dict[str, Any]:
        """The config JSON (meta["config"]) a checkpoint was trained with, read before its arrays
        so `check_config_compatible` can refuse a shape-changing edit first. Same fallback as
        `restore`; a checkpoint whose meta holds no config counts as unreadable."""

        def read(s: int) -> dict[str, Any]:
            meta = self._manager.restore(s, args=ocp.args.Composite(
                **{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM]
            if not isinstance(meta.get("config"), dict):
                raise ValueError("its meta holds no config")
            return meta["config"]

        return self._restore_newest_readable(step, read)

    def _restore_newest_readable(self, step: int | None, read: Callable[[int], Any]) -> Any:
        """Runs `read` on `step`, or on the newest step it succeeds on, warning about the others.

        Any exception from orbax/tensorstore counts as unreadable: truncated or missing files
        surface as ValueError, KeyError, JSONDecodeError, OSError, … depending on which file
        broke.
        """
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        if step is not None and step not in self._manager.all_steps():
            raise CheckpointError(f"{self.directory}: no checkpoint at step {step} "
                                  f"(have {self.all_steps()})")
        failures = []
        for s in steps:
            try:
                return read(s)
            except Exception as e:  # noqa: BLE001 - see the docstring
                self._unreadable.add(s)
                path = os.path.join(self.directory, str(s))
                failures.append(f"step {s}: {_one_line(e)}")
                if step is None:
                    log.warning("%s: checkpoint unreadable (%s); trying the previous one",
                                path, _one_line(e))
        raise CheckpointError(f"{self.directory}: no readable checkpoint ({'; '.join(failures)})")

    # ---- lifetime -------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads."""
        self._manager.wait_until_finished()
        self._manager.close()


def load_trained_module(workdir: str | os.PathLike, build: Callable[[dict[str, Any]], nnx.Module],
                        step: int | None = None, hint: str = "not a training run folder"
                        ) -> tuple[nnx.GraphDef, Any, dict[str, Any], int]:
    """(graphdef, params, saved config, step) of a run folder's checkpoint `step` (default newest).

    The one way merge, XSeg apply and export open a trained model: only the params item is read,
    and the module's shape comes from the config saved with it. `build(saved_config)` makes the
    module (raising UserError for an unusable config); it runs under nnx.eval_shape, so it
    allocates nothing. `hint` says what the folder should have been when it has no checkpoints.
    """
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UserError(f"{workdir}: {hint} (no checkpoints/ inside)")
    ckpt = Checkpointer(workdir)
    try:
        if step is None:
            step = ckpt.latest_step()
            if step is None:
                raise UserError(f"{workdir}: no checkpoint in it yet")
        saved = ckpt.saved_config(step)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(saved)))
        params = ckpt.restore_generator(nnx.to_pure_dict(abstract), step)
    finally:
        ckpt.close()
    return graphdef, params, saved, int(step)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


_MISSING = "<absent>"


def check_config_compatible(saved_cfg_json: Mapping[str, Any], new_cfg: Any,
                            where: str = "checkpoint") -> list[str]:
    """Compares the config a checkpoint was trained with to the one a resumed run asks for.

    Raises UserError (naming `where` and every field) when anything under `model` differs, a
    field added or removed included: those edits change the network's shapes, so the weights
    cannot be reused. Returns warnings for edits that are allowed but change what the resumed run
    does: a different `train.optimizer` (the trainer resets the optimiser state) and a different
    `seed` (the data order and augmentation no longer continue the old run's), a different
    `train.gan_patch_size` or `train.gan_dims` while the GAN is on (the trainer re-initialises the
    GAN discriminator: the warning names it, "discriminator"). Other edits
    (learning rate, loss weights, batch size, random_warp, lr_dropout, logging, …) are allowed
    silently. `new_cfg` is a ConfigDict or a plain dict; both sides are compared as JSON values.
    """
    new = new_cfg.to_dict() if hasattr(new_cfg, "to_dict") else dict(new_cfg)
    old_flat = _flatten(json.loads(json.dumps(dict(saved_cfg_json))))
    new_flat = _flatten(json.loads(json.dumps(new)))
    changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                     if old_flat.get(k, _MISSING) != new_flat.get(k, _MISSING))

    def edit(k: str) -> str:
        return f"{k} {old_flat.get(k, _MISSING)} -> {new_flat.get(k, _MISSING)}"

    refused = [edit(k) for k in changed if k.startswith("model.")]
    if refused:
        raise UserError(f"{where}: the model was trained with a different shape "
                        f"({', '.join(refused)}); use a new workdir or the original options")
    warnings = []
    if "train.optimizer" in changed:
        warnings.append(f"{edit('train.optimizer')}: the optimiser state is reset")
    if "seed" in changed:
        warnings.append(f"{edit('seed')}: data order and augmentation differ from the old run")
    gan_shape = [edit(k) for k in ("train.gan_patch_size", "train.gan_dims") if k in changed]
    if gan_shape and old_flat.get("train.gan_power", 0) > 0 and new_flat.get("train.gan_power", 0) > 0:
        warnings.append(f"{', '.join(gan_shape)}: the GAN discriminator is re-initialised")
    return warnings
