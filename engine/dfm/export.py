"""Writing `.dfm` and `XSeg_model.onnx` files, each checked in onnxruntime against the JAX forward.

Every file is written next to its target, run in onnxruntime on a seeded batch of two faces and
compared with the float32 JAX forward of the same parameters (on the channel-flipped input, since
the files take BGR); only a file within `TOLERANCE` replaces `path`. The models may compute in
bf16: the reference and the export are float32 either way.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from engine.models.saehd import SAEHD, parse_archi, validate_model_config
from engine.models.xseg import XSeg
from preprocessing.errors import UserError

TOLERANCE = 1e-4  # max abs difference onnxruntime vs JAX, per output
_CHECK_BATCH = 2
_ONNX_PACKAGES = ("onnx", "onnxruntime")


def require_onnx() -> None:
    """UserError naming the missing package(s) when the `onnx` extra is not installed."""
    missing = [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: "
                        "pip install -c constraints.txt -e '.[onnx]'")


def _model_section(cfg: Any) -> ml_collections.ConfigDict:
    """cfg.model of a training config (a ConfigDict, or the dict saved with a checkpoint)."""
    cfg = ml_collections.ConfigDict(cfg) if isinstance(cfg, dict) else cfg
    return cfg.model


def _float32_forward(model: nnx.Module, build: Callable[[], nnx.Module],
                     method: Callable[[nnx.Module, jax.Array], Any]) -> Callable[[np.ndarray], Any]:
    """`method` of `model`'s parameters in a float32 copy of the module (`build` makes its shape)."""
    graphdef, _ = nnx.split(nnx.eval_shape(build))
    state = nnx.state(model)
    forward = jax.jit(lambda s, x: method(nnx.merge(graphdef, s), x))
    return lambda x: jax.device_get(forward(state, x))


def _write_verified(proto: Any, path: str, reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                    resolution: int) -> None:
    """Saves `proto` beside `path`, checks it in onnxruntime against `reference(bgr_faces)` and
    moves it to `path`; RuntimeError (and no file) when an output is off by more than TOLERANCE."""
    import onnx
    import onnxruntime as ort

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{path}: the folder {folder} does not exist")
    tmp = f"{path}.partial"
    try:
        try:
            onnx.save_model(proto, tmp)
        except OSError as e:
            raise UserError(f"{path}: cannot write the model ({e.strerror or e})") from None
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        faces = np.random.default_rng(0).uniform(0, 1, (_CHECK_BATCH, resolution, resolution, 3))
        faces = faces.astype(np.float32)
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(names, {session.get_inputs()[0].name: faces})))
        for name, want in reference(faces).items():
            want = np.asarray(want, np.float32)
            if got[name].shape != want.shape:
                raise RuntimeError(f"{path}: ONNX output {name} has shape {got[name].shape}, "
                                   f"the JAX forward {want.shape}")
            err = float(np.max(np.abs(got[name] - want)))
            if not err <= TOLERANCE:
                raise RuntimeError(f"{path}: ONNX output {name} differs from the JAX forward by "
                                   f"{err:.3g} (> {TOLERANCE}); not written")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_dfm(model: SAEHD, cfg: Any, path: str) -> None:
    """Writes `model` as a DeepFaceLive `.dfm` (engine/dfm/saehd.py) to `path`, verified.

    `cfg` is the model's training config (as saved with its checkpoint); its `model` section must
    describe `model`.
    """
    require_onnx()
    from engine.dfm.saehd import OUT_CELEB_FACE, OUT_CELEB_FACE_MASK, OUT_FACE_MASK, saehd_onnx

    model_cfg = _model_section(cfg)
    validate_model_config(model_cfg)
    if parse_archi(model_cfg.archi) != model.archi or int(model_cfg.resolution) != model.resolution:
        raise ValueError(f"cfg.model ({model_cfg.archi} at {model_cfg.resolution} px) does not "
                         f"describe the model ({model.archi} at {model.resolution} px)")
    swap = _float32_forward(model, lambda: SAEHD(model_cfg, rngs=nnx.Rngs(0)),
                            lambda m, x: m.swap(x))

    def reference(bgr: np.ndarray) -> dict[str, np.ndarray]:
        celeb, celeb_mask, face_mask = swap(bgr[..., ::-1])
        return {OUT_FACE_MASK: face_mask, OUT_CELEB_FACE: celeb[..., ::-1],
                OUT_CELEB_FACE_MASK: celeb_mask}

    metadata = {"archi": str(model_cfg.archi), "resolution": str(model.resolution),
                "face_type": str(model_cfg.face_type), "input_channels": "BGR"}
    _write_verified(saehd_onnx(model, metadata), path, reference, model.resolution)


def write_xseg_onnx(xseg_model: XSeg, cfg: Any, path: str) -> None:
    """Writes a trained XSeg as DFL's `XSeg_model.onnx` (engine/dfm/xseg.py) to `path`, verified.

    `cfg` is the XSeg training config (`engine.xseg.model.load_trained`'s third value).
    """
    require_onnx()
    from engine.dfm.xseg import OUT_MASK, xseg_onnx

    model_cfg = _model_section(cfg)
    res, base = int(model_cfg.resolution), int(model_cfg.base)
    if (res, base) != (xseg_model.resolution, xseg_model.base):
        raise ValueError(f"cfg.model (resolution {res}, base {base}) does not describe the model "
                         f"(resolution {xseg_model.resolution}, base {xseg_model.base})")
    mask = _float32_forward(xseg_model, lambda: XSeg(res, base, rngs=nnx.Rngs(0)),
                            lambda m, x: jax.nn.sigmoid(m(x)))

    def reference(bgr: np.ndarray) -> dict[str, np.ndarray]:
        return {OUT_MASK: mask(bgr[..., ::-1])}

    metadata = {"resolution": str(res), "face_type": str(model_cfg.face_type), "input_channels": "BGR"}
    _write_verified(xseg_onnx(xseg_model, metadata), path, reference, res)
