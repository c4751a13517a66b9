"""SAEHD networks: DFL's parameter counts, layer conventions (§3.1), output shapes, dtypes, FLOPs.

References are float64 NumPy re-statements of the spec's formulas and XLA's own cost analysis.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import quick96, saehd
from engine.flops import module_flops, step_flops, traced_flops
from engine.models import SAEHD, Archi, param_counts, parse_archi, validate_model_config
from engine.models.layers import (MATMUL_MAX_PIXELS, ConvTranspose, Downscale, ResidualBlock, Upscale, conv2d, dense,
                                  depth_to_space, flatten_channel_major, pixel_norm, plain_convolutions,
                                  unflatten_channel_major)

ARCHIS = [f"{kind}{'-' + opts if opts else ''}"
          for kind in ("df", "liae") for opts in ("", "u", "d", "t", "ud", "udt")]


def tiny_model_cfg(archi: str = "liae-ud", resolution: int = 32):
    cfg = saehd.get_config("tiny").model
    cfg.update(archi=archi, resolution=resolution)
    return cfg


def rngs(seed: int = 0) -> nnx.Rngs:
    """An "rbg" key: threefry's per-shape init kernels take several times longer to compile."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def abstract_model(cfg) -> SAEHD:
    return nnx.eval_shape(lambda: SAEHD(cfg, rngs=nnx.Rngs(0)))


