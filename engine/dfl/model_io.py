"""A DFL model folder <-> one of our workdirs (orbax checkpoint + config.json).

`import_model` reads `NAME_<Class>_data.dat` for the options and iteration, the part files for
the weights and, when present, `src_dst_opt.npy` for the optimiser's moments, and writes the
checkpoint `engine.train` resumes from and `engine.merge` merges with. `export_model` writes the
same files back from a workdir's newest checkpoint. Both refuse to overwrite anything.

Not carried over: DFL's GAN / true-face discriminators (`GAN.npy`, `code_discriminator.npy`: they
start fresh when those losses are on), its loss history and preview sample, and the data
position (training continues with a fresh sample order).
"""
from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from engine import optim
from engine.checkpoint import Checkpointer
from engine.dfl import names, options, weights
from engine.models.saehd import SAEHD, parse_archi
from engine.trainer import write_config
from engine.train_step import init_state
from preprocessing.errors import UserError

log = logging.getLogger(__name__)

OPT_PART = "src_dst_opt"
NOT_IMPORTED = ("GAN", "GAN_opt", "code_discriminator", "D_code_opt")


class Imported(NamedTuple):
    """What `import_model` wrote: the config, the step, and whether the optimiser state came along."""
    config: ml_collections.ConfigDict
    step: int
    optimizer_imported: bool


