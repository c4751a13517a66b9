"""Merge image filters against OpenCV / PIL and DFL's loops written out in NumPy (DFL_SPEC §4.7)."""
import itertools

import cv2
import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

from engine.merge import filters

blur_sharpen = jax.jit(filters.blur_sharpen, static_argnums=1)
denoise = jax.jit(filters.denoise)
bicubic_degrade = jax.jit(filters.bicubic_degrade)
color_degrade = jax.jit(filters.color_degrade)


def _image(name: str, width: int, height: int) -> np.ndarray:
    """A real photo resized to (width, height), RGB float32 in [0, 1] on the uint8 grid (many ties)."""
    return cv2.resize(getattr(skimage.data, name)(), (width, height), interpolation=cv2.INTER_AREA).astype(
        np.float32) / 255.0


def _median_loop(image: np.ndarray, n: float, full_at: int) -> np.ndarray:
    """DFL's repeated-median loop as in the spec, with OpenCV."""
    while n > 0:
        blurred = cv2.medianBlur(image, 5)
        if int(n / full_at) != 0:
            image = blurred
        else:
            weight = (n % full_at) / full_at
            image = image * (1.0 - weight) + blurred * weight
        n = max(n - 10, 0)
    return image


def _sharpen(image: np.ndarray, mode: str | None, amount: float) -> np.ndarray:
    """DFL's blursharpen with kernel size 3, with OpenCV's filter2D / GaussianBlur / addWeighted."""
    if amount < 0:
        return _median_loop(image, -amount, 10)
    if amount == 0 or mode is None:
        return image
    if mode == "box":
        delta = np.zeros((3, 3), np.float32)
        delta[1, 1] = 1.0
        return cv2.filter2D(image, -1, delta + (delta - np.full((3, 3), 1 / 9, np.float32)) * amount)
    return cv2.addWeighted(image, 1.0 + 0.5 * amount, cv2.GaussianBlur(image, (3, 3), 0), -0.5 * amount, 0)


def test_median_network_selects_the_median_of_every_window():
    # 0-1 principle: a comparator network that selects the median of every 0/1 window (with
    # sorted columns, the network's precondition) selects it for all real inputs. Exact.
    sort5, median = filters._median_networks()
    for network, pads, inputs, check in (
        (sort5, 3, [list(bits) for bits in itertools.product([0, 1], repeat=5)],
         lambda w, x: np.array_equal(w[:5], sorted(x))),
        (median, 7, [sum(([0] * (5 - ones) + [1] * ones for ones in counts), [])
                     for counts in itertools.product(range(6), repeat=5)],
         lambda w, x: w[12] == (sum(x) >= 13)),
    ):
        for x in inputs:
            wires = list(x) + [1] * pads  # +inf pads
            for i, j in network:
                wires[i], wires[j] = min(wires[i], wires[j]), max(wires[i], wires[j])
            assert check(wires, x)


def test_median5_matches_opencv_exactly():
    batch = np.stack([_image("astronaut", 83, 61), _image("coffee", 83, 61)])
    ours = np.asarray(jax.jit(filters.median5)(batch))
    for got, image in zip(ours, batch):
        # A median selects one of the inputs: bit-exact, replicated border included.
        np.testing.assert_allclose(got, cv2.medianBlur(image, 5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", [None, "box", "gaussian"])
def test_blur_sharpen_matches_dfl_loop(mode):
    amounts = [-100.0, -55.0, -7.0, 0.0, 1.0, 30.0, 100.0]
    image = _image("chelsea", 64, 48)
    batch = np.repeat(image[None], len(amounts), axis=0)
    ours = np.asarray(blur_sharpen(batch, mode, np.array(amounts, np.float32)))
    for got, amount in zip(ours, amounts):
        # float32 rounding: the kernel is summed in another order, errors scale with its weights (~1 + a);
        # blur is selection and the same blend formula (1e-6).
        np.testing.assert_allclose(got, _sharpen(image, mode, amount), rtol=0, atol=1e-6 * (1 + max(amount, 0)))
    np.testing.assert_array_equal(ours[3], image)  # amount 0: untouched


def test_denoise_matches_dfl_loop():
    image = _image("astronaut", 70, 52)
    powers = [0.0, 35.0, 200.0]
    ours = np.asarray(denoise(np.repeat(image[None], 3, axis=0), np.array(powers, np.float32)))
    np.testing.assert_array_equal(ours[0], image)
    for got, power in zip(ours[1:], powers[1:]):
        # Same selections and blend formula; only float32 rounding of the blend weights differs.
        np.testing.assert_allclose(got, _median_loop(image, power, 100), rtol=0, atol=1e-6)


def test_bicubic_degrade_matches_opencv_resize_round_trip():
    image = _image("coffee", 203, 157)
    powers = [0.0, 1.0, 20.0, 50.0, 77.0, 100.0]
    ours = np.asarray(bicubic_degrade(np.repeat(image[None], len(powers), axis=0), np.array(powers, np.float32)))
    np.testing.assert_array_equal(ours[0], image)
    for got, power in zip(ours[1:], powers[1:]):
        scale = 1.0 - power / 101.0
        small = cv2.resize(image, (int(203 * scale), int(157 * scale)), interpolation=cv2.INTER_CUBIC)
        reference = cv2.resize(small, (203, 157), interpolation=cv2.INTER_CUBIC)
        # OpenCV rounds source coordinates to float32 and sums in its own order: ~1e-6 on [0, 1] values.
        np.testing.assert_allclose(got, reference, rtol=0, atol=2e-5)


def test_color_degrade_is_a_256_colour_palette_close_to_pil():
    batch = np.stack([_image("astronaut", 256, 256), _image("coffee", 256, 256)])
    quantised = np.asarray(color_degrade(batch, np.float32(100.0)))
    for got, image in zip(quantised, batch):
        assert len(np.unique(got.reshape(-1, 3), axis=0)) <= 256
        pil = np.asarray(Image.fromarray((image * 255.0).astype(np.uint8)).convert(
            "P", palette=Image.Palette.ADAPTIVE, colors=256).convert("RGB"), np.float32) / 255.0
        ours_error, pil_error = np.abs(got - image).mean(), np.abs(pil - image).mean()
        # Our median cut is as good as PIL's (measured 0.96-0.98x its error) ...
        assert ours_error <= 1.1 * pil_error
        # ... and lands near PIL's colours: both are ~0.01 from the image, ours ~0.011 from PIL's.
        assert np.abs(got - pil).mean() <= 0.015

    blended = np.asarray(color_degrade(batch, np.array([0.0, 37.0], np.float32)))
    np.testing.assert_array_equal(blended[0], batch[0])
    # The blend is DFL's img·(1 − α) + reduced·α with α = p/100 (1e-6: float32 rounding).
    np.testing.assert_allclose(blended[1], batch[1] * (1 - 0.37) + quantised[1] * 0.37, rtol=0, atol=1e-6)


def test_strengths_are_traced_not_compiled_in():
    image = _image("chelsea", 40, 32)
    for filter_fn, values in (
        (lambda x, v: filters.blur_sharpen(x, "box", v), (-30.0, 60.0)),
        (filters.denoise, (10.0, 250.0)),
        (filters.bicubic_degrade, (10.0, 90.0)),
        (filters.color_degrade, (0.0, 50.0)),
    ):
        jitted = jax.jit(lambda x, v, f=filter_fn: f(x, v))  # a fresh cache, not the module's wrappers
        outputs = [np.asarray(jitted(image, np.float32(v))) for v in values]
        assert jitted._cache_size() == 1
        assert not np.array_equal(*outputs)