def rng_array(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


# ---- float64 NumPy references of the spec's formulas -------------------------------------------

def np_conv(x, kernel, bias, stride=1):
    """Zero pad k//2 (= ((k-1)+1)//2) on every side, then a VALID strided cross-correlation."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += patch @ kernel[i, j]
    return out + np.asarray(bias, np.float64)


def np_depth_to_space(x):
    """out[2h+i, 2w+j, c] = in[h, w, (2i+j)*C + c], written as loops."""
    n, h, w, c4 = x.shape
    c = c4 // 4
    out = np.zeros((n, 2 * h, 2 * w, c), x.dtype)
    for i in range(2):
        for j in range(2):
            out[:, i::2, j::2, :] = x[:, :, :, (2 * i + j) * c:(2 * i + j + 1) * c]
    return out


def np_leaky(x, slope):
    return np.where(x >= 0, x, slope * x)


def conv_params(layer):
    return np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])


def reference_param_count(cfg) -> dict[str, int]:
    """DFL_SPEC §3.3's layer list, counted by hand: conv k*k*in*out + out, dense in*out + out."""
    a = parse_archi(cfg.archi)
    e, d, m, ae, res = cfg.e_dims, cfg.d_dims, cfg.d_mask_dims, cfg.ae_dims, cfg.resolution
    conv = lambda cin, cout, k: k * k * cin * cout + cout
    resblock = lambda ch: 2 * conv(ch, ch, 3)
    upscale = lambda cin, cout: conv(cin, 4 * cout, 3)
    if a.t:
        encoder = (conv(3, e, 5) + resblock(e) + conv(e, 2 * e, 5) + conv(2 * e, 4 * e, 5)
                   + conv(4 * e, 8 * e, 5) + conv(8 * e, 8 * e, 5) + resblock(8 * e))
    else:
        widths = [3, e, 2 * e, 4 * e, 8 * e]
        encoder = sum(conv(widths[i], widths[i + 1], 5) for i in range(4))
    flat = (res // (32 if a.t else 16)) ** 2 * 8 * e
    low = res // (32 if a.d else 16)
    ae_out = ae if a.kind == "df" else 2 * ae
    inter = (flat * ae + ae) + (ae * low * low * ae_out + low * low * ae_out)
    inter += 0 if a.t else upscale(ae_out, ae_out)
    dec_in = ae if a.kind == "df" else 4 * ae
    rgb = [8 * d, 8 * d, 4 * d, 2 * d] if a.t else [8 * d, 4 * d, 2 * d]
    mask = ([8 * m, 8 * m, 4 * m, 2 * m] if a.t else [8 * m, 4 * m, 2 * m]) + ([m] if a.d else [])
    decoder = sum(upscale(cin, c) + resblock(c) for cin, c in zip([dec_in] + rgb, rgb))
    decoder += sum(upscale(cin, c) for cin, c in zip([dec_in] + mask, mask))
    decoder += conv(2 * d, 3, 1) + (3 * conv(2 * d, 3, 3) if a.d else 0) + conv(mask[-1], 1, 1)
    if a.kind == "df":
        parts = {"encoder": encoder, "inter": inter, "decoder_src": decoder, "decoder_dst": decoder}
    else:
        parts = {"encoder": encoder, "inter_AB": inter, "inter_B": inter, "decoder": decoder}
    return {**parts, "total": sum(parts.values())}


# ---- parameter counts ---------------------------------------------------------------------------

def test_liae_ud_128_parameter_counts_equal_dfl_measured():
    cfg = saehd.get_config("liae-ud").model
    cfg.face_type = "whole_face"  # the saved model DFL's numbers come from
    counts = param_counts(abstract_model(cfg))
    assert counts == {"encoder": 4_306_560, "inter_AB": 19_933_440, "inter_B": 19_933_440,
                      "decoder": 38_203_115, "total": 82_376_555}


@pytest.mark.parametrize("archi", ARCHIS)
def test_parameter_counts_follow_the_layer_list(archi):
    cfg = tiny_model_cfg(archi, resolution=64)
    assert param_counts(abstract_model(cfg)) == reference_param_count(cfg)


def test_quick96_preset():
    cfg = quick96.get_config()
    m, t = cfg.model, cfg.train
    assert (m.archi, m.resolution, m.face_type, m.ae_dims, m.e_dims, m.d_dims, m.d_mask_dims) == (
        "df-ud", 96, "full", 128, 64, 64, 16)
    assert (t.batch_size, t.optimizer, t.lr, t.lr_dropout) == (4, "rmsprop", 2e-4, True)
    assert not t.random_src_flip and not t.random_dst_flip and t.random_warp
    assert set(cfg.keys()) == set(saehd.get_config("df-ud").keys())
    counts = param_counts(abstract_model(m))
    assert counts == reference_param_count(m)
    assert 30e6 < counts["total"] < 40e6  # 4.3 M encoder + 6.1 M inter + 2 x 12.1 M decoders
    validate_model_config(quick96.get_config("tiny").model)
    with pytest.raises(ValueError, match="unknown preset"):
        quick96.get_config("huge")


# ---- shapes and config validation ---------------------------------------------------------------

@pytest.mark.parametrize("archi,res", [(a, 64) for a in ARCHIS] + [(a, 32) for a in ARCHIS]
                         + [("liae", 48), ("df-ut", 48)])
def test_output_shapes(archi, res):
    model = abstract_model(tiny_model_cfg(archi, res))
    graphdef, state = nnx.split(model)
    face = jax.ShapeDtypeStruct((2, res, res, 3), jnp.float32)
    out = jax.eval_shape(lambda s, a, b: nnx.merge(graphdef, s)(a, b), state, face, face)
    assert sorted(out) == sorted(["pred_src_src", "pred_src_srcm", "pred_dst_dst",
                                  "pred_dst_dstm", "pred_src_dst", "pred_src_dstm"])
    for name, value in out.items():
        channels = 1 if name.endswith("m") else 3
        assert value.shape == (2, res, res, channels) and value.dtype == jnp.float32, name
    swap = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).swap(x), state, face)
    assert [v.shape for v in swap] == [(2, res, res, 3), (2, res, res, 1), (2, res, res, 1)]


@pytest.mark.parametrize("text,expected", [
    ("df", Archi("df", False, False, False)), ("LIAE-ud", Archi("liae", True, True, False)),
    ("liae-tdu", Archi("liae", True, True, True)), ("df-t", Archi("df", False, False, True))])
def test_parse_archi(text, expected):
    assert parse_archi(text) == expected


@pytest.mark.parametrize("text,message", [
    ("", "expected 'df' or 'liae'"), ("sae", "expected 'df' or 'liae'"),
    ("liae-", "expected 'df' or 'liae'"), ("df-x", "unknown option"),
    ("liae-udc", "unknown option"), ("df-uu", "repeated")])