def detect_model_class(model_dir: str, name: str, model: str | None = None) -> str:
    """"SAEHD" or "Quick96": the one asked for, or the one whose data.dat is in the folder."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: not a folder")
    wanted = [model] if model else list(names.MODEL_CLASSES.values())
    for cls in wanted:
        if cls not in names.MODEL_CLASSES.values():
            raise UserError(f"--model={cls}: choose SAEHD or Quick96")
        if os.path.isfile(os.path.join(model_dir, names.file_name(name, cls, "data"))):
            return cls
    found = sorted(f for f in os.listdir(model_dir) if f.endswith("_data.dat")) or ["none"]
    expected = " or ".join(names.file_name(name, cls, "data") for cls in wanted)
    raise UserError(f"{model_dir}: no {expected} (model state files here: {', '.join(found)})")


def _template(cfg: ml_collections.ConfigDict) -> dict:
    """Our parameter tree for `cfg` as shape structs (nothing is computed)."""
    abstract = nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(abstract))


def _opt_state(tx: optax.GradientTransformation, template: dict, moments: dict[str, dict] | None,
               iters: int) -> Any:
    """Our optimiser state (an optax chain's tuple) holding DFL's moments (zeros without them) and
    its iteration count. Built on the host: `tx.init` on the real parameters would run one eager
    device op per leaf for zeros that are replaced anyway."""
    zeros = lambda: weights.copy_tree(template, zeros=True)  # noqa: E731
    out = []
    for s in tx.init({}):  # the chain's state with empty moment trees, real counters and key
        if isinstance(s, optim.DflAdaBeliefState):
            s = optim.DflAdaBeliefState(*(moments[f] if moments else zeros() for f in ("mu", "nu")))
        elif isinstance(s, optim.DflRmsState):
            s = optim.DflRmsState(nu=moments["nu"] if moments else zeros())
        elif isinstance(s, (optax.ScaleByScheduleState, optim.LrDropoutState)):
            s = s._replace(count=np.asarray(iters, s.count.dtype))
        out.append(s)
    return tuple(out)


def _moments_of(opt_state: Any) -> dict[str, Any]:
    for s in opt_state:
        if isinstance(s, optim.DflAdaBeliefState):
            return {"mu": s.mu, "nu": s.nu}
        if isinstance(s, optim.DflRmsState):
            return {"nu": s.nu}
    raise ValueError("optimiser state without DFL moments")  # every make_optimizer chain has them


def _has_checkpoint(workdir: str) -> bool:
    ckpt = os.path.join(workdir, "checkpoints")
    return os.path.isdir(ckpt) and bool(os.listdir(ckpt))


def _read_moments(path: str, optimizer: str, variables: list[names.Variable],
                  template: dict) -> dict[str, dict] | None:
    """The optimiser moments from DFL's `src_dst_opt.npy`, or None (with a warning) when the file
    is absent or holds another optimiser's state: training then starts with a fresh optimiser."""
    if not os.path.isfile(path):
        log.warning("%s: not found; training starts with a fresh optimiser", path)
        return None
    got = weights.moments_from_dfl(weights.read_part(path), optimizer, variables, template, path)
    if got is None:
        log.warning("%s holds no %s state; training starts with a fresh optimiser", path, optimizer)
        return None
    moments, absent = got
    if absent:
        log.warning("%s: %d optimiser slots absent (frozen parts), started at zero", path, len(absent))
    return moments


def import_model(model_dir: str, name: str, workdir: str, model: str | None = None) -> Imported:
    """Converts DFL model `name` in `model_dir` into a new workdir (see the module docstring)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"{workdir}: exists and is not a folder")
    if _has_checkpoint(workdir):
        raise UserError(f"{workdir}: already holds a checkpoint; import into a new or empty workdir")
    cls = detect_model_class(model_dir, name, model)
    path = lambda part: os.path.join(model_dir, names.file_name(name, cls, part))  # noqa: E731
    data = weights.read_model_data(path("data"))
    step = data.get("iter", 0)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise UserError(f"{path('data')}: iter={step!r} is not an iteration count")
    step = int(step)
    cfg = options.config_from_options(data.get("options", {}), cls)
    try:
        archi = parse_archi(cfg.model.archi)
        template = _template(cfg)
    except ValueError as e:
        raise UserError(f"{path('data')}: options describe no model we can build ({e})") from None
    variables = names.variables(archi)
    parts, sources = {}, {}
    for part in names.part_names(archi):
        sources[part] = path(part)
        if not os.path.isfile(sources[part]):
            raise UserError(f"{sources[part]}: missing (a {cfg.model.archi} model has "
                            f"{', '.join(names.part_names(archi))})")
        parts[part] = weights.read_part(sources[part])
    params = weights.params_from_dfl(parts, variables, template, sources)

    tx = optim.make_optimizer(cfg.train, cfg.seed)
    moments = _read_moments(path(OPT_PART), cfg.train.optimizer, variables, template)
    for part in NOT_IMPORTED:
        if os.path.isfile(path(part)):
            log.warning("%s: not imported; that discriminator starts fresh if its loss is on", path(part))

    state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                         jax.eval_shape(lambda p: init_state(p, tx), template))  # counters at zero
    state.update(params=params, opt_state=_opt_state(tx, template, moments, step))
    meta = {"config": cfg.to_dict(), "seed": cfg.seed, "optimizer": cfg.train.optimizer,
            "imported_from": {"model_dir": os.path.abspath(model_dir), "name": name, "class": cls}}
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(workdir, keep=cfg.checkpoint.keep)
    try:
        ckpt.save(step, state, meta, force=True)
    finally:
        ckpt.close()
    write_config(workdir, cfg)
    return Imported(cfg, step, moments is not None)


def load_train_state(workdir: str) -> tuple[ml_collections.ConfigDict, int, dict, Any]:
    """(config, step, params, optimiser state or None) from a workdir's newest readable checkpoint."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UserError(f"{workdir}: not a training run folder (no checkpoints/ inside)")
    ckpt = Checkpointer(workdir)
    try:
        if ckpt.latest_step() is None:
            raise UserError(f"{workdir}: no checkpoint to export")
        cfg = ml_collections.ConfigDict(ckpt.saved_config())
        template = _template(cfg)
        tx = optim.make_optimizer(cfg.train, cfg.seed)
        abstract = {"params": template, "opt_state": jax.eval_shape(tx.init, template)}
        state, meta = ckpt.restore(abstract)
    finally:
        ckpt.close()
    return cfg, int(meta["step"]), jax.device_get(state["params"]), jax.device_get(state["opt_state"])


def export_model(workdir: str, output_dir: str, name: str) -> list[str]:
    """Writes DFL's files for `workdir`'s newest checkpoint into `output_dir`; returns their paths."""
    return write_dfl_files(output_dir, name, *load_train_state(workdir))


def write_dfl_files(output_dir: str, name: str, cfg: ml_collections.ConfigDict, step: int, params: dict,
                    opt_state: Any) -> list[str]:
    """DFL's weight files, optimiser state (when given) and data.dat for a model; returns their
    paths. Refuses when any of them exists already, before writing anything."""
    cls = names.MODEL_CLASSES.get(cfg.name, "SAEHD")
    variables = names.variables(cfg.model.archi)
    files: dict[str, Any] = dict(weights.params_to_dfl(params, variables))
    if opt_state is not None:
        files[OPT_PART] = weights.moments_to_dfl(_moments_of(opt_state), cfg.train.optimizer, variables, step)
    files["data"] = {"iter": step, "options": options.options_from_config(cfg), "loss_history": [],
                     "sample_for_preview": None, "choosed_gpu_indexes": None}
    paths = {part: os.path.join(output_dir, names.file_name(name, cls, part)) for part in files}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing:
        raise UserError(f"{existing[0]}: exists; export into another folder or with another --name")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"{output_dir}: exists and is not a folder")
    os.makedirs(output_dir, exist_ok=True)
    for part, contents in files.items():
        weights.write_pickle(paths[part], contents)
    return list(paths.values())
