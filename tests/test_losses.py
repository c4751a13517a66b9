"""SAEHD losses (DFL_SPEC §3.1, §3.4, §3.8) against float64 NumPy/SciPy references written here from
the spec: 2-D kernels built in full (not separably), SciPy correlation, the §3.4 formula term by term.

Tolerances: blur 1e-6 absolute (float32 filtering of values in [0, 1]); DSSIM 1e-5 absolute per
sample; the total and every reported term 1e-5 relative.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal
from skimage.metrics import structural_similarity

from engine import losses


# ---- float64 references ------------------------------------------------------------------------

def ref_blur_size(sigma: float) -> int:
    size = max(3, int(4 * sigma))
    return size if size % 2 else size + 1


def ref_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """DFL's blur op: a full 2-D normalised Gaussian, zero padding, on NHWC."""
    size = ref_blur_size(sigma)
    yy, xx = np.mgrid[:size, :size] - size // 2
    kernel = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    return ndi.correlate(np.asarray(x, np.float64), kernel[None, :, :, None], mode="constant", cval=0.0)


def ref_dssim(a: np.ndarray, b: np.ndarray, size: int, max_val: float = 1.0) -> np.ndarray:
    """DFL's DSSIM: window = softmax of −r²/(2·1.5²) over the 2-D grid, VALID, per channel -> [B]."""
    r = np.arange(size) - (size - 1) / 2
    logits = -(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2)
    window = np.exp(logits - logits.max())
    window = (window / window.sum())[None, :, :, None]
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def filt(x):
        return scipy.signal.correlate(x, window, mode="valid")

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return np.mean((1 - ssim.mean(axis=(1, 2))) / 2, axis=-1)


