"""engine.merge.poisson against SciPy (DST-I, sparse direct Poisson solves) and OpenCV (seamlessClone).

Tolerances: the DSTs are float32 FFTs, so 1e-5 of the largest coefficient. Poisson solves on image-scale
values (0..1) within 1e-4 of a float64 sparse direct solve (measured 6e-7). Against cv2.seamlessClone, which
truncates its float32 solution toward zero to uint8: every pixel within 1.5/255 (truncation < 1/255 plus
float32 noise; measured 1.02/255) and the mean inside the mask within 2/255 (measured 0.41-0.48/255);
outside the solve rectangle's interior both equal dst exactly.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.fft
import scipy.sparse
import scipy.sparse.linalg

from engine.merge.compile_options import fft_safe_jit
from engine.merge.poisson import dst1, dst1_window, idst1, opencv_mask_domain, seamless_clone, solve_poisson
from preprocessing.samples import astronaut_rgb, skimage_data_path

SIZE = 160  # the frame crop: large enough for a real face, small enough for a fast test
_clone = fft_safe_jit(seamless_clone)
_window = fft_safe_jit(dst1_window, static_argnums=3)


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A skimage sample photo, RGB float32 [0, 1], resized to (height, width)."""
    bgr = cv2.imread(skimage_data_path(name), cv2.IMREAD_COLOR)
    return cv2.resize(bgr[:, :, ::-1], size[::-1], interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _face(size: int) -> np.ndarray:
    face = cv2.resize(astronaut_rgb()[20:240, 120:340], (size, size), interpolation=cv2.INTER_AREA)
    return face.astype(np.float32) / 255.0


def _ellipse(size: int, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """A soft elliptic mask [size, size, 1] in [0, 1] (so the 0.5 threshold matters)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    r = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2
    return np.clip(4.0 * (1.0 - r) + 0.5, 0.0, 1.0)[..., None].astype(np.float32)


def _zero_border(mask_u8: np.ndarray) -> np.ndarray:
    inner = np.zeros_like(mask_u8)
    inner[1:-1, 1:-1] = mask_u8[1:-1, 1:-1]
    return inner


# --- DST-I -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 37, 64])
@pytest.mark.parametrize("axis", [0, -1])
def test_dst1_matches_scipy(n, axis):
    x = np.random.default_rng(n).standard_normal((n, 5) if axis == 0 else (5, n)).astype(np.float32)
    ref = scipy.fft.dst(x.astype(np.float64), type=1, axis=axis)
    inv = scipy.fft.idst(x.astype(np.float64), type=1, axis=axis)
    assert np.abs(np.asarray(dst1(x, axis)) - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(np.asarray(idst1(x, axis)) - inv).max() <= 1e-5 * np.abs(inv).max()


def test_dst1_window_matches_scipy_on_the_slice():
    n = 53
    starts = np.array([0, 0, 11, 30, 52, 5, 20])
    lengths = np.array([53, 37, 30, 1, 1, 0, 2])
    x = np.random.default_rng(1).standard_normal((len(starts), 3, n)).astype(np.float32)
    out = np.asarray(_window(x, starts[:, None], lengths[:, None], -1))
    for i, (start, length) in enumerate(zip(starts, lengths)):
        ref = np.zeros((3, n))
        if length:
            ref[:, start:start + length] = scipy.fft.dst(x[i, :, start:start + length].astype(np.float64), type=1)
        assert np.abs(out[i] - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0), (start, length)
    along_rows = np.asarray(_window(np.swapaxes(x, -1, -2), starts[:, None], lengths[:, None], -2))
    np.testing.assert_allclose(np.swapaxes(along_rows, -1, -2), out, atol=1e-5 * np.abs(out).max())


# --- Poisson solver ----------------------------------------------------------------------------------------

def _laplacian(u: np.ndarray) -> np.ndarray:
    """The 5-point Laplacian at the interior pixels, float64 [H-2, W-2]."""
    return u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4.0 * u[1:-1, 1:-1]


def _spsolve(rhs: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Float64 reference: assemble the 5-point system on the interior, boundary terms on the right, spsolve."""
    h, w = rhs.shape[0] - 2, rhs.shape[1] - 2
    second = lambda k: scipy.sparse.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(k, k))
    matrix = scipy.sparse.kronsum(second(w), second(h), format="csc")  # row-major: x is the fast index
    ring = boundary.astype(np.float64).copy()
    ring[1:-1, 1:-1] = 0.0
    b = rhs[1:-1, 1:-1].astype(np.float64) - _laplacian(ring)
    u = boundary.astype(np.float64).copy()
    u[1:-1, 1:-1] = scipy.sparse.linalg.spsolve(matrix, b.ravel()).reshape(h, w)
    return u


@pytest.fixture(scope="module")
def fields() -> tuple[np.ndarray, np.ndarray]:
    """Image-scale problems [2, 37, 53]: rhs = Laplacian of one photo's grey, boundary = another's."""
    rhs = np.zeros((2, 37, 53), np.float32)
    for i, name in enumerate(["coffee.png", "chelsea.png"]):
        rhs[i, 1:-1, 1:-1] = _laplacian(_photo(name, (37, 53)).mean(-1).astype(np.float64))
    boundary = np.stack([_photo("chelsea.png", (37, 53))[..., 1], _face(53)[:37, :, 0]])
    return rhs, boundary


def test_solve_poisson_matches_spsolve(fields):
    rhs, boundary = fields
    out = np.asarray(fft_safe_jit(solve_poisson)(rhs, boundary))
    for i in range(2):
        assert np.abs(out[i] - _spsolve(rhs[i], boundary[i])).max() <= 1e-4


def test_solve_poisson_in_a_run_time_box_matches_spsolve(fields):
    rhs, boundary = fields
    boxes = np.array([[5, 9, 42, 62], [0, 30, 37, 83]])  # (top, left, bottom, right) in a 50x90 array
    big_rhs = np.random.default_rng(2).standard_normal((2, 50, 90)).astype(np.float32)  # ignored off the box
    big_boundary = np.random.default_rng(3).random((2, 50, 90)).astype(np.float32)
    for i, (t, l, b, r) in enumerate(boxes):
        big_rhs[i, t:b, l:r], big_boundary[i, t:b, l:r] = rhs[i], boundary[i]
    out = np.asarray(fft_safe_jit(solve_poisson)(big_rhs, big_boundary, boxes))
    for i, (t, l, b, r) in enumerate(boxes):
        assert np.abs(out[i, t:b, l:r] - _spsolve(rhs[i], boundary[i])).max() <= 1e-4
        off_box = np.ones((50, 90), bool)
        off_box[t:b, l:r] = False
        np.testing.assert_array_equal(out[i][off_box], big_boundary[i][off_box])


# --- seamless clone ----------------------------------------------------------------------------------------

def _cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(dst, src, soft mask): the astronaut's face into coffee (centred ellipse) and into chelsea (an ellipse
    off centre that runs off the crop's left edge, so OpenCV's border zeroing matters)."""
    face = _face(SIZE)
    return [
        (_photo("coffee.png", (SIZE, SIZE)), face, _ellipse(SIZE, (80, 84), (52, 64))),
        (_photo("chelsea.png", (SIZE, SIZE)), face, _ellipse(SIZE, (40, 75), (58, 50))),
    ]


def _opencv_clone(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, tuple]:
    """cv2.seamlessClone(NORMAL_CLONE) in the same geometry (centre = centre of the bounding rect, as DFL
    computes it; taken after OpenCV's border zeroing so that its destination rect is its source rect).
    Returns the result in [0, 1] and OpenCV's solve rect (x, y, w, h)."""
    to_u8 = lambda image: np.round(image * 255.0).astype(np.uint8)
    mask_u8 = np.where(mask[..., 0] > 0.5, 255, 0).astype(np.uint8)
    x, y, w, h = cv2.boundingRect(_zero_border(mask_u8))
    # seamlessClone writes into a single-channel mask argument (erodes and inverts it): pass a copy.
    out = cv2.seamlessClone(to_u8(src), to_u8(dst), mask_u8.copy(), (int(x + w / 2), int(y + h / 2)),
                            cv2.NORMAL_CLONE)
    return out.astype(np.float32) / 255.0, (x, y, w, h)


def test_opencv_mask_domain_matches_opencv_erode_and_bounding_rect():
    noise = cv2.GaussianBlur(np.random.default_rng(4).random((SIZE, SIZE)), (0, 0), 6)[..., None]
    blob = (noise > np.median(noise)).astype(np.float32)
    masks = [case[2] for case in _cases()] + [blob, np.zeros_like(blob)]
    domain = fft_safe_jit(opencv_mask_domain)(np.stack(masks))
    for mask, guide, box in zip(masks, np.asarray(domain.guide), np.asarray(domain.box)):
        inner = _zero_border(np.where(mask[..., 0] > 0.5, 255, 0).astype(np.uint8))
        eroded = cv2.erode(inner, np.ones((3, 3), np.uint8), iterations=3, borderType=cv2.BORDER_CONSTANT,
                           borderValue=0)
        np.testing.assert_array_equal(guide[..., 0], eroded / 255.0)
        x, y, w, h = cv2.boundingRect(inner)
        assert tuple(box) == (y, x, y + h, x + w)
    assert np.asarray(domain.guide).sum() > 0


@pytest.mark.parametrize("case", [0, 1])
def test_seamless_clone_matches_opencv(case):
    dst, src, mask = _cases()[case]
    dst = np.round(dst * 255.0) / 255.0  # the uint8 values OpenCV sees
    src = np.round(src * 255.0) / 255.0
    ours = np.asarray(_clone(dst, src, mask))
    theirs, (x, y, w, h) = _opencv_clone(dst, src, mask)
    inside = mask[..., 0] > 0.5
    error = np.abs(ours - theirs)
    assert error[inside].mean() <= 2.0 / 255.0
    assert error.max() <= 1.5 / 255.0
    assert np.abs(ours - dst)[inside].mean() > 10.0 / 255.0  # the clone really changed the face region
    untouched = np.ones((SIZE, SIZE), bool)
    untouched[y + 1:y + h - 1, x + 1:x + w - 1] = False
    np.testing.assert_array_equal(ours[untouched], dst.astype(np.float32)[untouched])
    np.testing.assert_array_equal(theirs[untouched], dst.astype(np.float32)[untouched])


def test_seamless_clone_batch_under_jit_equals_one_at_a_time():
    dst, src, mask = (np.stack(parts) for parts in zip(*_cases()))
    batched = np.asarray(_clone(dst, src, mask))
    for i in range(2):
        single = np.asarray(_clone(dst[i], src[i], mask[i]))
        np.testing.assert_allclose(batched[i], single, atol=1e-6)  # FFT batching may reorder float sums
