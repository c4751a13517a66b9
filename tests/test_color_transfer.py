"""engine.color_transfer against float64 references built on scikit-image's and OpenCV's Lab.

Tolerances: scikit-image's rgb2lab is exact float64 CIE math (its D65 white differs from
OpenCV's in the 5th digit), so our float32 Lab must agree to 0.01 Lab units and rct to 2e-4 on
the [0, 1] scale. OpenCV 5's float Lab path is itself approximate (grey gets a = 0.08 and values
come in 1/64 steps; up to ~0.4 Lab units off the exact formulas), so against it we allow 0.5 Lab
units and 0.01 on the [0, 1] scale. (Measured: 0.0045 and 4e-5 against scikit-image, 0.42 and
0.0082 against OpenCV.)
"""
from __future__ import annotations

import warnings

import cv2
import jax
import numpy as np
import pytest
import skimage.color

from engine.color_transfer import lab_to_rgb, rct, rct_moments, rgb_to_lab
from preprocessing.samples import astronaut_rgb, skimage_data_path

SIZE = 64
_rct = jax.jit(rct)


def _load(name: str) -> np.ndarray:
    bgr = cv2.imread(skimage_data_path(name), cv2.IMREAD_COLOR)
    return cv2.resize(bgr[:, :, ::-1], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """Three (source, target) pairs of real photos, float32 [3, 64, 64, 3] in [0, 1]."""
    face = cv2.resize(astronaut_rgb()[20:240, 120:340], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    source = np.stack([face, _load("coffee.png"), _load("chelsea.png")]).astype(np.float32) / 255.0
    target = np.stack([_load("chelsea.png"), face, _load("rocket.jpg")]).astype(np.float32) / 255.0
    return source, target


@pytest.fixture(scope="module")
def masks() -> tuple[np.ndarray, np.ndarray]:
    """Soft elliptic masks [3, 64, 64, 1] (values 0..1, so the 0.5 threshold matters)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1.0)
    def ellipse(cx, cy, rx, ry):
        return np.clip(1.5 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0, 1)[..., None].astype(np.float32)
    source = np.stack([ellipse(0.5, 0.5, 0.35, 0.45), ellipse(0.3, 0.6, 0.3, 0.3), ellipse(0.6, 0.4, 0.4, 0.2)])
    target = np.stack([ellipse(0.5, 0.4, 0.4, 0.4), ellipse(0.5, 0.5, 0.25, 0.45), ellipse(0.4, 0.6, 0.3, 0.3)])
    return source, target


def _rct_reference(source, target, source_mask, target_mask, to_lab, to_rgb):
    """Reinhard transfer in float64 with the given Lab conversions; statistics over mask >= 0.5."""
    out = []
    for i in range(len(source)):
        lab_s, lab_t = to_lab(source[i]).astype(np.float64), to_lab(target[i]).astype(np.float64)
        sel_s = np.ones(lab_s.shape[:2], bool) if source_mask is None else source_mask[i, ..., 0] >= 0.5
        sel_t = np.ones(lab_t.shape[:2], bool) if target_mask is None else target_mask[i, ..., 0] >= 0.5
        mu_s, sd_s = lab_s[sel_s].mean(0), lab_s[sel_s].std(0)
        mu_t, sd_t = lab_t[sel_t].mean(0), lab_t[sel_t].std(0)
        lab = (lab_s - mu_s) * (sd_t / sd_s) + mu_t
        lab = np.clip(lab, [0, -127, -127], [100, 127, 127])
        out.append(np.clip(to_rgb(lab), 0, 1))
    return np.stack(out)


def _skimage_lab(rgb):
    return skimage.color.rgb2lab(rgb, illuminant="D65")


def _skimage_rgb(lab):
    with warnings.catch_warnings():  # out-of-gamut Z < 0 is clipped with a warning
        warnings.simplefilter("ignore")
        return skimage.color.lab2rgb(lab, illuminant="D65")


def _cv2_lab(rgb):
    return cv2.cvtColor(np.float32(rgb), cv2.COLOR_RGB2Lab)


def _cv2_rgb(lab):
    return cv2.cvtColor(np.float32(lab), cv2.COLOR_Lab2RGB)


def test_lab_conversion_matches_scikit_image_and_opencv(images):
    rgb = np.concatenate(images)
    lab = np.asarray(jax.jit(rgb_to_lab)(rgb))
    assert np.abs(lab - _skimage_lab(rgb)).max() < 0.01
    assert np.abs(lab - _cv2_lab(rgb.reshape(-1, SIZE, 3)).reshape(lab.shape)).max() < 0.5
    # The way back: exact inverse up to float32 rounding.
    assert np.abs(np.asarray(jax.jit(lab_to_rgb)(lab)) - rgb).max() < 1e-5


def test_rct_unmasked_matches_float64_references(images):
    source, target = images
    got = np.asarray(_rct(source, target))
    exact = _rct_reference(source, target, None, None, _skimage_lab, _skimage_rgb)
    assert np.abs(got - exact).max() < 2e-4
    opencv = _rct_reference(source, target, None, None, _cv2_lab, _cv2_rgb)
    assert np.abs(got - opencv).max() < 0.01
    # The transfer did something substantial: the outputs moved far from the inputs.
    assert np.abs(got - source).mean() > 0.05


def test_rct_masked_counts_only_pixels_inside_the_masks(images, masks):
    source, target = images
    source_mask, target_mask = masks
    got = np.asarray(_rct(source, target, source_mask, target_mask))
    exact = _rct_reference(source, target, source_mask, target_mask, _skimage_lab, _skimage_rgb)
    assert np.abs(got - exact).max() < 2e-4
    # DFL's quirk (zeros outside the mask counted in the statistics) would give a different image.
    quirk = _rct_reference(source * (source_mask >= 0.5), target * (target_mask >= 0.5), None, None,
                           _skimage_lab, _skimage_rgb)
    assert np.abs(got - quirk).mean() > 0.02


def test_rct_moments_match_numpy_and_empty_mask_counts_every_pixel(images, masks):
    source, _ = images
    mask = masks[0].copy()
    mask[2] = 0.0  # empty: falls back to the whole image
    moments = jax.jit(rct_moments)(source, mask)
    for i in range(len(source)):
        lab = _skimage_lab(source[i])
        selected = lab[mask[i, ..., 0] >= 0.5] if i < 2 else lab.reshape(-1, 3)
        assert np.allclose(moments.mean[i], selected.mean(0), atol=0.01)
        assert np.allclose(moments.std[i], selected.std(0), atol=0.01)


def test_rct_is_pairwise_over_the_batch(images):
    source, target = images
    batch = np.asarray(_rct(source, target))
    single = np.asarray(_rct(source[1], target[1]))
    assert np.abs(batch[1] - single).max() < 1e-6