def test_bad_archi_is_rejected(text, message):
    with pytest.raises(ValueError, match=message):
        parse_archi(text)


@pytest.mark.parametrize("archi,field,value,message", [
    ("liae-u", "resolution", 72, "resolution=72: must be a multiple of 16"),
    ("liae-ud", "resolution", 80, "resolution=80: must be a multiple of 32 for -d"),
    ("liae-ud", "resolution", 16, r"resolution=16: must be an integer in 32\.\.640"),
    ("liae-ud", "resolution", 672, r"32\.\.640"),
    ("liae-ud", "ae_dims", 2048, r"ae_dims=2048: must be an integer in 32\.\.1024"),
    ("liae-ud", "e_dims", 17, "e_dims=17: must be even"),
    ("liae-ud", "d_dims", 300, r"d_dims=300: must be an integer in 16\.\.256"),
    ("liae-ud", "face_type", "full_face_no_align", "face_type='full_face_no_align'"),
    ("liae-ud", "face_type", "banana", "face_type='banana'"),
    ("liae-ud", "archi", "liae-x", "unknown option"),
])
def test_bad_model_config_is_rejected(archi, field, value, message):
    cfg = tiny_model_cfg(archi, 64)
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        validate_model_config(cfg)
    with pytest.raises(ValueError, match=message):
        abstract_model(cfg)


def test_resolution_needs_only_16_without_d():
    validate_model_config(tiny_model_cfg("liae-u", 80))


# ---- layer conventions (§3.1) ---------------------------------------------------------------------

def test_depth_to_space_is_tf_dcr_order():
    x = rng_array((2, 3, 4, 20))
    np.testing.assert_array_equal(np.asarray(depth_to_space(jnp.asarray(x))), np_depth_to_space(x))


@pytest.mark.parametrize("k,stride,size,out_size", [(5, 2, 16, 8), (3, 1, 9, 9), (1, 1, 7, 7),
                                                     (4, 2, 16, 9)])
def test_conv_uses_symmetric_explicit_padding(k, stride, size, out_size):
    layer = conv2d(3, 5, k, stride, dtype=jnp.float32, rngs=rngs(1))
    x = rng_array((2, size, size, 3))
    y = np.asarray(layer(jnp.asarray(x)))
    assert y.shape == (2, out_size, out_size, 5)
    np.testing.assert_allclose(y, np_conv(x, *conv_params(layer), stride), atol=1e-5)


