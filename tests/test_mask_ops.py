"""Merge mask erode/dilate and blur, and motion blur, against OpenCV (engine.merge.mask_ops, DFL_SPEC §4.3, §4.7)."""
import cv2
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from engine.merge.compile_options import fft_safe_jit
from engine.merge import mask_ops


def _horse(width: int, height: int) -> np.ndarray:
    """A real silhouette mask (1 = horse), resized with soft (grey) edges."""
    horse = (~skimage.data.horse()).astype(np.float32)
    return cv2.resize(horse, (width, height), interpolation=cv2.INTER_AREA)


def _hull_mask() -> np.ndarray:
    """A face-like convex hull of noisy points with a soft edge, 300x260."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 40)
    points = np.stack([130 + 90 * np.cos(t), 150 + 120 * np.sin(t)], -1) + rng.normal(0, 6, (40, 2))
    mask = np.zeros((300, 260), np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1.0)
    return cv2.GaussianBlur(mask, (9, 9), 0)


def _astronaut(height: int = 160, width: int = 180) -> np.ndarray:
    return skimage.data.astronaut()[100:100 + height, 150:150 + width].astype(np.float32) / 255.0


def _cv2_morph(mask: np.ndarray, amount: int, element) -> np.ndarray:
    if amount == 0:
        return mask
    op = cv2.erode if amount > 0 else cv2.dilate
    return op(mask, element(abs(amount)).astype(np.uint8))


def _ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def test_structuring_element_approximates_opencv_ellipse():
    ious = []
    for size in range(1, mask_ops.MAX_ERODE + 1):
        element = mask_ops.structuring_element(size)
        ellipse = _ellipse(size).astype(bool)
        assert element.shape == (size, size) and element[size // 2, size // 2]
        if size % 2:  # odd sizes are centred exactly, like OpenCV's
            np.testing.assert_array_equal(element, element[::-1, ::-1])
        ious.append((element & ellipse).sum() / (element | ellipse).sum())
    ious = np.array(ious)
    # The 16-gon differs from the digital disk by about one pixel along the rim: the IoU grows with the size.
    assert ious[44:].min() >= 0.96  # sizes >= 45
    assert ious[19:].min() >= 0.92  # sizes >= 20
    assert ious[1:].min() >= 0.55  # size 3: a 3x3 square for OpenCV's 5-pixel cross
    assert ious.mean() >= 0.97


def test_erode_dilate_equals_cv2_with_the_same_element():
    # Grey masks (soft horse edges, a grey photo): min/max filtering is exact, so the tolerance is 1e-6.
    amounts = [0, 1, 2, 5, 12, 51, -7, -30, 400, -400]
    horse, grey = _horse(200, 164), _astronaut(164, 200).mean(-1)
    masks = np.stack([horse if i % 2 else grey for i in range(len(amounts))])[..., None]
    out = np.asarray(fft_safe_jit(mask_ops.erode_dilate)(jnp.asarray(masks), jnp.asarray(amounts)))
    for amount, mask, got in zip(amounts, masks[..., 0], out[..., 0]):
        want = _cv2_morph(mask, amount, mask_ops.structuring_element)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"amount {amount}")


@pytest.mark.parametrize("name", ["horse", "hull"])
def test_erode_dilate_close_to_opencv_ellipse(name):
    mask = _horse(400, 328) if name == "horse" else _hull_mask()
    amounts = [7, 25, 51, -40, -151] + ([101] if name == "hull" else [])  # the horse vanishes at 101
    batch = jnp.asarray(np.stack([mask] * len(amounts))[..., None])
    out = np.asarray(fft_safe_jit(mask_ops.erode_dilate)(batch, jnp.asarray(amounts)))
    for amount, got in zip(amounts, out[..., 0]):
        want = _cv2_morph(mask, amount, _ellipse)
        inside, want_inside = got > 0.5, want > 0.5
        iou = (inside & want_inside).sum() / (inside | want_inside).sum()
        # The element's rim is within ~1 px of OpenCV's disk, so mask edges move by ~1 px at most.
        assert iou >= 0.97, (amount, iou)
        assert np.abs(got - want).mean() <= 0.006, amount


def test_gaussian_blur_matches_cv2():
    image = _astronaut()
    sizes = np.array([[0, 1, 3, 4], [5, 7, 11, 24], [25, 50, 101, 401]])  # two batch dims; even sizes become odd
    batch = jnp.asarray(np.broadcast_to(image, sizes.shape + image.shape))
    out = np.asarray(fft_safe_jit(mask_ops.gaussian_blur)(batch, jnp.asarray(sizes)))
    for size, got in zip(sizes.ravel(), out.reshape((-1,) + image.shape)):
        k = size + 1 - size % 2
        want = image if k <= 1 else cv2.GaussianBlur(image, (k, k), 0)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"ksize {size}")  # float32 FFT: ~1e-6


def test_gaussian_blur_size_9_uses_the_formula():
    # OpenCV 5 has a fixed 9-tap kernel that OpenCV 4 (DFL's) lacks; DFL's kernel is the sampled Gaussian.
    image = _astronaut()
    sigma = 0.3 * ((9 - 1) / 2 - 1) + 0.8
    taps = np.exp(-0.5 * (np.arange(-4, 5) / sigma) ** 2)
    taps /= taps.sum()
    want = cv2.sepFilter2D(image, -1, taps, taps, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(np.asarray(fft_safe_jit(mask_ops.gaussian_blur)(jnp.asarray(image), 9)), want, atol=1e-5)


def _process_mask_reference(mask: np.ndarray, erode: int, blur: int, pad: int, element) -> np.ndarray:
    """DFL_SPEC §4.3 step 5 with OpenCV, as DFL runs it."""
    m = np.pad(mask, pad)
    m = _cv2_morph(m, erode, element)
    band = pad + blur // 2
    m[:band], m[m.shape[0] - band:], m[:, :band], m[:, m.shape[1] - band:] = 0, 0, 0, 0
    if blur > 0:
        k = blur + 1 - blur % 2
        m = cv2.GaussianBlur(m, (k, k), 0)
    return np.clip(m[pad:-pad, pad:-pad], 0, 1)


def test_process_mask_matches_opencv_reference():
    pad = 32  # r = 32, the mask lives at 4r = 128
    mask = np.clip(cv2.resize(_horse(400, 328), (128, 128), interpolation=cv2.INTER_CUBIC), 0, 1)
    options = [(0, 0), (10, 0), (-10, 0), (0, 10), (15, 33), (-25, 60), (-60, 21), (4, 100), (-400, 7)]
    erode, blur = (jnp.asarray(o) for o in zip(*options))
    batch = jnp.asarray(np.stack([mask] * len(options))[..., None])
    out = np.asarray(fft_safe_jit(mask_ops.process_mask, static_argnames="pad")(batch, erode, blur, pad=pad))
    for (e, b), got in zip(options, out[..., 0]):
        assert got.shape == mask.shape
        want = _process_mask_reference(mask, e, b, pad, mask_ops.structuring_element)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"erode {e} blur {b}")  # FFT blur: ~1e-6
        dfl = _process_mask_reference(mask, e, b, pad, _ellipse)
        assert np.abs(got - dfl).mean() <= 0.01, (e, b)  # the element's rim: see the erode tests


def test_process_mask_compiles_once_for_all_option_values():
    process = fft_safe_jit(lambda m, e, b: mask_ops.process_mask(m, e, b, pad=16))  # its own compilation cache
    mask = jnp.asarray(_horse(64, 64)[None, ..., None])
    results = [process(mask, e, b) for e, b in [(0, 0), (5, 3), (-9, 40), (400, 1)]]
    assert process._cache_size() == 1
    assert not np.allclose(results[1], results[2])


def _dfl_motion_kernel(size: int, angle: float) -> np.ndarray:
    """DFL_SPEC §4.7: a line of ones rotated about the kernel centre with warpAffine, normalised."""
    line = np.zeros((size, size), np.float32)
    line[(size - 1) // 2] = 1
    rotation = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    kernel = cv2.warpAffine(line, rotation, (size, size))
    return kernel / kernel.sum()


_MOTION = [(2, 0.0), (3, 17.0), (5, 45.0), (8, 90.0), (15, 123.0), (30, -60.0), (50, 200.0), (100, 33.3)]


def test_motion_blur_impulse_response_is_the_dfl_kernel():
    # OpenCV 5 samples warpAffine exactly in float; OpenCV 4 rounds sample positions to 1/32 px (up to ~0.03 of a
    # tap before normalising). Against the installed OpenCV: 1e-6.
    n = 121
    impulse = np.zeros((len(_MOTION), n, n, 1), np.float32)
    impulse[:, n // 2, n // 2] = 1
    sizes, angles = (jnp.asarray(v) for v in zip(*_MOTION))
    out = np.asarray(fft_safe_jit(mask_ops.motion_blur)(jnp.asarray(impulse), sizes, angles))
    for (size, angle), got in zip(_MOTION, out[..., 0]):
        # filter2D correlates: the response at centre - offset is the tap at offset (anchor size//2)
        rows = n // 2 + size // 2 - np.arange(size)
        np.testing.assert_allclose(got[rows[:, None], rows[None, :]], _dfl_motion_kernel(size, angle), atol=1e-6)
        assert got.sum() == pytest.approx(1.0, abs=1e-5)  # nothing outside the size x size kernel


def test_motion_blur_matches_filter2d_on_a_real_image():
    image = _astronaut()
    cases = _MOTION + [(0, 30.0), (1, 30.0)]  # 0 and 1: no blur
    sizes, angles = (jnp.asarray(v) for v in zip(*cases))
    out = np.asarray(fft_safe_jit(mask_ops.motion_blur)(jnp.asarray(np.stack([image] * len(cases))), sizes, angles))
    for (size, angle), got in zip(cases, out):
        want = image if size <= 1 else cv2.filter2D(image, -1, _dfl_motion_kernel(size, angle))
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"size {size}")  # float32 FFT: ~1e-6


def test_motion_kernel_size_follows_dfl():
    power = np.array([0.0, 0.4, 3.0, 9.99, 10.0, 37.5, 120.0, 800.0])
    percent = np.array([0, 1, 10, 33, 50, 100])
    p, q = (a.ravel() for a in np.meshgrid(power, percent))
    size = fft_safe_jit(mask_ops.motion_kernel_size, static_argnames="superres")
    for superres in (False, True):
        want = []
        for motion, pct in zip(p, q):
            k = int(motion * pct / 100)
            k = int(np.clip(k + 1, 2, 50)) if k >= 1 else k
            want.append(k * 2 if superres else k)
        np.testing.assert_array_equal(np.asarray(size(jnp.asarray(p), jnp.asarray(q), superres=superres)), want)