def ref_soft_mask(mask, res, clip=True):
    blurred = ref_blur(mask, max(1, res // 32))
    return np.clip(blurred, 0, 0.5) * 2 if clip else blurred


def ref_blur_out(target, mask, res):
    sigma = res / 128
    den = 1 - ref_blur(mask, sigma)
    den[den == 0] = 1
    return target * mask + ref_blur(target * (1 - mask), sigma) / den * (1 - mask)


def ref_saehd(batch, preds, res, masked, prio, blur_out, quick96=False):
    """§3.4 / §3.8 per-sample losses in float64, returns (total, {name: batch mean})."""
    k1, k2 = int(res / 11.6), int(res / 23.2)
    out, total = {}, 0.0
    for side, p in (("src", "src_src"), ("dst", "dst_dst")):
        t = np.asarray(batch[f"target_{side}"], np.float64)
        m = np.asarray(batch[f"target_{side}m"], np.float64)
        em = np.asarray(batch[f"target_{side}m_em"], np.float64)
        pr = np.asarray(preds[f"pred_{p}"], np.float64)
        pm = np.asarray(preds[f"pred_{p}m"], np.float64)
        if blur_out:
            t = ref_blur_out(t, m, res)
        if quick96:
            lm = ref_soft_mask(m, res, clip=False)
            tm, pmk = t * lm, pr * lm
        elif masked:
            lm = ref_soft_mask(m, res)
            tm, pmk = t * lm, pr * lm
        else:
            tm, pmk = t, pr
        if res < 256:
            d = 10 * ref_dssim(tm, pmk, k1)
        else:
            d = 5 * ref_dssim(tm, pmk, k1) + 5 * ref_dssim(tm, pmk, k2)
        terms = {"dssim": d, "mse": 10 * np.mean((tm - pmk) ** 2, axis=(1, 2, 3)),
                 "mask": 10 * np.mean((m - pm) ** 2, axis=(1, 2, 3))}
        if prio:
            terms["eyes_mouth"] = 300 * np.mean(np.abs(t * em - pr * em), axis=(1, 2, 3))
        side_loss = sum(terms.values())
        total = total + side_loss
        out[f"{side}_loss"] = side_loss.mean()
        out.update({f"{side}_{k}": v.mean() for k, v in terms.items()})
    return total.mean(), out


# ---- inputs ------------------------------------------------------------------------------------

def ellipse_mask(res: int, rng: np.random.Generator, scale: float = 0.35) -> np.ndarray:
    yy, xx = np.mgrid[:res, :res] / res
    cy, cx = 0.5 + rng.uniform(-0.05, 0.05, 2)
    return (((yy - cy) / scale) ** 2 + ((xx - cx) / (0.8 * scale)) ** 2 <= 1).astype(np.float32)


def smooth_image(res: int, rng: np.random.Generator) -> np.ndarray:
    """Structure at several scales plus pixel noise, in [0, 1]."""
    img = ndi.gaussian_filter(rng.uniform(size=(res, res, 3)), sigma=(res / 16, res / 16, 0))
    img = (img - img.min()) / (np.ptp(img) + 1e-9)
    return np.clip(0.8 * img + 0.2 * rng.uniform(size=img.shape), 0, 1).astype(np.float32)


def make_batch(res: int, batch: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    data, preds = {}, {}
    for side, p in (("src", "src_src"), ("dst", "dst_dst")):
        target = np.stack([smooth_image(res, rng) for _ in range(batch)])
        mask = np.stack([ellipse_mask(res, rng)[..., None] for _ in range(batch)])
        # Shifted so that it straddles the face edge: the eyes/mouth term must use the unmasked images.
        em = np.stack([np.roll(ellipse_mask(res, rng, 0.15), res // 4, axis=0)[..., None] for _ in range(batch)])
        data |= {f"target_{side}": target, f"target_{side}m": mask, f"target_{side}m_em": em}
        pred = np.clip(target + rng.normal(0, 0.08, target.shape) + 0.05, 0, 1).astype(np.float32)
        pred_mask = np.clip(ndi.gaussian_filter(mask, (0, 2, 2, 0)) + rng.normal(0, 0.05, mask.shape), 0, 1)
        preds |= {f"pred_{p}": pred, f"pred_{p}m": pred_mask.astype(np.float32)}
    return data, preds


@pytest.fixture(scope="module")
def batches():
    return {res: make_batch(res, 2, seed=res) for res in (32, 96, 256)}


# ---- blur and masks ----------------------------------------------------------------------------

def test_blur_kernel_size_follows_the_spec():
    assert {s: losses.blur_kernel_size(s) for s in (0.25, 0.5, 1, 1.5, 2, 3, 8)} == {
        0.25: 3, 0.5: 3, 1: 5, 1.5: 7, 2: 9, 3: 13, 8: 33}


@pytest.mark.parametrize("sigma", [0.25, 1.0, 1.5, 2.0, 3.0])
def test_gaussian_blur_matches_scipy_with_zero_padding(sigma):
    x = np.random.default_rng(0).uniform(size=(2, 21, 26, 3)).astype(np.float32)
    radius = ref_blur_size(sigma) // 2
    expected = ndi.gaussian_filter(x.astype(np.float64), sigma=(0, sigma, sigma, 0),
                                   radius=(0, radius, radius, 0), mode="constant", cval=0.0)
    got = np.asarray(losses.gaussian_blur(jnp.asarray(x), sigma))
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("res", [32, 80, 256])  # 80: σ = res//32 = 2, not 2.5
@pytest.mark.parametrize("clip", [True, False])
def test_soft_mask_matches_reference(res, clip):
    rng = np.random.default_rng(res)
    mask = np.stack([ellipse_mask(res, rng)[..., None], rng.uniform(size=(res, res, 1)).astype(np.float32)])
    got = np.asarray(losses.soft_mask(jnp.asarray(mask), res, clip=clip))
    np.testing.assert_allclose(got, ref_soft_mask(mask, res, clip), atol=2e-6)
    if clip:  # binary-like: 1 inside the face, 0 far outside
        assert got[0, res // 2, res // 2, 0] == pytest.approx(1.0) and got[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("res", [128, 256])
def test_blur_out_mask_matches_reference(res):
    rng = np.random.default_rng(1)
    target = np.stack([smooth_image(res, rng), smooth_image(res, rng)])
    mask = np.stack([ellipse_mask(res, rng)[..., None], np.zeros((res, res, 1), np.float32)])
    got = np.asarray(losses.blur_out_mask(jnp.asarray(target), jnp.asarray(mask), res))
    expected = ref_blur_out(target, mask, res)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    inside = mask[0, ..., 0] == 1
    np.testing.assert_array_equal(got[0][inside], target[0][inside])  # the face is untouched
    assert np.abs(got[0][~inside] - target[0][~inside]).mean() > 0.01  # the background is not


def test_blur_out_mask_all_face_is_identity():
    """1 − G(m) is 0 inside an all-face mask; the spec's 0 -> 1 replacement keeps the result finite."""
    target = np.random.default_rng(2).uniform(size=(1, 32, 32, 3)).astype(np.float32)
    got = np.asarray(losses.blur_out_mask(jnp.asarray(target), jnp.ones((1, 32, 32, 1)), 128))
    np.testing.assert_array_equal(got, target)


# ---- DSSIM -------------------------------------------------------------------------------------

@pytest.mark.parametrize("res,kernel", [(32, 2), (32, 5), (48, 11), (64, 22)])
def test_dssim_matches_reference(res, kernel):
    rng = np.random.default_rng(kernel)
    a = np.stack([smooth_image(res, rng) for _ in range(3)])
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    got = np.asarray(losses.dssim(jnp.asarray(a), jnp.asarray(b), kernel))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, ref_dssim(a, b, kernel), atol=1e-5)


def test_dssim_max_val_scales_the_constants():
    rng = np.random.default_rng(5)
    a = np.stack([smooth_image(32, rng)])
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    got = np.asarray(losses.dssim(jnp.asarray(a * 255), jnp.asarray(b * 255), 5, max_val=255.0))
    np.testing.assert_allclose(got, ref_dssim(a, b, 5), atol=1e-5)


def test_dssim_is_zero_on_equal_images_and_grows_with_noise():
    rng = np.random.default_rng(3)
    a = np.stack([smooth_image(48, rng)])
    values = [float(losses.dssim(jnp.asarray(a), jnp.asarray(a + rng.normal(0, s, a.shape).astype(np.float32)), 11)[0])
              for s in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert abs(values[0]) < 1e-6
    assert all(lo < hi for lo, hi in zip(values, values[1:])), values


def test_dssim_equals_skimage_ssim_at_kernel_11():
    """skimage's Gaussian SSIM (σ 1.5, truncate 3.5 -> an 11-tap window, population covariance,
    border of 5 cropped) is DFL's SSIM at k = 11, so 1 − 2·DSSIM equals it to float32 precision."""
    rng = np.random.default_rng(4)
    a = np.stack([smooth_image(40, rng) for _ in range(2)])
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    got = 1 - 2 * np.asarray(losses.dssim(jnp.asarray(a), jnp.asarray(b), 11))
    expected = [structural_similarity(x.astype(np.float64), y.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0, channel_axis=-1)
                for x, y in zip(a, b)]
    np.testing.assert_allclose(got, expected, atol=2e-5)


# ---- SAEHD loss --------------------------------------------------------------------------------

CASES = [  # res, masked_training, eyes_mouth_prio, blur_out_mask
    (32, True, False, False),
    (32, False, True, False),
    (32, True, True, True),
    (256, True, True, False),
    (256, False, False, True),
]


@functools.cache
def jitted_losses(res: int, masked: bool, prio: bool, blur_out: bool, quick96: bool = False):
    return jax.jit(functools.partial(losses.saehd_losses, resolution=res, masked_training=masked,
                                     eyes_mouth_prio=prio, blur_out_mask=blur_out, quick96=quick96))


@pytest.mark.parametrize("res,masked,prio,blur_out", CASES)
def test_saehd_losses_match_reference(batches, res, masked, prio, blur_out):
    batch, preds = batches[res]
    total, metrics = jitted_losses(res, masked, prio, blur_out)(batch, preds)
    ref_total, ref_metrics = ref_saehd(batch, preds, res, masked, prio, blur_out)
    assert total.dtype == jnp.float32 and total.shape == ()
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
    assert set(metrics) == set(ref_metrics)
    for name, value in ref_metrics.items():
        np.testing.assert_allclose(float(metrics[name]), value, rtol=1e-5, err_msg=name)


def test_saehd_two_scale_dssim_differs_from_one_scale(batches):
    """At 256 px the 5 + 5 split is measurably different from 10·DSSIM_k1 (so the path is tested)."""
    batch, preds = batches[256]
    _, metrics = jitted_losses(256, True, False, False)(batch, preds)
    t = np.asarray(batch["target_src"], np.float64) * ref_soft_mask(batch["target_srcm"], 256)
    p = np.asarray(preds["pred_src_src"], np.float64) * ref_soft_mask(batch["target_srcm"], 256)
    one_scale = 10 * ref_dssim(t, p, 22).mean()
    assert abs(float(metrics["src_dssim"]) - one_scale) > 100 * 1e-5 * one_scale


def test_quick96_loss_uses_the_unclipped_mask(batches):
    batch, preds = batches[96]
    total, metrics = jitted_losses(96, True, False, False, quick96=True)(batch, preds)
    ref_total, ref_metrics = ref_saehd(batch, preds, 96, True, False, False, quick96=True)
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["dst_mse"]), ref_metrics["dst_mse"], rtol=1e-5)
    saehd_total, _ = ref_saehd(batch, preds, 96, True, False, False)
    assert abs(saehd_total - ref_total) > 1e-3 * ref_total


def test_saehd_losses_are_float32_for_bf16_predictions(batches):
    batch, preds = batches[32]
    bf16_preds = {k: jnp.asarray(v, jnp.bfloat16) for k, v in preds.items()}
    total, metrics = jitted_losses(32, True, True, False)(batch, bf16_preds)
    assert total.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in metrics.values())
    rounded = {k: np.asarray(v.astype(jnp.float32)) for k, v in bf16_preds.items()}
    np.testing.assert_allclose(float(total), ref_saehd(batch, rounded, 32, True, True, False)[0], rtol=1e-5)
    src_terms = sum(float(v) for k, v in metrics.items() if k.startswith("src_") and k != "src_loss")
    assert src_terms == pytest.approx(float(metrics["src_loss"]), rel=1e-6)


def test_saehd_losses_gradient_is_finite(batches):
    batch, preds = batches[32]
    grad = jax.grad(lambda p: losses.saehd_losses(batch, p, resolution=32, masked_training=True,
                                                  eyes_mouth_prio=True, blur_out_mask=True)[0])(preds)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grad))
    assert np.abs(np.asarray(grad["pred_src_src"])).max() > 0


# ---- style, GAN and true-face terms ------------------------------------------------------------
# References in float64 from the §3.4 formulas; tolerances 1e-5 relative (float32 blur and
# reductions), BCE 1e-6 absolute.

def ref_style(a, b, sigma, weight):
    """DFL's style_loss: blur both, then (Σ_c (μa−μb)² + Σ_c (σa−σb)²)·w/C, σ = sqrt(var + 1e-5)."""
    a, b = ref_blur(a, sigma), ref_blur(b, sigma)
    mean_a, mean_b = a.mean(axis=(1, 2)), b.mean(axis=(1, 2))
    std_a, std_b = np.sqrt(a.var(axis=(1, 2)) + 1e-5), np.sqrt(b.var(axis=(1, 2)) + 1e-5)
    return (((mean_a - mean_b) ** 2).sum(-1) + ((std_a - std_b) ** 2).sum(-1)) * weight / a.shape[-1]


def ref_bce(logits, label):
    """-[z·log σ(x) + (1 − z)·log(1 − σ(x))], mean over all but the batch axis."""
    x = np.asarray(logits, np.float64)
    p = 1 / (1 + np.exp(-x))
    return (-(label * np.log(p) + (1 - label) * np.log(1 - p))).reshape(len(x), -1).mean(-1)


def swap_preds(res: int, seed: int, batch: dict, preds: dict) -> dict:
    """preds plus a swap prediction (dst image with a src-ish tint), its mask and the no-code-grad
    swap (the same image, slightly different, as two decoder passes would give)."""
    rng = np.random.default_rng(seed)
    target_dst = batch["target_dst"]
    swap = np.clip(target_dst * 0.8 + 0.15 + rng.normal(0, 0.05, target_dst.shape), 0, 1).astype(np.float32)
    dst_mask = batch["target_dstm"]
    swap_mask = np.clip(ndi.gaussian_filter(dst_mask, (0, 3, 3, 0)) + rng.normal(0, 0.05, dst_mask.shape), 0, 1)
    return dict(preds, pred_src_dst=swap, pred_src_dstm=swap_mask.astype(np.float32),
                pred_src_dst_no_code_grad=np.clip(swap + rng.normal(0, 0.02, swap.shape), 0, 1).astype(np.float32))


def ref_style_terms(batch, preds, res, fsp, bsp, background=None):
    f64 = {k: np.asarray(v, np.float64) for k, v in preds.items()}
    face = ref_style(f64["pred_src_dst_no_code_grad"] * f64["pred_src_dstm"],
                     f64["pred_dst_dst"] * f64["pred_dst_dstm"], res // 8, 10000 * fsp / 100)
    if background is None:  # ours: the background of the predicted swap and dst masks
        background = 1 - np.clip(ref_blur(f64["pred_src_dstm"] * f64["pred_dst_dstm"], max(1, res // 32)), 0, 1)
    ours, theirs = f64["pred_src_dst"] * background, np.asarray(batch["target_dst"], np.float64) * background
    bg = (10 * bsp / 100) * (ref_dssim(ours, theirs, int(res / 11.6)) + ((ours - theirs) ** 2).mean(axis=(1, 2, 3)))
    return face, bg


def test_style_loss_matches_reference():
    rng = np.random.default_rng(7)
    a = np.stack([smooth_image(64, rng) for _ in range(3)])
    b = np.clip(a * 0.7 + 0.2 + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    got = np.asarray(losses.style_loss(jnp.asarray(a), jnp.asarray(b), 8, 1000.0))
    np.testing.assert_allclose(got, ref_style(a, b, 8, 1000.0), rtol=1e-5)
    assert float(losses.style_loss(jnp.asarray(a), jnp.asarray(a), 8, 1000.0)[0]) == 0.0


@pytest.mark.parametrize("res,fsp,bsp", [(32, 10.0, 0.0), (32, 0.0, 25.0), (96, 5.0, 50.0)])
def test_style_terms_in_src_loss_match_reference(batches, res, fsp, bsp):
    batch, preds = batches[res]
    preds = swap_preds(res, res, batch, preds)
    fn = jax.jit(functools.partial(losses.saehd_losses, resolution=res, masked_training=True,
                                   eyes_mouth_prio=False, blur_out_mask=False, face_style_power=fsp,
                                   bg_style_power=bsp))
    total, metrics = fn(batch, preds)
    _, plain = jitted_losses(res, True, False, False)(batch, preds)
    face, bg = ref_style_terms(batch, preds, res, fsp, bsp)
    expected = {"src_face_style": face.mean()} if fsp else {}
    expected |= {"src_bg_style": bg.mean()} if bsp else {}
    assert set(metrics) - set(plain) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(metrics[name]), value, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(metrics["src_loss"]), float(plain["src_loss"]) + sum(expected.values()),
                               rtol=1e-5)
    assert float(metrics["dst_loss"]) == float(plain["dst_loss"])
    if bsp:  # DFL's mask, the src target's soft mask, measures something else here (the fixed bug)
        _, dfl_bg = ref_style_terms(batch, preds, res, fsp, bsp, 1 - ref_soft_mask(batch["target_srcm"], res))
        assert abs(dfl_bg.mean() - bg.mean()) > 0.05 * bg.mean()


def test_style_terms_stop_gradients_where_dfl_does(batches):
    """face style trains only the no-code-grad swap (masks and the dst prediction are targets);
    bg style trains the swap but not the masks that define the background."""
    batch, preds = batches[32]
    preds = {k: jnp.asarray(v) for k, v in swap_preds(32, 1, batch, preds).items()}

    def term(p, name, fsp, bsp):
        _, metrics = losses.saehd_losses(batch, p, resolution=32, masked_training=True, eyes_mouth_prio=False,
                                         blur_out_mask=False, face_style_power=fsp, bg_style_power=bsp)
        return metrics[name]

    face = jax.grad(term)(preds, "src_face_style", 10.0, 0.0)
    bg = jax.grad(term)(preds, "src_bg_style", 0.0, 10.0)
    norms = lambda g: {k: float(jnp.abs(v).max()) for k, v in g.items()}  # noqa: E731
    face, bg = norms(face), norms(bg)
    assert face["pred_src_dst_no_code_grad"] > 0 and bg["pred_src_dst"] > 0
    assert face["pred_src_dstm"] == face["pred_dst_dst"] == face["pred_dst_dstm"] == face["pred_src_dst"] == 0
    assert bg["pred_src_dstm"] == bg["pred_dst_dstm"] == bg["pred_src_dst_no_code_grad"] == 0


def test_sigmoid_bce_and_discriminator_losses_match_reference():
    rng = np.random.default_rng(8)
    heads_real = [rng.normal(0, 4, shape).astype(np.float32) for shape in ((3, 4, 4, 1), (3, 16, 16, 1))]
    heads_fake = [rng.normal(-1, 4, h.shape).astype(np.float32) for h in heads_real]
    for label in (0.0, 1.0):
        np.testing.assert_allclose(np.asarray(losses.sigmoid_bce(jnp.asarray(heads_real[1]), label)),
                                   ref_bce(heads_real[1], label), atol=1e-6)
    d = losses.discriminator_loss([jnp.asarray(h) for h in heads_real], [jnp.asarray(h) for h in heads_fake])
    ref_d = sum(0.5 * (ref_bce(r, 1) + ref_bce(f, 0)) for r, f in zip(heads_real, heads_fake))
    np.testing.assert_allclose(np.asarray(d), ref_d, atol=1e-6)
    g = losses.generator_adversarial_loss([jnp.asarray(h) for h in heads_fake])
    np.testing.assert_allclose(np.asarray(g), sum(ref_bce(f, 1) for f in heads_fake), atol=1e-6)
    # DFL's labels: an undecided discriminator (logits 0) scores log 2 per head and side.
    zeros = [jnp.zeros((2, 4, 4, 1))]
    np.testing.assert_allclose(np.asarray(losses.discriminator_loss(zeros, zeros)), np.log(2), rtol=1e-6)


@pytest.mark.parametrize("masked,blur_out", [(True, False), (False, False), (True, True)])
def test_gan_inputs_and_regularisers_match_reference(batches, masked, blur_out):
    batch, preds = batches[32]
    real, fake = losses.gan_inputs(batch, preds, resolution=32, masked_training=masked, blur_out_mask=blur_out)
    t = np.asarray(batch["target_src"], np.float64)
    m = np.asarray(batch["target_srcm"], np.float64)
    p = np.asarray(preds["pred_src_src"], np.float64)
    if blur_out:
        t = ref_blur_out(t, m, 32)
    lm = ref_soft_mask(m, 32) if masked else 1.0
    np.testing.assert_allclose(np.asarray(real), t * lm, atol=1e-5)
    np.testing.assert_allclose(np.asarray(fake), p * lm, atol=1e-5)
    reg = losses.gan_regularisers(batch, preds, resolution=32, blur_out_mask=blur_out)
    anti = 1 - ref_soft_mask(m, 32)
    tv = (np.diff(p, axis=1) ** 2).sum(axis=(1, 2, 3)) + (np.diff(p, axis=2) ** 2).sum(axis=(1, 2, 3))
    expected = 1e-6 * tv + 0.02 * ((p * anti - t * anti) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(reg), expected, rtol=1e-5)
