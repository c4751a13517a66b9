"""engine.augment against OpenCV, SciPy and float64 NumPy references.

Tolerances (measured values in brackets, on opencv-python-headless 5.0):
* samplers vs cv2.warpAffine / cv2.remap: <= 0.02 grey levels on float32 images [0.003] and
  <= 1 level on uint8 images, where OpenCV rounds its output [0.5];
* augmentation with the jitter off vs cv2.warpAffine(face, base_matrix): <= 1 level (images, masks);
* elastic map vs DFL's construction (cv2.resize of the control grid): <= 1e-3 px;
* random draws: flip rate 0.4 +- 0.03 over 4000 draws (4 sigma), cell sizes 1/3 +- 0.04 over 3000
  (4.6 sigma), uniformity by Kolmogorov-Smirnov p > 1e-3;
* geometry read back from coordinate-ramp images: affine fit residual <= 0.01 px;
* one batch on 2 forced CPU devices vs 1 device: <= 1e-4 [1.5e-5, float rounding of another fusion].
* the same batch through a program with the traced input_is_target flag: <= 1e-4 [1.4e-5, likewise].
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from engine.augment import augment_batch, sample_keys
from engine.augment.color import HsvJitter, apply_hsv_jitter, random_hsv_jitter
from engine.augment.geometry import AffineJitter, jitter_matrix, random_affine_jitter
from engine.augment.resample import remap, warp_affine
from engine.augment.warp import (
    CELL_DIVISORS, JITTER, MAX_CELLS, TRUNCATE, displacement, elastic_map, random_elastic_warp,
)
from engine.color_transfer import rct_moments
from preprocessing import align
from preprocessing import masks as face_masks
from preprocessing.detect import create_detector
from preprocessing.face_types import FaceType
from preprocessing.samples import astronaut_rgb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACESET_SIZE = 256
CV2_INTERPOLATION = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}
CV2_BORDER = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
NO_JITTER = dict(random_warp=False, src_flip=False, dst_flip=False, hsv_power=0.0,
                 rotation_range=(0.0, 0.0), scale_range=(0.0, 0.0), shift_range=(0.0, 0.0))
# Everything on: one compiled function serves all the full-pipeline tests (and the 2-device run).
FULL = dict(resolution=64, random_warp=True, src_flip=True, dst_flip=True, hsv_power=0.2, ct_mode="rct")
BATCH = 4

_warp_affine = jax.jit(warp_affine, static_argnames=("size", "method", "border"))
_remap = jax.jit(remap, static_argnames=("method", "border"))
_full = jax.jit(functools.partial(augment_batch, **FULL))
_moments = jax.jit(rct_moments)
_displacement = jax.jit(jax.vmap(displacement, in_axes=(0, None, None)))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return astronaut_rgb()


@pytest.fixture(scope="module")
def faceset_face(astronaut) -> dict:
    """The astronaut as the extractor stores it: a 256 px whole_face crop, its hull and eyes/mouth
    masks, and face-space landmarks."""
    detected = create_detector("blazeface").detect(astronaut)[0]
    matrix = align.image_to_face_matrix(detected.landmarks, FACESET_SIZE, FaceType.WHOLE_FACE)
    landmarks = align.transform_points(detected.landmarks, matrix)
    size = (FACESET_SIZE, FACESET_SIZE)
    return dict(image=align.warp_to_face(astronaut, matrix, FACESET_SIZE), landmarks=landmarks,
                mask=face_masks.hull_mask(size, landmarks), em=face_masks.eyes_mouth_mask(size, landmarks))


def _side(faces, masks, ems, bases, ids) -> dict:
    return dict(faces=np.stack(faces), masks=np.stack(masks), eyes_mouth_masks=np.stack(ems),
                base_matrices=np.stack(bases).astype(np.float32), sample_ids=np.asarray(ids, np.int32))


@pytest.fixture(scope="module")
def batches(faceset_face) -> tuple[dict, dict]:
    """src: four variants of the face (brightness, landmark shifts); dst: recoloured, mirrored ones."""
    f = faceset_face
    faces, bases = [], []
    for i in range(BATCH):
        faces.append(np.clip(f["image"] * (0.8 + 0.1 * i), 0, 255).astype(np.uint8))
        bases.append(align.image_to_face_matrix(f["landmarks"] + 3.0 * i, FULL["resolution"], FaceType.FULL))
    masks, ems = [f["mask"]] * BATCH, [f["em"]] * BATCH
    src = _side(faces, masks, ems, bases, range(10, 10 + BATCH))
    dst_faces = [np.ascontiguousarray(face[:, ::-1, [2, 0, 1]]) for face in faces]
    dst = _side(dst_faces, masks, ems, bases, range(100, 100 + BATCH))
    return src, dst


@pytest.fixture(scope="module")
def full_output(batches) -> dict:
    src, dst = batches
    return {k: np.asarray(v) for k, v in _full(0, 5, src, dst).items()}


def _take(batch: dict, index) -> dict:
    return {k: v[index] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Samplers vs OpenCV
# ---------------------------------------------------------------------------------------------

SAMPLER_CASES = [("cubic", "replicate"), ("linear", "constant"), ("cubic", "constant")]


@pytest.mark.parametrize("method,border", SAMPLER_CASES)
@pytest.mark.parametrize("angle,scale", [(17.3, 1.37), (-8.0, 0.6)])  # inside the image; crossing its border
def test_warp_affine_matches_opencv(astronaut, method, border, angle, scale):
    matrix = cv2.getRotationMatrix2D((230.0, 120.0), angle, scale)
    matrix[:, 2] += (-100.0, 10.0)
    flags = dict(flags=CV2_INTERPOLATION[method], borderMode=CV2_BORDER[border])
    for image, tolerance in ((astronaut, 1.0), (astronaut.astype(np.float32), 0.02)):
        ours = np.asarray(_warp_affine(image, jnp.asarray(matrix, jnp.float32), (256, 256),
                                       method=method, border=border))
        reference = cv2.warpAffine(image, matrix, (256, 256), **flags)
        if image.dtype == np.uint8:
            ours = np.clip(ours, 0, 255)
        assert np.abs(ours - reference).max() <= tolerance


@pytest.mark.parametrize("method,border", SAMPLER_CASES)
def test_remap_with_a_smooth_random_map_matches_opencv(astronaut, method, border):
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:200, 0:240].astype(np.float32)
    noise = [cv2.resize(rng.normal(0, 12, (6, 6)).astype(np.float32), (240, 200), interpolation=cv2.INTER_CUBIC)
             for _ in range(2)]
    map_x = 2.3 * x - 30.0 + noise[0]  # reaches past both sides of the 512 px image
    map_y = 1.7 * y + 150.0 + noise[1]
    flags = dict(interpolation=CV2_INTERPOLATION[method], borderMode=CV2_BORDER[border])
    for image, tolerance in ((astronaut, 1.0), (astronaut.astype(np.float32), 0.02)):
        ours = np.asarray(_remap(image, map_x, map_y, method=method, border=border))
        reference = cv2.remap(image, map_x, map_y, **flags)
        if image.dtype == np.uint8:
            ours = np.clip(ours, 0, 255)
        assert np.abs(ours - reference).max() <= tolerance


# ---------------------------------------------------------------------------------------------
# Re-crop: with the jitter off, augmentation is exactly OpenCV's re-crop
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [96, 32])  # 32 < 64: DFL's warp width is composed in and out
def test_recrop_without_jitter_equals_opencv_warp_of_the_faceset_face(faceset_face, resolution):
    f = faceset_face
    base = align.image_to_face_matrix(f["landmarks"], resolution, FaceType.FULL)
    batch = _side([f["image"]], [f["mask"]], [f["em"]], [base], [7])
    run = jax.jit(functools.partial(augment_batch, resolution=resolution, **NO_JITTER))
    out = {k: np.asarray(v)[0] for k, v in run(0, 0, batch, batch).items()}
    size = (resolution, resolution)

    image = cv2.warpAffine(f["image"], base, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(out["target_src"] * 255 - image).max() <= 1.0
    assert np.array_equal(out["warped_src"], out["target_src"])
    mask = cv2.warpAffine(f["mask"], base, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    assert np.abs(out["target_srcm"][..., 0] * 255 - mask).max() <= 1.0
    em = cv2.warpAffine((f["em"] * (f["mask"] >= 128)).astype(np.float32), base, size, flags=cv2.INTER_LINEAR)
    assert np.abs(out["target_srcm_em"][..., 0] - em / em.max()).max() <= 1e-3
    assert out["target_srcm_em"].max() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Random affine jitter
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def affine_draws() -> AffineJitter:
    keys = sample_keys(5, 0, jnp.arange(4000))
    draws = jax.jit(jax.vmap(functools.partial(random_affine_jitter, flip_prob=0.4)))(keys)
    return AffineJitter(*(np.asarray(v) for v in draws))


def test_affine_jitter_follows_dfl_ranges(affine_draws):
    d = affine_draws
    low_scale = 1.0 / 1.15  # 1/(1 - s0) for scale_range (-0.15, 0.15)
    assert d.angle_deg.min() >= -10.0 and d.angle_deg.max() <= 10.0
    assert d.scale.min() >= low_scale - 1e-6 and d.scale.max() <= 1.15 + 1e-6
    assert np.abs(d.shift).max() <= 0.05
    assert stats.kstest(d.angle_deg, "uniform", args=(-10.0, 20.0)).pvalue > 1e-3
    assert stats.kstest(d.scale, "uniform", args=(low_scale, 1.15 - low_scale)).pvalue > 1e-3
    assert stats.kstest(d.shift.ravel(), "uniform", args=(-0.05, 0.1)).pvalue > 1e-3
    assert abs(d.flip.mean() - 0.4) <= 0.03
    assert abs(np.corrcoef(d.shift[:, 0], d.shift[:, 1])[0, 1]) < 0.06  # tx and ty independent


def test_jitter_matrix_is_opencv_rotation_about_the_integer_centre_then_flip(astronaut):
    width = 96
    image = cv2.resize(astronaut, (width, width), interpolation=cv2.INTER_AREA)
    for angle, scale, shift in ((7.5, 1.1, (0.03, -0.04)), (-9.0, 0.9, (-0.05, 0.01))):
        expected = cv2.getRotationMatrix2D((width // 2, width // 2), angle, scale)
        expected[:, 2] += np.array(shift) * width
        jitter = AffineJitter(jnp.float32(angle), jnp.float32(scale), jnp.array(shift, jnp.float32), jnp.bool_(False))
        assert np.allclose(np.asarray(jitter_matrix(jitter, width)), expected, atol=1e-4)
        flipped = np.asarray(jitter_matrix(jitter._replace(flip=jnp.bool_(True)), width), np.float64)
        mirrored = cv2.warpAffine(image, expected, (width, width), flags=cv2.INTER_LINEAR)[:, ::-1]
        assert np.abs(cv2.warpAffine(image, flipped, (width, width), flags=cv2.INTER_LINEAR).astype(int)
                      - mirrored).max() <= 1


# ---------------------------------------------------------------------------------------------
# Elastic warp
# ---------------------------------------------------------------------------------------------

WARP_WIDTH = 96


@pytest.fixture(scope="module")
def elastic_draws():
    keys = sample_keys(3, 0, jnp.arange(3000))
    draws = jax.jit(jax.vmap(functools.partial(random_elastic_warp, width=WARP_WIDTH)))(keys)
    return type(draws)(*(np.asarray(v) for v in draws))


def test_elastic_cells_and_control_point_jitter_follow_dfl(elastic_draws):
    d = elastic_draws
    for cells in CELL_DIVISORS:
        assert abs(np.mean(d.cells == cells) - 1 / 3) <= 0.04
    assert np.allclose(d.cell, WARP_WIDTH / d.cells)
    index = np.arange(MAX_CELLS + 1)
    interior = (index >= 1)[None, :] & (index[None, :] < d.cells[:, None])  # [draws, 9]
    moving = interior[:, :, None] & interior[:, None, :]
    assert np.all(d.offsets[~moving] == 0)  # the border (and unused grid) stays fixed
    r = (d.offsets / (JITTER * d.cell[:, None, None, None]))[moving]  # [n, 2]
    expected_std = stats.truncnorm(-TRUNCATE, TRUNCATE).std() / TRUNCATE  # 0.382
    assert np.abs(r).max() <= 1.0 + 1e-6 and np.abs(r).max() > 0.97
    assert abs(r.std() - expected_std) <= 0.02 * expected_std
    assert np.abs(r.mean(axis=0)).max() <= 0.01


def test_elastic_displacement_is_bounded_and_zero_at_the_image_edge(elastic_draws):
    d = type(elastic_draws)(*(jnp.asarray(v[:300]) for v in elastic_draws))
    grid = np.arange(WARP_WIDTH, dtype=np.float32)
    x, y = np.meshgrid(grid, grid)
    field = np.asarray(_displacement(d, x, y))  # [300, w, w, 2]
    limit = JITTER * np.asarray(d.cell)[:, None, None, None]
    assert np.all(np.abs(field) <= limit + 1e-4)
    assert (np.abs(field) / limit).max() > 0.9
    edge = np.linspace(-0.5, WARP_WIDTH - 0.5, 50, dtype=np.float32)
    low, high = np.full_like(edge, -0.5), np.full_like(edge, WARP_WIDTH - 0.5)
    for ex, ey in ((edge, low), (edge, high), (low, edge), (high, edge)):
        assert np.abs(np.asarray(_displacement(d, ex, ey))).max() <= 1e-5
    # Outermost pixel centres are half a pixel inside: at most 0.5/cell of a control move.
    border_pixels = np.concatenate([field[:, 0], field[:, -1], field[:, :, 0], field[:, :, -1]], axis=1)
    assert np.abs(border_pixels).max() <= JITTER * 0.5 + 1e-5


def test_elastic_map_equals_dfl_resized_control_grid_without_its_half_pixel_shift(elastic_draws):
    grid = np.arange(WARP_WIDTH, dtype=np.float32)
    x, y = np.meshgrid(grid, grid)
    for cells in CELL_DIVISORS:
        i = int(np.argmax(elastic_draws.cells == cells))
        warp = type(elastic_draws)(*(jnp.asarray(v[i]) for v in elastic_draws))
        cell = WARP_WIDTH // cells
        control = np.arange(cells + 1, dtype=np.float64) * cell
        offsets = np.asarray(elastic_draws.offsets[i, :cells + 1, :cells + 1], np.float64)
        half, size = cell // 2, WARP_WIDTH + cell
        dfl = []
        for axis, positions in ((0, control[None, :]), (1, control[:, None])):
            grid_values = (positions + offsets[..., axis]).astype(np.float32)
            upsampled = cv2.resize(grid_values, (size, size), interpolation=cv2.INTER_LINEAR)
            dfl.append(upsampled[half:-half, half:-half])
        ours = np.asarray(jax.jit(elastic_map)(warp, x, y))
        assert np.abs(ours[0] + 0.5 - dfl[0]).max() <= 1e-3
        assert np.abs(ours[1] + 0.5 - dfl[1]).max() <= 1e-3


# ---------------------------------------------------------------------------------------------
# HSV jitter
# ---------------------------------------------------------------------------------------------

def test_hsv_jitter_ranges():
    keys = sample_keys(9, 0, jnp.arange(3000))
    draws = jax.jit(jax.vmap(lambda key: random_hsv_jitter(key, 0.3)))(keys)
    hue, sat, val = (np.asarray(v) for v in draws)
    h = int(180 * 0.3)  # 54 degrees
    assert np.array_equal(hue, np.round(hue)) and hue.min() == -h and hue.max() == h
    assert np.unique(hue).size == 2 * h + 1
    assert abs(hue.mean()) < 2.0
    for offsets in (sat, val):
        assert np.abs(offsets).max() <= 0.15 and np.abs(offsets).max() > 0.149
        assert stats.kstest(offsets, "uniform", args=(-0.15, 0.3)).pvalue > 1e-3


@pytest.mark.parametrize("hue,sat,val", [(40.0, 0.1, -0.12), (-54.0, -0.15, 0.15)])
def test_hsv_jitter_matches_opencv_hsv(astronaut, hue, sat, val):
    rgb = cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float64)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue, 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] + sat, 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] + val, 0, 1)
    reference = np.clip(cv2.cvtColor(hsv.astype(np.float32), cv2.COLOR_HSV2RGB), 0, 1)
    jitter = HsvJitter(jnp.float32(hue), jnp.float32(sat), jnp.float32(val))
    ours = np.asarray(jax.jit(apply_hsv_jitter)(rgb, jitter))
    assert np.abs(ours - reference).max() <= 1e-4
    assert np.abs(ours - rgb).mean() > 0.03


# ---------------------------------------------------------------------------------------------
# The full pipeline
# ---------------------------------------------------------------------------------------------

def test_outputs_have_the_pinned_shapes_and_ranges(full_output):
    r = FULL["resolution"]
    for side in ("src", "dst"):
        for name, channels in ((f"warped_{side}", 3), (f"target_{side}", 3), (f"target_{side}m", 1),
                               (f"target_{side}m_em", 1)):
            value = full_output[name]
            assert value.shape == (BATCH, r, r, channels) and value.dtype == np.float32
            assert value.min() >= 0.0 and value.max() <= 1.0


def test_a_sample_does_not_depend_on_its_batch_position_or_companions(batches, full_output):
    src, dst = batches
    order = np.array([2, 0, 3, 1])
    permuted = _full(0, 5, _take(src, order), _take(dst, order))
    for name, value in permuted.items():
        assert np.abs(np.asarray(value) - full_output[name][order]).max() <= 1e-5, name
    # Replace samples 2 and 3 by others: samples 0 and 1 are unchanged (the "second half" differs).
    other = np.array([0, 1, 1, 0])
    src2, dst2 = _take(src, other), _take(dst, other)
    src2["sample_ids"] = np.array([10, 11, 50, 51], np.int32)
    dst2["sample_ids"] = np.array([100, 101, 150, 151], np.int32)
    src2["faces"][2:] = 255 - src2["faces"][2:]
    changed = _full(0, 5, src2, dst2)
    for name, value in changed.items():
        assert np.abs(np.asarray(value)[:2] - full_output[name][:2]).max() <= 1e-5, name
    # The randomness does change with the step and the seed.
    for seed, step in ((0, 6), (1, 5)):
        again = np.asarray(_full(seed, step, src, dst)["warped_src"])
        assert np.abs(again - full_output["warped_src"]).mean(axis=(1, 2, 3)).min() > 0.01


def test_input_is_target_makes_every_input_its_target_in_the_same_program(batches, full_output):
    """Quick96's no-warp steps: a traced flag makes each input exactly its target (no elastic warp,
    no HSV jitter) and leaves targets and masks as drawn; one compiled program serves both values."""
    src, dst = batches
    traces = []

    def run(flag):
        traces.append(flag)
        return augment_batch(0, 5, src, dst, **FULL, input_is_target=flag)

    run = jax.jit(run)
    for flag in (False, True):
        out = {k: np.asarray(v) for k, v in run(jnp.bool_(flag)).items()}
        for name, value in out.items():
            if flag and name.startswith("warped_"):
                np.testing.assert_array_equal(value, out[name.replace("warped", "target")])
            else:  # as without the flag: another program, float rounding of other fusions [1.4e-5]
                assert np.abs(value - full_output[name]).max() <= 1e-4, name
    assert len(traces) == 1
    assert np.abs(full_output["warped_src"] - full_output["target_src"]).mean() > 0.01  # the flag mattered


_SHARDED_RUN = """
import functools, json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from engine.augment import augment_batch
assert jax.device_count() == 2, jax.devices()
data = np.load(sys.argv[1])
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
src, dst = (jax.device_put({k[4:]: data[k] for k in data.files if k.startswith(p)}, sharding) for p in ("src_", "dst_"))
run = jax.jit(functools.partial(augment_batch, **json.loads(sys.argv[2])))
out = run(0, 5, src, dst)
assert all(len(v.sharding.device_set) == 2 and not v.sharding.is_fully_replicated for v in out.values())
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in out.items()})
"""


def test_batch_sharded_over_two_devices_gives_the_single_device_result(batches, full_output, tmp_path):
    src, dst = batches
    inputs, outputs = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs, **{f"src_{k}": v for k, v in src.items()}, **{f"dst_{k}": v for k, v in dst.items()})
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", _SHARDED_RUN, str(inputs), json.dumps(FULL), str(outputs)],
                   cwd=REPO, env=env, check=True, timeout=300)
    sharded = np.load(outputs)
    for name, value in full_output.items():  # float rounding of another fusion: <= 0.03 grey levels
        assert np.abs(sharded[name] - value).max() <= 1e-4, name


def test_rct_recolours_src_toward_the_paired_dst_target_and_hsv_moves_the_input(batches, full_output):
    src, dst = batches
    centre = (slice(None), slice(64, 192), slice(64, 192))  # the faces' colours before augmentation
    before = _moments(src["faces"][centre] / 255.0).mean - _moments(dst["faces"][centre] / 255.0).mean
    assert np.abs(np.asarray(before)).max(axis=1).min() > 20.0  # Lab units apart ...
    src_target, dst_target = _moments(full_output["target_src"]), _moments(full_output["target_dst"])
    # ... and after the transfer within 3 (not 0: the recoloured faces leave the RGB gamut and clip).
    assert np.abs(np.asarray(src_target.mean) - np.asarray(dst_target.mean)).max() <= 3.0
    # dst gets no colour change: its input and target share their colours up to the warp.
    dst_input = _moments(full_output["warped_dst"])
    assert np.abs(np.asarray(dst_input.mean) - np.asarray(dst_target.mean)).max() <= 1.0
    # The src input also got the HSV jitter (power 0.2: V moves by up to 0.1).
    src_input = _moments(full_output["warped_src"])
    assert np.abs(np.asarray(src_input.mean) - np.asarray(src_target.mean)).max() > 2.0


@pytest.mark.parametrize("mode", ["lct", "idt"])
def test_other_ct_modes_recolour_src_input_and_target_alike(batches, mode):
    """lct/idt recolour the stored src face before sampling (DFL's order): the gap between the src
    and dst targets' Lab means shrinks to under half of what it is without colour transfer
    (measured 0.2-0.4: the transfer matched the whole stored face, the targets are smaller crops),
    and input and target keep one colour map (means within 1.5 with no HSV jitter)."""
    src, dst = batches

    def run(ct_mode):
        opts = dict(FULL, ct_mode=ct_mode, hsv_power=0.0)
        return {k: np.asarray(v) for k, v in jax.jit(lambda s, d: augment_batch(0, 5, s, d, **opts))(src, dst).items()}

    def gap(out):
        return np.abs(np.asarray(_moments(out["target_src"]).mean) - np.asarray(_moments(out["target_dst"]).mean))

    plain, out = run("none"), run(mode)
    assert gap(out).sum() <= 0.5 * gap(plain).sum()
    src_input, src_target = _moments(out["warped_src"]), _moments(out["target_src"])
    assert np.abs(np.asarray(src_input.mean) - np.asarray(src_target.mean)).max() <= 1.5


def _ramp_side(axis: int, ids) -> dict:
    """Faces whose R, G channels hold their own x, y pixel coordinate, and masks holding x (axis 0)
    or y (axis 1): bilinear sampling of a ramp returns the sampled coordinate exactly."""
    y, x = np.mgrid[0:FACESET_SIZE, 0:FACESET_SIZE].astype(np.uint8)
    face = np.stack([x, y, np.zeros_like(x)], axis=-1)
    mask = (x if axis == 0 else y)[..., None]
    em = np.full_like(mask, 255)
    base = cv2.getRotationMatrix2D((128.0, 128.0), 5.0, 0.3)  # faceset -> 64 px model face
    base[:, 2] += (32.0 - 128.0, 32.0 - 128.0)
    return _side([face] * BATCH, [mask] * BATCH, [em] * BATCH, [base] * BATCH, ids), base


def test_geometry_read_back_from_coordinate_ramps(batches):
    """The dst side (no colour changes) on ramp images: each output pixel tells where it sampled."""
    src, _ = batches
    width = FULL["resolution"]
    angles, flips = [], []
    for step in range(16):
        ids = np.arange(BATCH) + BATCH * step
        (ramp_x, base), (ramp_y, _) = _ramp_side(0, ids), _ramp_side(1, ids)
        out_x = {k: np.asarray(v) for k, v in _full(0, step, src, ramp_x).items()}
        out_y = _full(0, step, src, ramp_y)
        coords_x = out_x["target_dstm"][..., 0] * 255.0  # [B, r, r] faceset x of each output pixel
        coords_y = np.asarray(out_y["target_dstm"])[..., 0] * 255.0
        for i in range(BATCH):
            cx, cy = coords_x[i], coords_y[i]
            # Away from the faceset's edge, where the masks' zero border would fake coordinates; the
            # image's replicated border reads 0 or 255 out there.
            image_x, image_y = out_x["target_dst"][i, ..., 0] * 255, out_x["target_dst"][i, ..., 1] * 255
            inside = (np.minimum(image_x, image_y) > 3) & (np.maximum(image_x, image_y) < FACESET_SIZE - 4)
            assert inside.mean() > 0.5
            # The image, its mask and its eyes/mouth mask went through the same transform (the cubic
            # kernel reproduces a ramp to 0.05 px).
            assert np.abs(image_x - cx)[inside].max() <= 0.05
            assert np.abs(image_y - cy)[inside].max() <= 0.05
            # eyes/mouth = 255 everywhere times the binarised mask (x >= 128): a bilinear step at x = 127..128.
            assert np.abs(out_x["target_dstm_em"][i, ..., 0] - np.clip(cx - 127, 0, 1))[inside].max() <= 1e-4
            # Target and masks are one affine map of the output grid ...
            gy, gx = np.nonzero(inside)
            design = np.stack([gx, gy, np.ones_like(gx)], axis=1).astype(np.float64)
            fit, *_ = np.linalg.lstsq(design, np.stack([cx[inside], cy[inside]], axis=1), rcond=None)
            assert np.abs(design @ fit - np.stack([cx[inside], cy[inside]], axis=1)).max() <= 0.01
            # ... and the jitter is base^-1's complement: jitter = (base o output->face)^-1.
            output_to_face = np.vstack([fit.T, [0, 0, 1]])
            jitter = np.linalg.inv(np.vstack([base, [0, 0, 1]]) @ output_to_face)
            flipped = np.linalg.det(jitter[:2, :2]) < 0
            if flipped:
                jitter = np.array([[-1.0, 0, width - 1], [0, 1, 0], [0, 0, 1]]) @ jitter
            angle = np.degrees(np.arctan2(jitter[0, 1], jitter[0, 0]))
            scale = np.hypot(jitter[0, 0], jitter[0, 1])
            rotation = cv2.getRotationMatrix2D((width // 2, width // 2), angle, scale)
            shift = (jitter[:2, 2] - rotation[:, 2]) / width
            assert abs(angle) <= 10.0 + 1e-3 and 1 / 1.15 - 1e-4 <= scale <= 1.15 + 1e-4
            assert np.abs(shift).max() <= 0.05 + 1e-4
            angles.append(angle)
            flips.append(flipped)
            # The input adds the elastic warp: at most 0.24 * (w/2) warp pixels, carried to the faceset.
            moved = np.hypot(out_x["warped_dst"][i, ..., 0] * 255 - cx, out_x["warped_dst"][i, ..., 1] * 255 - cy)
            limit = JITTER * width / 2 * np.sqrt(2) * np.linalg.norm(fit[:2], 2) + 0.1
            assert moved[inside].max() <= limit and moved[inside].max() > 0.5
    assert np.ptp(angles) > 12.0
    assert 14 <= sum(flips) <= 38  # 64 draws at p = 0.4: mean 25.6, sd 3.9
