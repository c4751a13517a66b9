"""DeepFaceLive export: `.dfm` (SAEHD) and `XSeg_model.onnx` run in onnxruntime and match JAX.

Reference: the float32 JAX forward of the same parameters (`SAEHD.swap`, `sigmoid(XSeg(x))`) on
the channel-flipped input, since the files take and give BGR; tolerance 1e-4 max abs. Faces are
the astronaut portrait (distinct channels) and seeded uniform noise.
"""
from __future__ import annotations

import importlib.util
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest
from flax import nnx

from configs import saehd as saehd_config
from configs import xseg as xseg_config
from engine.dfm import export as dfm_export
from engine.dfm import write_dfm, write_xseg_onnx
from engine.models.saehd import SAEHD
from engine.models.xseg import XSeg
from preprocessing.errors import UserError
from preprocessing.samples import astronaut_rgb

TOL = 1e-4
RES = 32
DFM_OUTPUTS = ["out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0"]


def bgr_faces() -> np.ndarray:
    """[3,RES,RES,3] float32 BGR in [0,1]: the astronaut's face, then seeded noise. The tests run
    onnxruntime on the first face alone and on all three (dynamic batch) and compare with one JAX
    forward of all three (the networks treat faces independently)."""
    face = cv2.resize(astronaut_rgb()[30:250, 150:370], (RES, RES), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(0).uniform(0, 1, (2, RES, RES, 3))
    return np.concatenate([face[None, ..., ::-1] / 255.0, noise]).astype(np.float32)


def run_onnx(path: str, faces: np.ndarray) -> tuple[ort.InferenceSession, list[np.ndarray]]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session, session.run(None, {"in_face:0": faces})


def amplified(model: nnx.Module, gain: float) -> nnx.Module:
    """`model` with every kernel scaled by `gain`: fresh Glorot-initialised tiny SAEHDs give
    outputs within 0.01 of 0.5, too flat to show a channel mix-up against a 1e-4 tolerance."""
    nnx.update(model, jax.tree.map(lambda p: p * gain if p.ndim >= 2 else p, nnx.state(model)))
    return model


def jax_forward(model: nnx.Module, method):
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: method(nnx.merge(graphdef, s), x))
    return lambda x: [np.asarray(a) for a in forward(state, x)]


@pytest.fixture(scope="module", params=["liae-ud", "df-ud"])
def dfm(request, tmp_path_factory):
    """(path of the .dfm, the BGR faces, JAX swap of them read as RGB, JAX swap of them as they are)."""
    cfg = saehd_config.get_config("tiny")
    cfg.model.update(archi=request.param, resolution=RES)
    model = amplified(SAEHD(cfg.model, rngs=nnx.Rngs(jax.random.key(1, impl="rbg"))), 1.5)
    path = str(tmp_path_factory.mktemp("dfm") / "model_SAEHD_model.dfm")
    write_dfm(model, cfg.to_dict(), path)
    swap, faces = jax_forward(model, lambda m, x: m.swap(x)), bgr_faces()
    return path, faces, swap(faces[..., ::-1]), swap(faces)


@pytest.mark.parametrize("n", [1, 3])
def test_dfm_matches_the_jax_swap_in_bgr(dfm, n):
    path, faces, (want_celeb, want_celeb_mask, want_face_mask), (unflipped, _, _) = dfm
    session, (face_mask, celeb, celeb_mask) = run_onnx(path, faces[:n])
    assert [i.name for i in session.get_inputs()] == ["in_face:0"]
    assert session.get_inputs()[0].shape == ["N", RES, RES, 3]
    assert [o.name for o in session.get_outputs()] == DFM_OUTPUTS
    assert face_mask.shape == celeb_mask.shape == (n, RES, RES, 1) and celeb.shape == (n, RES, RES, 3)
    # The model is RGB inside: the reference ran on the flipped faces; its face is flipped back.
    assert np.max(np.abs(celeb - want_celeb[:n, ..., ::-1])) <= TOL
    assert np.max(np.abs(celeb_mask - want_celeb_mask[:n])) <= TOL
    assert np.max(np.abs(face_mask - want_face_mask[:n])) <= TOL
    # The channel handling is what makes it match: the same faces read as RGB give another swap,
    # and the output is BGR, not RGB.
    assert np.max(np.abs(celeb - unflipped[:n, ..., ::-1])) > 100 * TOL
    assert np.max(np.abs(celeb - want_celeb[:n])) > 100 * TOL


