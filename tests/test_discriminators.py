"""The GAN and true-face discriminators (DFL_SPEC §3.3, §3.4): DFL's architecture search, the
parameter count at DFL's defaults against a closed form and a hand count, shapes, the transposed
conv against the gradient of a TF-"SAME" conv, and the option checks."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import saehd
from engine.models.discriminators import (CodeDiscriminator, UNetPatchDiscriminator, patch_layers,
                                          receptive_field, unet_patch_param_count)
from engine.train_step import code_resolution, validate_critic_options
from preprocessing.errors import UserError


def _params(module: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _reference_search(patch: int, max_layers: int = 9) -> tuple[int, ...]:
    """Brute force in float64-free integers: every stack, receptive field by unrolling the
    recurrence rf_{l} = rf_{l-1} + (k-1)·Π strides before l, ranked as the spec says."""
    stacks = []
    for n in range(1, max_layers + 1):
        for rest in itertools.product((1, 2), repeat=n - 1):
            strides = (2,) + rest
            rf, jump = 1, 1
            for s in strides:
                rf, jump = rf + 2 * jump, jump * s
            stacks.append((abs(rf - patch), rf, n, -sum(strides), strides))
    return min(stacks)[-1]


@pytest.mark.parametrize("patch,layers,field", [(16, 3, 15), (8, 2, 7), (32, 4, 31), (64, 5, 63)])
def test_patch_search_matches_the_spec_examples(patch, layers, field):
    strides = patch_layers(patch)
    assert (len(strides), receptive_field(strides)) == (layers, field)
    assert strides == (2,) * layers  # fewest layers, then most striding


@pytest.mark.parametrize("patch", [3, 4, 5, 6, 9, 12, 20, 24, 40, 80, 100, 128, 200, 640])
def test_patch_search_matches_brute_force(patch):
    assert patch_layers(patch) == _reference_search(patch)


def test_unet_parameter_count_at_dfl_defaults():
    """res 128 -> patch 16 -> 3 stride-2 levels, base 16: c = 16 | 32, 64, 128.
    in 3·16+16 = 64; convs 9·16·32+32 = 4,640, 9·32·64+64 = 18,496, 9·64·128+128 = 73,856;
    upconvs 9·128·64+64 = 73,792, 9·128·32+32 = 36,896, 9·64·16+16 = 9,232;
    center_out 129, center_conv 16,512, out_conv 33: 233,650 in all."""
    by_hand = 64 + 4640 + 18496 + 73856 + 73792 + 36896 + 9232 + 129 + 16512 + 33
    module = nnx.eval_shape(lambda: UNetPatchDiscriminator(16, 16, 3, rngs=nnx.Rngs(0)))
    assert _params(module) == unet_patch_param_count(16, 16) == by_hand == 233_650


@pytest.mark.parametrize("patch,base", [(8, 4), (32, 64), (100, 512)])
def test_unet_parameter_count_formula_holds_elsewhere(patch, base):
    module = nnx.eval_shape(lambda: UNetPatchDiscriminator(patch, base, 3, rngs=nnx.Rngs(0)))
    assert _params(module) == unet_patch_param_count(patch, base)


def test_unet_outputs_center_and_full_resolution_logits():
    disc = UNetPatchDiscriminator(16, 8, 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
    center, full = disc(x)
    assert center.shape == (2, 4, 4, 1) and full.shape == (2, 32, 32, 1)
    assert center.dtype == full.dtype == jnp.float32
    assert float(jnp.std(full)) > 0 and float(jnp.std(center)) > 0


def test_transposed_conv_is_the_gradient_of_a_tf_same_conv():
    """TF's conv2d_transpose(SAME) is the input-gradient of conv2d(SAME) with the same kernel
    array (k, k, out, in); lax's "SAME" is TF's (pad 0 before, 1 after at stride 2, k 3)."""
    disc = UNetPatchDiscriminator(16, 4, 3, rngs=nnx.Rngs(1))
    upconv = disc.upconvs[0]  # deepest level (c = 4 | 8, 16, 32): 32 -> 16 channels, stride 2
    kernel = upconv.kernel[...]
    assert kernel.shape == (3, 3, 16, 32)
    y = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 5, 32)), jnp.float32)

    def conv(x):
        return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)

    _, vjp = jax.vjp(conv, jnp.zeros((2, 10, 10, 16), jnp.float32))
    expected = np.asarray(vjp(y)[0]) + np.asarray(upconv.bias[...])
    np.testing.assert_allclose(np.asarray(upconv(y)), expected, atol=1e-5)  # float32 sums of <= 9·32 terms


@pytest.mark.parametrize("archi,res,code_res,logits",
                         [("df-ud", 128, 8, 3), ("df", 128, 16, 3), ("df-udt", 256, 8, 3)])
def test_code_discriminator_shapes(archi, res, code_res, logits):
    """1 + r//8 stride-2 convs, the first k=4 giving n/2 + 1 (DFL's symmetric pad): r=8 -> 5 -> 3;
    r=16 -> 9 -> 5 -> 3."""
    cfg = saehd.get_config(archi)
    cfg.model.resolution = res
    assert code_resolution(cfg.model) == code_res
    disc = nnx.eval_shape(lambda: CodeDiscriminator(256, code_res, rngs=nnx.Rngs(0)))
    assert len(disc.convs) == 1 + code_res // 8
    out = jax.eval_shape(lambda z: CodeDiscriminator(256, code_res, rngs=nnx.Rngs(0))(z),
                         jax.ShapeDtypeStruct((2, code_res, code_res, 256), jnp.float32))
    assert out.shape == (2, logits, logits, 1)
    # 256, 512, ... channels: 4·4·256·256 + 256 for the first conv of a 256-channel code
    assert disc.convs[0].kernel.shape == (4, 4, 256, 256)


@pytest.mark.parametrize("field,value,message", [
    ("gan_power", 5.5, "gan_power=5.5: must be in [0, 5]"),
    ("gan_patch_size", 2, "gan_patch_size=2"),
    ("gan_dims", 1024, "gan_dims=1024"),
    ("face_style_power", -1.0, "face_style_power=-1.0"),
    ("bg_style_power", 101.0, "bg_style_power=101.0"),
    ("true_face_power", 0.01, "needs a df archi"),
])
def test_bad_options_are_refused_in_one_line(field, value, message):
    cfg = saehd.get_config("tiny")  # liae-ud: true face is refused
    cfg.train[field] = value
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        validate_critic_options(cfg)
    assert "\n" not in str(info.value)


def test_valid_options_pass():
    cfg = saehd.get_config("tiny-df")
    cfg.train.update(gan_power=0.1, gan_patch_size=16, gan_dims=16, true_face_power=0.01,
                     face_style_power=10.0, bg_style_power=10.0)
    validate_critic_options(cfg)
    cfg.train.gan_patch_size = 640  # 9 stride-2 levels do not divide 32 px
    with pytest.raises(UserError, match="does not divide"):
        validate_critic_options(cfg)