@pytest.mark.parametrize("k,stride,size", [(3, 1, 2), (5, 2, 8), (5, 2, 7), (3, 2, 4), (1, 1, 8), (4, 2, 15)])
def test_small_maps_are_convolved_as_a_matmul_with_the_same_values_and_gradients(k, stride, size):
    """On a CPU, output maps <= MATMUL_MAX_PIXELS go through conv_as_matmul (XLA:CPU runs tiny
    convs as naive loops): its forward and backward hold dots and no convolution, and the output and both
    gradients equal nnx.Conv's plain convolution within float32 rounding (atol 1e-5)."""
    layer = conv2d(6, 5, k, stride, dtype=jnp.float32, rngs=rngs(2))
    x = jnp.asarray(rng_array((2, size, size, 6)))
    plain = lambda lyr, v: nnx.Conv.__call__(lyr, v)  # noqa: E731 - the parent's convolution
    ours = lambda lyr, v: lyr(v)  # noqa: E731
    lowered = jax.jit(jax.grad(lambda v: jnp.sum(layer(v)))).lower(x).as_text()
    assert "dot_general" in lowered and "convolution" not in lowered

    def grads(call):
        def loss(lyr, v):
            return jnp.sum(call(lyr, v) ** 2)
        return nnx.grad(loss, argnums=(0, 1))(layer, x)

    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(plain(layer, x)), atol=1e-5)
    (gl_ours, gx_ours), (gl_plain, gx_plain) = grads(ours), grads(plain)
    np.testing.assert_allclose(np.asarray(gx_ours), np.asarray(gx_plain), atol=1e-4)
    np.testing.assert_allclose(np.asarray(gl_ours.kernel[...]), np.asarray(gl_plain.kernel[...]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(gl_ours.bias[...]), np.asarray(gl_plain.bias[...]), atol=1e-4)


@pytest.mark.parametrize("transpose_kernel", [True, False])
@pytest.mark.parametrize("stride,size", [(2, 8), (2, 7), (1, 6)])
def test_transposed_conv_has_nnx_values_and_gradients_without_a_dilated_kernel_gradient(transpose_kernel, stride, size):
    """layers.ConvTranspose (GAN decoder: transpose_kernel=True; XSeg: False) equals nnx.ConvTranspose:
    output and the gradients of input, kernel and bias within float32 rounding (rtol 1e-5). Its
    compiled backward has no `wrapped_convolution` (XLA:CPU's naive-loop convolution), which
    nnx.ConvTranspose's strided kernel gradient compiles to."""
    kw = dict(strides=stride, padding="SAME", transpose_kernel=transpose_kernel,
              bias_init=nnx.initializers.normal(1.0))
    ours = ConvTranspose(6, 4, (3, 3), rngs=rngs(4), **kw)
    ref = nnx.ConvTranspose(6, 4, (3, 3), rngs=rngs(4), **kw)
    x = jnp.asarray(rng_array((2, size, size, 6)))

    def grads(layer):
        return nnx.grad(lambda lyr, v: jnp.sum(jnp.sin(lyr(v))), argnums=(0, 1))(layer, x)

    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-6)
    (g_ours, gx_ours), (g_ref, gx_ref) = grads(ours), grads(ref)
    np.testing.assert_allclose(np.asarray(gx_ours), np.asarray(gx_ref), rtol=1e-5, atol=1e-5)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(np.asarray(getattr(g_ours, name)[...]), np.asarray(getattr(g_ref, name)[...]),
                                   rtol=1e-5, atol=1e-5, err_msg=name)
    def backward_hlo(layer):
        graphdef, state = nnx.split(layer)
        loss = lambda s, v: jnp.sum(nnx.merge(graphdef, s)(v))  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x).compile().as_text()

    assert "wrapped_convolution" not in backward_hlo(ours)
    assert stride == 1 or "wrapped_convolution" in backward_hlo(ref)  # what the check would catch


@pytest.mark.parametrize("setting", [{"padding": "VALID"}, {"kernel_dilation": 2}, {"use_bias": False}])
def test_transposed_conv_refuses_settings_its_gradient_does_not_cover(setting):
    with pytest.raises(ValueError, match="SAME padding, no kernel dilation, no mask and a bias"):
        ConvTranspose(4, 3, (3, 3), strides=2, **{"padding": "SAME", **setting}, rngs=rngs(5))


MATMUL_SIDE = math.isqrt(MATMUL_MAX_PIXELS)  # 8: an 8x8 output map is the largest matmul'd


def test_larger_maps_keep_the_convolution():
    layer = conv2d(3, 4, 3, 1, dtype=jnp.float32, rngs=rngs(3))
    x = jnp.zeros((1, MATMUL_SIDE + 1, MATMUL_SIDE + 1, 3))
    primitives = {e.primitive.name for e in jax.make_jaxpr(lambda v: layer(v))(x).jaxpr.eqns}
    assert "conv_general_dilated" in primitives and "dot_general" not in primitives


def test_plain_convolutions_context_keeps_the_convolution_and_restores_the_matmul_after():
    layer = conv2d(3, 4, 3, 1, dtype=jnp.float32, rngs=rngs(3))
    x = jnp.zeros((1, 4, 4, 3))

    def primitives():
        return {e.primitive.name for e in jax.make_jaxpr(lambda v: layer(v))(x).jaxpr.eqns}

    with plain_convolutions():
        with plain_convolutions(False):  # an inner "no" does not undo an outer "yes"
            assert "conv_general_dilated" in primitives()
    with plain_convolutions(False):
        assert "conv_general_dilated" not in primitives()
    assert "conv_general_dilated" not in primitives()