def test_xseg_onnx_matches_the_jax_forward(tmp_path):
    cfg = xseg_config.get_config("tiny")
    cfg.model.update(resolution=RES, base=4)
    model = XSeg(RES, 4, rngs=nnx.Rngs(jax.random.key(2, impl="rbg")))
    path = str(tmp_path / "XSeg_model.onnx")
    write_xseg_onnx(model, cfg, path)
    forward = jax_forward(model, lambda m, x: [jax.nn.sigmoid(m(x))])
    faces = bgr_faces()
    want, unflipped = forward(faces[..., ::-1])[0], forward(faces)[0]
    for n in (1, 3):
        session, (mask,) = run_onnx(path, faces[:n])
        assert [o.name for o in session.get_outputs()] == ["out_mask:0"]
        assert session.get_inputs()[0].shape == ["N", RES, RES, 3]
        assert mask.shape == (n, RES, RES, 1)
        assert np.max(np.abs(mask - want[:n])) <= TOL
        assert np.max(np.abs(mask - unflipped[:n])) > 100 * TOL


def test_a_bf16_model_exports_in_float32(tmp_path):
    """Export and check run in float32 whatever the model computes in (bf16 on GPUs)."""
    cfg = xseg_config.get_config("tiny")
    cfg.model.update(resolution=8, base=2)
    model32 = XSeg(8, 2, rngs=nnx.Rngs(3))
    bf16 = nnx.merge(nnx.split(nnx.eval_shape(
        lambda: XSeg(8, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))))[0], nnx.state(model32))
    path = str(tmp_path / "XSeg_model.onnx")
    write_xseg_onnx(bf16, cfg, path)
    faces = np.random.default_rng(4).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    want = jax_forward(model32, lambda m, x: [jax.nn.sigmoid(m(x))])(faces[..., ::-1])[0]
    assert np.max(np.abs(run_onnx(path, faces)[1][0] - want)) <= TOL
    # ... where a bf16 reference would have failed the export's own check.
    got_bf16 = jax_forward(bf16, lambda m, x: [jax.nn.sigmoid(m(x))])(faces[..., ::-1])[0]
    assert np.max(np.abs(got_bf16 - want)) > 10 * TOL


def test_a_missing_output_folder_is_a_user_error(tmp_path):
    cfg = xseg_config.get_config("tiny")
    cfg.model.update(resolution=8, base=2)
    with pytest.raises(UserError, match="does not exist"):
        write_xseg_onnx(XSeg(8, 2, rngs=nnx.Rngs(0)), cfg, str(tmp_path / "nope" / "XSeg_model.onnx"))


def test_a_failed_check_keeps_the_old_file(tmp_path, monkeypatch):
    """Export verification can fail: nothing replaces the target and no partial file is left."""
    cfg = xseg_config.get_config("tiny")
    cfg.model.update(resolution=8, base=2)
    path = tmp_path / "XSeg_model.onnx"
    path.write_bytes(b"old")
    monkeypatch.setattr(dfm_export, "TOLERANCE", -1.0)
    with pytest.raises(RuntimeError, match="out_mask:0 differs from the JAX forward"):
        write_xseg_onnx(XSeg(8, 2, rngs=nnx.Rngs(0)), cfg, str(path))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["XSeg_model.onnx"]


def test_config_must_describe_the_model(tmp_path):
    cfg = saehd_config.get_config("tiny")
    model = nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0)))
    cfg.model.archi = "df-ud"
    with pytest.raises(ValueError, match="does not describe the model"):
        write_dfm(model, cfg, str(tmp_path / "x.dfm"))


def test_missing_onnxruntime_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UserError, match=r"needs onnxruntime: pip install .*\[onnx\]"):
        dfm_export.require_onnx()
