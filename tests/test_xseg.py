"""XSeg: the network's shape and parameter count, the augmentation's geometry, training on
synthetic faces with known masks to IoU >= 0.9, resume, apply/remove, and bad input.

Synthetic faceset: 64 px whole_face crops built from the 3-D mean face (so the stored landmarks
re-crop like real ones); each "face" is a textured ellipse (astronaut skin) with a known mask on a
textured background (coffee / chelsea patches). References: analytic counts from DFL_SPEC §2.1's
table, OpenCV for warps, exact masks for IoU.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data

from preprocessing.align import image_to_face_matrix, transform_points
from preprocessing.face_types import FaceType
from preprocessing.faceset import FacesetWriter, add_array
from preprocessing.pose import LANDMARKS_68_3D

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def synthetic_faces(n: int, seed: int, size: int = SIZE, face_type: FaceType = FaceType.WHOLE_FACE):
    """faces uint8 [n,S,S,3], masks uint8 [n,S,S,1] (0/255, the ellipse), landmarks [n,68,2]."""
    rng = np.random.default_rng(seed)
    skin = cv2.resize(skimage.data.astronaut()[40:200, 160:320], (256, 256), interpolation=cv2.INTER_AREA)
    backgrounds = [skimage.data.coffee(), skimage.data.chelsea()]
    faces, masks, marks = [], [], []
    for _ in range(n):
        yaw = rng.uniform(-0.5, 0.5)
        c, s = np.cos(yaw), np.sin(yaw)
        turned = LANDMARKS_68_3D @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
        frame_lm = turned[:, :2] * rng.uniform(40, 60) + rng.uniform(200, 300, 2)
        matrix = image_to_face_matrix(frame_lm, size, face_type)
        lm = transform_points(frame_lm, matrix).astype(np.float32)
        bg = backgrounds[rng.integers(2)]
        y0, x0 = rng.integers(0, bg.shape[0] - 160), rng.integers(0, bg.shape[1] - 160)
        image = cv2.resize(bg[y0:y0 + 160, x0:x0 + 160], (size, size), interpolation=cv2.INTER_AREA)
        sy, sx = rng.integers(0, 256 - size, 2)
        texture = (skin[sy:sy + size, sx:sx + size] * rng.uniform(0.7, 1.2)).clip(0, 255).astype(np.uint8)
        centre = lm.mean(axis=0) + rng.uniform(-3, 3, 2)
        axes = (np.ptp(lm, axis=0) / 2 * rng.uniform(0.9, 1.2, 2)).astype(int)
        mask = np.zeros((size, size), np.uint8)
        cv2.ellipse(mask, tuple(int(v) for v in centre), tuple(int(v) for v in axes),
                    rng.uniform(-20, 20), 0, 360, 255, -1)
        image = np.where(mask[..., None] > 0, texture, image)
        faces.append(image)
        masks.append(mask[..., None])
        marks.append(lm)
    return np.stack(faces), np.stack(masks), np.stack(marks)


def write_faceset(path: str, n: int, seed: int, labelled: np.ndarray | None,
                  face_type: FaceType = FaceType.WHOLE_FACE) -> dict[str, np.ndarray]:
    """A faceset of synthetic faces; `masks` holds a crude square (the "mesh" mask) and, when
    `labelled` (a bool per face) is given, xseg_labels/xseg_labelled hold the true ellipses."""
    faces, masks, lm = synthetic_faces(n, seed, face_type=face_type)
    crude = np.zeros_like(masks)
    crude[:, 16:48, 16:48] = 255
    with FacesetWriter(path, size=SIZE, face_type=face_type, producer={"program": "test_xseg"},
                       arrays=["faces", "masks", "landmarks"], shard_faces=16) as w:
        sid = w.add_source({"path": "synthetic", "sha256": "0" * 64})
        for k in range(n):
            w.add_frame(sid, k, {"faces": faces[k:k + 1], "masks": crude[k:k + 1], "landmarks": lm[k:k + 1]})
    if labelled is not None:
        add_array(path, "xseg_labels", np.where(labelled[:, None, None, None], masks, 0).astype(np.uint8))
        add_array(path, "xseg_labelled", labelled.astype(np.uint8))
    return {"faces": faces, "masks": masks, "landmarks": lm}


# ------------------------------------------------------------------------------------------ network
def test_parameter_count_matches_the_spec_table():
    """DFL 256/32 against §2.1's table, counted by hand: conv 3x3 = 9*cin*cout + cout (bias);
    FRN+TLU = gamma, beta, tau per channel + one eps; UpConv likewise; Dense = in*out + out."""
    from flax import nnx

    from engine.models.xseg import XSeg, param_count

    def block(cin, cout):
        return 9 * cin * cout + cout + 3 * cout + 1

    encoder = (block(3, 32) + block(32, 32) + block(32, 64) + block(64, 64) + block(64, 128)
               + block(128, 128) + block(128, 256) + 2 * block(256, 256) + 6 * block(256, 256))
    bottleneck = 4096 * 512 + 512 + 512 * 4096 + 4096
    deep_up = block(256, 128) + block(384, 256) + 2 * block(256, 256)  # up5, up4, up3
    decoder = (3 * deep_up + block(256, 128) + block(256, 128) + block(128, 128)
               + block(128, 64) + block(128, 64) + block(64, 64)
               + block(64, 32) + block(64, 32) + block(32, 32))
    out = 9 * 32 * 1 + 1
    model = nnx.eval_shape(lambda: XSeg(256, 32, rngs=nnx.Rngs(0)))
    assert param_count(model) == encoder + bottleneck + decoder + out  # exact
    assert model.levels == 6


def test_shapes_levels_and_pretrain_zeroes_the_skips():
    import jax.numpy as jnp
    from flax import nnx

    from engine.models.xseg import XSeg, num_levels

    assert [num_levels(r) for r in (8, 64, 128, 256)] == [1, 4, 5, 6]
    with pytest.raises(ValueError):
        num_levels(96)
    model = XSeg(64, 8, rngs=nnx.Rngs(0))
    faces, _, _ = synthetic_faces(2, seed=5)
    x = jnp.asarray(faces / 255.0, jnp.float32)
    assert model(x).shape == (2, 64, 64, 1) and model(x).dtype == jnp.float32
    # With the bottleneck's output layer zeroed, pretrain mode (skips zeroed) sees nothing of the
    # input, so both faces give the same logits; with skips they differ.
    model.dense2.kernel[...] = jnp.zeros_like(model.dense2.kernel[...])
    model.dense2.bias[...] = jnp.zeros_like(model.dense2.bias[...])
    pre = np.asarray(model(x, pretrain=True))
    np.testing.assert_array_equal(pre[0], pre[1])  # exact: identical computations
    full = np.asarray(model(x))
    assert np.abs(full[0] - full[1]).max() > 1e-3


def test_blur_pool_matches_a_float64_binomial_filter():
    """BlurPool = correlate with outer(binomial, binomial), zero pad [floor, ceil]((f-1)/2), stride 2."""
    import math

    import jax.numpy as jnp

    from engine.models.xseg import blur_pool

    image = skimage.data.chelsea()[:32, :32].astype(np.float64) / 255.0
    for f in (2, 3, 4):
        taps = np.array([math.comb(f - 1, k) for k in range(f)], np.float64)
        kernel = np.outer(taps, taps) / taps.sum() ** 2
        padded = np.pad(image, (((f - 1) // 2, f // 2), ((f - 1) // 2, f // 2), (0, 0)))
        ref = sum(kernel[a, b] * padded[a:a + 32, b:b + 32] for a in range(f) for b in range(f))[::2, ::2]
        got = np.asarray(blur_pool(jnp.asarray(image[None], jnp.float32), f))[0]
        np.testing.assert_allclose(got, ref, atol=1e-6)  # float32 rounding


# ------------------------------------------------------------------------------------------ augmentation
def test_recrop_matches_opencv_warp_affine():
    """The validation/apply re-crop is cv2.warpAffine (bicubic, replicated border) of the face."""
    import jax.numpy as jnp

    from engine.xseg.augment import recrop

    face = cv2.resize(skimage.data.astronaut()[0:256, 128:384], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    matrix = cv2.getRotationMatrix2D((30.0, 34.0), 17.0, 0.8).astype(np.float32)
    matrix[:, 2] += (3.0, -2.0)
    images, _ = recrop(jnp.asarray(face[None]), None, jnp.asarray(matrix[None]), 48)
    ref = cv2.warpAffine(face.astype(np.float32), matrix, (48, 48), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    np.testing.assert_allclose(np.asarray(images[0]), np.clip(ref / 255.0, 0, 1), atol=2e-4)  # ~0.05 grey levels


def test_augmented_masks_are_binary_follow_the_face_and_are_reproducible():
    import functools

    import jax
    import jax.numpy as jnp

    from engine.xseg import augment

    augment_batch = jax.jit(functools.partial(augment.augment_batch, 0, resolution=SIZE))
    faces, masks, _ = synthetic_faces(8, seed=3)
    identity = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (8, 1, 1))
    batch = {"faces": jnp.asarray(faces), "targets": jnp.asarray(masks),
             "base_matrices": jnp.asarray(identity), "sample_ids": jnp.arange(8, dtype=jnp.int32)}
    images, out = augment_batch(jnp.int32(5), batch)
    images, out = np.asarray(images), np.asarray(out)
    assert images.shape == (8, SIZE, SIZE, 3) and out.shape == (8, SIZE, SIZE, 1)
    assert set(np.unique(out)) <= {0.0, 1.0} and images.min() >= 0 and images.max() <= 1
    # Affine scale is within +-5 % and the warp moves points by < 0.24 cell: areas stay close.
    ratio = out.sum(axis=(1, 2, 3)) / (masks > 127).sum(axis=(1, 2, 3))
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio
    again = np.asarray(augment_batch(jnp.int32(5), batch)[1])
    np.testing.assert_array_equal(out, again)  # keys from (seed, step, sample id)
    other = np.asarray(augment_batch(jnp.int32(6), batch)[1])
    assert np.abs(other - out).sum() > 0


# ------------------------------------------------------------------------------------------ train + apply
TRAIN_FACES, STEPS = 64, 500


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, train faceset, seconds): the tiny XSeg trained in process for STEPS steps."""
    import time

    from configs.xseg import get_config
    from engine.xseg.trainer import XsegTrainer

    root = tmp_path_factory.mktemp("xseg")
    labelled = np.arange(TRAIN_FACES) % 8 != 7  # 56 labelled; the rest must be ignored
    write_faceset(str(root / "train"), TRAIN_FACES, seed=0, labelled=labelled)
    cfg = get_config("tiny")
    cfg.train.max_steps = STEPS
    cfg.log.update(every_steps=STEPS // 2, preview_every_steps=STEPS)
    start = time.perf_counter()
    trainer = XsegTrainer(cfg, [str(root / "train")], str(root / "run"), progress=False)
    try:
        assert len(trainer.data.train_ids) + len(trainer.data.validation_ids) == labelled.sum()
        trainer.run()
    finally:
        trainer.close()
    return str(root / "run"), str(root / "train"), time.perf_counter() - start


def tree_digest(path: str) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_tiny_xseg_reaches_iou_on_held_out_faces_and_apply_touches_nothing_else(trained, tmp_path):
    from engine.xseg.apply import apply_xseg
    from preprocessing.faceset import Faceset

    # The "within 2 minutes on 2 cores" is a speed target: the training time is recorded in
    # benchmarks/RESULTS.md (67 s idle, 110 s with other jobs on the cores), not asserted here.
    workdir, _, _seconds = trained
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [STEPS // 2, STEPS] and records[-1]["val_iou"] > 0.85
    assert os.path.getsize(os.path.join(workdir, "preview.png")) > 0

    held_out = str(tmp_path / "held_out")
    truth = write_faceset(held_out, 24, seed=99, labelled=None)["masks"] > 127
    before = tree_digest(held_out)
    manifest_before = json.load(open(os.path.join(held_out, "manifest.json")))
    assert apply_xseg(workdir, held_out, batch_size=16, progress=False) == 24
    fs = Faceset.open(held_out)
    pred = fs.to_numpy("xseg_masks")
    assert set(np.unique(pred)) <= {0, 255}
    iou = np.logical_and(pred > 127, truth).sum() / np.logical_or(pred > 127, truth).sum()
    assert iou >= 0.9, iou
    after = tree_digest(held_out)
    unchanged = {k: v for k, v in after.items() if not k.startswith("xseg_masks") and k != "manifest.json"}
    assert unchanged == {k: v for k, v in before.items() if k != "manifest.json"}  # byte-identical
    manifest = json.load(open(os.path.join(held_out, "manifest.json")))
    assert manifest["arrays"].pop("xseg_masks") == {"dtype": "uint8", "shape": [SIZE, SIZE, 1]}
    assert manifest == manifest_before

    done = subprocess.run([sys.executable, "-m", "engine.xseg_apply", f"--faceset={held_out}", "--remove"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.load(open(os.path.join(held_out, "manifest.json"))) == manifest_before
    assert not os.path.exists(os.path.join(held_out, "xseg_masks"))


def test_rerun_resumes_from_the_last_checkpoint(trained, tmp_path, capsys):
    import shutil

    from configs.xseg import get_config
    from engine.xseg.trainer import XsegTrainer

    workdir, faceset, _ = trained
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    cfg = get_config("tiny")
    cfg.train.lr = 5e-4  # a safe edit on resume
    trainer = XsegTrainer(cfg, [faceset], copy, progress=False)
    trainer.close()
    assert f"resumed from step {STEPS}" in capsys.readouterr().out
    assert int(trainer.state["step"]) == STEPS and trainer.data.position == STEPS * 8
    cfg.model.base = 16
    with pytest.raises(Exception, match="model.base"):
        XsegTrainer(cfg, [faceset], copy, progress=False)


# ------------------------------------------------------------------------------------------ data + errors
def test_pseudo_labels_use_mesh_masks_with_labels_overriding(tmp_path):
    from engine.xseg.data import select
    from preprocessing.faceset import Faceset

    labelled = np.zeros(8, bool)
    labelled[[2, 5]] = True
    truth = write_faceset(str(tmp_path / "fs"), 8, seed=1, labelled=labelled)["masks"]
    fs = Faceset.open(str(tmp_path / "fs"))
    sel = select(fs, "mesh")
    crude = fs.to_numpy("masks")
    np.testing.assert_array_equal(sel.ids, np.arange(8))
    np.testing.assert_array_equal(sel.targets[~labelled], crude[~labelled])
    np.testing.assert_array_equal(sel.targets[labelled], truth[labelled])
    plain = select(fs, "none")
    np.testing.assert_array_equal(plain.ids, [2, 5])
    np.testing.assert_array_equal(plain.targets, truth[labelled])


def test_bad_input_gets_one_line_errors(tmp_path):
    unlabelled = str(tmp_path / "unlabelled")
    write_faceset(unlabelled, 4, seed=2, labelled=None)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "engine.xseg_train", "--config=configs/xseg.py:tiny",
                               f"--workdir={tmp_path / 'run'}", "--noprogress", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    for args, message in (((f"--faceset={unlabelled}",), "no labelled faces"),
                          ((f"--faceset={tmp_path / 'missing'}",), "no such faceset folder"),
                          ((f"--faceset={unlabelled}", "--config.pseudo_labels=hull"), "choose none or mesh"),
                          ((f"--faceset={unlabelled}", "--config.model.resolution=96"), "power of two")):
        done = run(*args)
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "engine.xseg_apply", f"--faceset={unlabelled}",
                           f"--workdir={tmp_path / 'nothing'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no XSeg checkpoints" in done.stderr, done.stderr[-2000:]