def test_flatten_is_channel_major_and_unflatten_inverts_it():
    x = rng_array((2, 3, 4, 5))
    flat = np.asarray(flatten_channel_major(jnp.asarray(x)))
    np.testing.assert_array_equal(flat, x.transpose(0, 3, 1, 2).reshape(2, -1))
    back = np.asarray(unflatten_channel_major(jnp.asarray(flat), 3, 4, 5))
    np.testing.assert_array_equal(back, flat.reshape(2, 5, 3, 4).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(back, x)


def test_pixel_norm():
    x = rng_array((3, 50)) * 4 - 2
    ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(pixel_norm(jnp.asarray(x))), ref, rtol=1e-5)


def test_blocks_match_numpy():
    x = rng_array((2, 8, 8, 4)) - 0.5
    kw = dict(dtype=jnp.float32, rngs=rngs(2))
    down, up, res = Downscale(4, 6, **kw), Upscale(4, 3, **kw), ResidualBlock(4, **kw)
    np.testing.assert_allclose(np.asarray(down(jnp.asarray(x))),
                               np_leaky(np_conv(x, *conv_params(down.conv), 2), 0.1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(up(jnp.asarray(x))),
                               np_depth_to_space(np_leaky(np_conv(x, *conv_params(up.conv)), 0.1)),
                               atol=1e-5)
    inner = np_leaky(np_conv(x, *conv_params(res.conv1)), 0.2)
    ref = np_leaky(x + np_conv(inner, *conv_params(res.conv2)), 0.2)
    np.testing.assert_allclose(np.asarray(res(jnp.asarray(x))), ref, atol=1e-5)


# ---- numerics of a real tiny model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_runs():
    """Forward outputs of tiny LIAE (fp32, and bf16 with the same weights) and DF models."""
    src, dst = jnp.asarray(rng_array((2, 32, 32, 3), 1)), jnp.asarray(rng_array((2, 32, 32, 3), 2))
    other_src = jnp.asarray(rng_array((2, 32, 32, 3), 3))

    def run(model, state):
        graphdef, _ = nnx.split(model)
        forward = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))
        swap = jax.jit(lambda s, b: nnx.merge(graphdef, s).swap(b))
        no_swap = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b, swap=False))
        return dict(model=model, out=forward(state, src, dst), out_no_swap=no_swap(state, src, dst),
                    out_other_src=forward(state, other_src, dst), swap=swap(state, dst))

    runs = {}
    for kind, archi in [("liae", "liae-ud"), ("df", "df-ud")]:
        model = SAEHD(tiny_model_cfg(archi), rngs=rngs())
        runs[kind] = run(model, nnx.state(model))
    bf16 = nnx.eval_shape(lambda: SAEHD(tiny_model_cfg("liae-ud"), rngs=nnx.Rngs(0),
                                        dtype=jnp.bfloat16))
    runs["liae_bf16"] = run(bf16, nnx.state(runs["liae"]["model"]))
    return runs


def _glorot_limit(kernel: np.ndarray) -> float:
    receptive = math.prod(kernel.shape[:-2])
    return math.sqrt(6.0 / (receptive * (kernel.shape[-2] + kernel.shape[-1])))


def test_glorot_uniform_kernels_and_zero_biases(tiny_runs):
    params = nnx.state(tiny_runs["liae"]["model"], nnx.Param)
    checked = 0
    for path, variable in nnx.to_flat_state(params):
        value = np.asarray(variable[...])
        if path[-1] == "bias":
            assert not value.any(), path
            continue
        limit = _glorot_limit(value)
        assert np.abs(value).max() <= limit, path
        if value.size >= 4000:  # std estimate within ~1.1%: the 5% bound is > 4 sigma
            assert abs(value.std() / (limit / math.sqrt(3)) - 1) < 0.05, path
            checked += 1
    assert checked >= 10


def test_outputs_are_sigmoid_float32(tiny_runs):
    for out in tiny_runs["liae"]["out"].values():
        assert out.dtype == jnp.float32
        assert 0 < float(out.min()) and float(out.max()) < 1


