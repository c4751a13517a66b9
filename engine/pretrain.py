"""SAEHD pretraining (DFL_SPEC §3.2): options forced while pretraining, and the switch to normal
training.

Pretraining (`--config.train.pretrain=True --pretrain_faceset=PATH`) trains the model as a
self-reconstruction of one large, varied faceset: src and dst both read it, and the options in
`FORCED` are imposed (the overrides are printed once). The loss is the ordinary SAEHD loss, whose
style terms are off here; the greyscale pretraining target of the spec belongs to XSeg, not SAEHD.
Two conscious departures from DFL, both about options that mean nothing when src and dst are the
same faceset: DFL keeps the true-face generator term during pretraining against a code
discriminator it never steps (a fixed random critic), and leaves ct_mode on; here both are off.
LIAE's inter_AB stays frozen while pretraining, as DFL's does whenever random_warp is off.

Switching pretraining off (resuming a pretrained workdir with pretrain=False) keeps the encoder
and decoder weights and their optimiser moments, re-initialises the inter weights (`inter` for DF,
`inter_AB` and `inter_B` for LIAE: a fresh start's values with the run's seed) and their moments,
and restarts the iteration counter at 0. The pretraining phase's checkpoints, metrics, TensorBoard
events, preview and config move to `<workdir>/pretrain/` first: left in place, the new run's step
numbers would collide with theirs. The move goes through `pretrain.partial/`, so a crash at any
point is finished by the next start. Switching pretraining on for a normally trained model is
allowed, as in DFL: training continues from its step on the pretraining faceset.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import ml_collections

from engine import distributed
from engine.models import parse_archi
from engine.optim import path_names
from preprocessing.errors import UserError

# cfg.train fields pretraining imposes (DFL_SPEC §3.2 "Pretrain mode"; ct_mode and true_face_power:
# see the module docstring).
FORCED = {
    "random_warp": False, "random_src_flip": True, "random_dst_flip": True, "uniform_yaw": True,
    "lr_dropout": False, "random_hsv_power": 0.0, "ct_mode": "none", "gan_power": 0.0,
    "true_face_power": 0.0, "face_style_power": 0.0, "bg_style_power": 0.0,
}
ARCHIVE = "pretrain"  # <workdir>/pretrain/: the pretraining phase's outputs after the switch
_PARTIAL = ARCHIVE + ".partial"
# Per-phase outputs in the workdir; "checkpoints" moves last (see `archive_phase`).
_PHASE_OUTPUTS = ("metrics.jsonl", "tb", "preview.png", "config.json", "checkpoints")


def is_pretraining(cfg: Any) -> bool:
    """cfg.train.pretrain of a ConfigDict or of a saved config dict (absent: False, e.g. Quick96)."""
    train = cfg.get("train") or {}
    return bool(train.get("pretrain", False))


def effective_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`cfg` with `FORCED` applied while pretraining (a copy; printed once), else `cfg` itself."""
    if not is_pretraining(cfg):
        return cfg
    out = ml_collections.ConfigDict(cfg.to_dict())
    changed = [f"{k} {out.train[k]} -> {v}" for k, v in FORCED.items() if out.train[k] != v]
    out.train.update(FORCED)
    if changed:
        print(f"pretraining overrides: {', '.join(changed)}")
    return out


def training_facesets(cfg: ml_collections.ConfigDict, src: str | None, dst: str | None,
                      pretrain_faceset: str | None) -> tuple[str, str]:
    """(src, dst) paths the run reads: the pretraining faceset twice while pretraining."""
    if is_pretraining(cfg):
        if not pretrain_faceset:
            raise UserError("--config.train.pretrain=True needs --pretrain_faceset=PATH (the faceset "
                            "both src and dst read while pretraining)")
        return pretrain_faceset, pretrain_faceset
    if not src or not dst:
        raise UserError("--src and --dst are required (or --config.train.pretrain=True with --pretrain_faceset)")
    return src, dst


def switch(saved_cfg: Mapping[str, Any], cfg: Any) -> str | None:
    """"off" when a pretrained checkpoint resumes into normal training, "on" for the reverse, else None."""
    before, now = is_pretraining(saved_cfg), is_pretraining(cfg)
    if before == now:
        return None
    return "on" if now else "off"


def inter_names(model_cfg: Any) -> frozenset[str]:
    """The components pretraining's end re-initialises: DF's inter, LIAE's inter_AB and inter_B."""
    return frozenset({"inter"} if parse_archi(model_cfg.archi).kind == "df" else {"inter_AB", "inter_B"})


def reinit_inters(restored: Mapping[str, Any], fresh: Mapping[str, Any], names: frozenset[str]) -> dict:
    """`restored` at step 0 with the leaves under `names` (parameters and optimiser moments) and
    the counters taken from `fresh`, a newly initialised state of the same structure and shardings.
    The optimiser's own step counters (lr_dropout masks, lr cosine) carry on, as in DFL."""
    def pick(path, old, new):
        return new if not names.isdisjoint(path_names(path)) else old

    out = dict(restored)
    for key in ("params", "opt_state"):
        out[key] = jax.tree_util.tree_map_with_path(pick, restored[key], fresh[key])
    out["step"], out["counters"] = fresh["step"], fresh["counters"]
    return out


def _has_checkpoints(folder: str) -> bool:
    checkpoints = os.path.join(folder, "checkpoints")
    return os.path.isdir(checkpoints) and any(s.isdigit() for s in os.listdir(checkpoints))


def archived_workdir(workdir: str) -> str | None:
    """The folder (`pretrain.partial/` before `pretrain/`) holding a pretraining phase's
    checkpoints, or None: a switch whose run has not saved yet restores from there."""
    for name in (_PARTIAL, ARCHIVE):
        if _has_checkpoints(os.path.join(workdir, name)):
            return os.path.join(workdir, name)
    return None


def archive_phase(workdir: str) -> None:
    """Moves the pretraining phase's outputs into `<workdir>/pretrain/` (see the module docstring),
    unless they are there already. Call it with every Checkpointer on the workdir closed; in a
    multi-process run every process calls it and process 0 moves the files.

    Renames only, into `pretrain.partial/` and then the whole folder into place, so an interrupted
    move is finished by calling this again; outputs already moved are skipped. The checkpoints move
    last: until they do, the next start sees the same pretrained workdir and repeats the switch.
    """
    final, partial = os.path.join(workdir, ARCHIVE), os.path.join(workdir, _PARTIAL)
    todo = os.path.isdir(partial) or _has_checkpoints(workdir)
    if todo and os.path.exists(final):  # every process sees it (shared storage): all of them stop
        raise UserError(f"{final} already holds an earlier pretraining phase; move it elsewhere to "
                        f"switch pretraining off again")
    _sync("pretrain archive: decided")  # nobody reads the workdir while process 0 moves files
    if todo and distributed.is_main_process():
        os.makedirs(partial, exist_ok=True)
        for name in _PHASE_OUTPUTS:
            source, target = os.path.join(workdir, name), os.path.join(partial, name)
            if os.path.exists(source) and not os.path.exists(target):
                os.rename(source, target)
        os.rename(partial, final)
    _sync("pretrain archive: moved")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