def test_bf16_compute_stays_close_and_keeps_fp32_params(tiny_runs):
    model = tiny_runs["liae_bf16"]["model"]  # built abstractly: these dtypes are what init makes
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        np.dtype(np.float32)}
    for name, ref in tiny_runs["liae"]["out"].items():
        got = tiny_runs["liae_bf16"]["out"][name]
        assert got.dtype == jnp.float32
        diff = float(jnp.abs(got - ref).max())
        assert 0 < diff < 0.01, f"{name}: bf16 differs from fp32 by {diff}"  # measured <= 3e-4


@pytest.mark.parametrize("kind", ["liae", "df"])
def test_swap_path_and_wiring(kind, tiny_runs):
    run = tiny_runs[kind]
    out, other = run["out"], run["out_other_src"]
    np.testing.assert_allclose(run["swap"][0], out["pred_src_dst"], atol=1e-6)
    np.testing.assert_allclose(run["swap"][1], out["pred_src_dstm"], atol=1e-6)
    # learned-dst: the training forward decodes dst's own code; swap() must give the same mask.
    np.testing.assert_allclose(run["swap"][2], out["pred_dst_dstm"], atol=1e-6)
    # dst reconstructions and the swap depend on dst alone; src->src changes with src.
    for name in ("pred_dst_dst", "pred_dst_dstm", "pred_src_dst", "pred_src_dstm"):
        np.testing.assert_allclose(other[name], out[name], atol=1e-6)
    assert float(jnp.abs(other["pred_src_src"] - out["pred_src_src"]).max()) > 1e-4
    # swap=False (the training step without style losses) leaves the swap out, nothing else.
    assert sorted(run["out_no_swap"]) == ["pred_dst_dst", "pred_dst_dstm", "pred_src_src", "pred_src_srcm"]
    for name, value in run["out_no_swap"].items():
        np.testing.assert_allclose(value, out[name], atol=1e-6)


# ---- FLOPs ----------------------------------------------------------------------------------------

def test_conv_and_dense_flops_formula():
    conv = nnx.eval_shape(lambda: conv2d(3, 8, 5, 2, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    (op,), out = module_flops(conv, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert out.shape == (2, 16, 16, 8)
    assert op.flops == 2 * (2 * 16 * 16) * 3 * 8 * 5 * 5
    linear = nnx.eval_shape(lambda: dense(40, 7, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    (op,), _ = module_flops(linear, jax.ShapeDtypeStruct((3, 40), jnp.float32))
    assert op.flops == 2 * 3 * 40 * 7


@pytest.mark.parametrize("archi", ["liae-ud", "df-udt", "liae-t", "df"])
@pytest.mark.parametrize("swap", [False, True])
def test_step_flops_add_up_to_the_traced_forward(archi, swap):
    cfg, batch = tiny_model_cfg(archi, 64), 3
    flops = step_flops(cfg, batch, swap=swap)
    face = jax.ShapeDtypeStruct((batch, 64, 64, 3), jnp.float32)
    graphdef, state = nnx.split(abstract_model(cfg))
    traced, _ = traced_flops(lambda s, a, b: nnx.merge(graphdef, s)(a, b, swap=swap), state, face, face)
    assert flops["forward"] == sum(op.flops for op in traced) == sum(flops["components"].values())
    assert flops["train_step"] == 3 * flops["forward"]
    decoder = flops["per_sample"]["decoder" if archi.startswith("liae") else "decoder_src"]
    assert step_flops(cfg, batch, swap=True)["forward"] - step_flops(cfg, batch)["forward"] == batch * decoder


def test_forward_flops_match_xla_cost_analysis():
    """XLA counts only kernel taps that land inside the image (not the zero padding) and adds the
    element-wise ops, so at 128 px our count is a few % above it (measured 1.064)."""
    cfg, batch = tiny_model_cfg("liae-ud", 128), 2
    graphdef, state = nnx.split(abstract_model(cfg))
    face = jax.ShapeDtypeStruct((batch, 128, 128, 3), jnp.float32)
    compiled = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b)).lower(state, face, face).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ratio = step_flops(cfg, batch, swap=True)["forward"] / cost["flops"]
    assert 1.0 <= ratio <= 1.15, ratio
