"""SAEHD's two discriminators in Flax NNX (DFL_SPEC §3.3, §3.4): the UNet patch GAN and the
true-face code discriminator.

Both return raw logits (float32); the losses (sigmoid cross-entropy) live in engine/losses.py.
Layers follow the conventions of engine/models/layers.py (DFL's symmetric "SAME" padding,
Glorot-uniform kernels, zero biases, float32 parameters, compute in `dtype`).

UNet patch discriminator, with c_{-1} = base and c_i = min(base·2^(i+1), 512) for the n encoder
levels chosen by `patch_layers`, has (3x3 kernels, input channels `in_ch`)

    P = (in_ch + 1)·c_{-1}                                     1x1 in_conv
      + Σ_i (9·c_{i-1}·c_i + c_i)                               encoder convs
      + Σ_i (9·m_i·c_i·c_{i-1} + c_{i-1}),  m_i = 2 (1 for i = n-1)   decoder transposed convs
      + (c_{n-1} + 1) + (c_{n-1}² + c_{n-1})                    center_out, center_conv
      + (2·c_{-1} + 1)                                          out_conv

(`unet_patch_param_count`); at DFL's default (res 128, patch 16, base 16, RGB) that is 233,650.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from engine.models.layers import ConvTranspose, conv2d

GAN_SLOPE = 0.2  # leaky ReLU slope inside the patch discriminator
CODE_SLOPE = 0.1  # and inside the code discriminator
MAX_PATCH_LAYERS = 9
MAX_PATCH_CHANNELS = 512
CODE_BASE_CHANNELS = 256


def receptive_field(strides: tuple[int, ...]) -> int:
    """Receptive field of a stack of 3x3 convs with these strides."""
    field, step = 3, strides[0]
    for stride in strides[1:]:
        field += 2 * step
        step *= stride
    return field


def patch_layers(patch_size: int) -> tuple[int, ...]:
    """Strides of the 3x3 conv stack (first stride 2, then 1 or 2) whose receptive field is the
    closest to `patch_size` (the smaller one on a tie); among stacks with that field, the fewest
    layers and then the most striding (DFL's architecture search)."""
    best: dict[int, tuple[int, int, tuple[int, ...]]] = {}
    for n in range(1, MAX_PATCH_LAYERS + 1):
        for rest in itertools.product((1, 2), repeat=n - 1):
            strides = (2,) + rest
            key = (n, -sum(strides), strides)
            field = receptive_field(strides)
            if field not in best or key < best[field]:
                best[field] = key
    field = min(sorted(best), key=lambda f: abs(f - patch_size))
    return best[field][2]


def level_channels(base: int, levels: int) -> list[int]:
    """[c_{-1}, c_0, ..., c_{n-1}]: base, then min(base·2^(i+1), 512)."""
    return [base] + [min(base * 2 ** (i + 1), MAX_PATCH_CHANNELS) for i in range(levels)]


def unet_patch_param_count(patch_size: int, base: int, in_ch: int = 3) -> int:
    """The module docstring's closed form, for the parameter-count test."""
    c = level_channels(base, len(patch_layers(patch_size)))  # c[i + 1] is c_i
    n = len(c) - 1
    total = (in_ch + 1) * c[0] + (c[n] + 1) + (c[n] ** 2 + c[n]) + (2 * c[0] + 1)
    for i in range(n):
        m = 1 if i == n - 1 else 2
        total += 9 * c[i] * c[i + 1] + c[i + 1] + 9 * m * c[i + 1] * c[i] + c[i]
    return total


class UNetPatchDiscriminator(nnx.Module):
    """Image [B,H,W,C] -> (center logits [B,H/s,W/s,1], full-resolution logits [B,H,W,1]).

    An encoder of 3x3 convs (strides from `patch_layers`) judges patches of about `patch_size`
    pixels at its centre; a mirrored decoder of transposed convs with U-Net skips judges every
    pixel. H and W must be multiples of the encoder's total stride.
    """

    def __init__(self, patch_size: int, base: int, in_ch: int = 3, *, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.strides = patch_layers(patch_size)
        c = level_channels(base, len(self.strides))
        n, kw = len(self.strides), dict(dtype=dtype, rngs=rngs)
        self.in_conv = conv2d(in_ch, c[0], 1, **kw)
        self.convs = nnx.List([conv2d(c[i], c[i + 1], 3, s, **kw) for i, s in enumerate(self.strides)])
        # Decoder, deepest level first: level i maps c_i (2·c_i after a skip concat) back to c_{i-1}.
        self.upconvs = nnx.List([
            ConvTranspose((1 if i == n - 1 else 2) * c[i + 1], c[i], (3, 3), strides=s, padding="SAME",
                          transpose_kernel=True, kernel_init=nnx.initializers.glorot_uniform(),
                          bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                          param_dtype=jnp.float32, rngs=rngs)
            for i, s in reversed(list(enumerate(self.strides)))])
        self.center_out = conv2d(c[n], 1, 1, **kw)
        self.center_conv = conv2d(c[n], c[n], 1, **kw)
        self.out_conv = conv2d(2 * c[0], 1, 1, **kw)
        self.dtype = dtype

    def total_stride(self) -> int:
        out = 1
        for s in self.strides:
            out *= s
        return out

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jax.nn.leaky_relu(self.in_conv(x.astype(self.dtype)), GAN_SLOPE)
        skips = []
        for conv in self.convs:
            skips.append(x)
            x = jax.nn.leaky_relu(conv(x), GAN_SLOPE)
        center = self.center_out(x)
        x = jax.nn.leaky_relu(self.center_conv(x), GAN_SLOPE)
        for upconv, skip in zip(self.upconvs, reversed(skips)):
            x = jnp.concatenate([skip, jax.nn.leaky_relu(upconv(x), GAN_SLOPE)], axis=-1)
        return center.astype(jnp.float32), self.out_conv(x).astype(jnp.float32)


class CodeDiscriminator(nnx.Module):
    """Inter code [B,r,r,C] -> logits map: 1 + r//8 stride-2 convs (k=4 first, then k=3) with
    256·min(2^i, 8) channels and leaky(0.1), then a 1x1 conv to one channel (true face, DF only)."""

    def __init__(self, in_ch: int, code_res: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        widths = [CODE_BASE_CHANNELS * min(2 ** i, 8) for i in range(1 + code_res // 8)]
        kw = dict(dtype=dtype, rngs=rngs)
        self.convs = nnx.List([conv2d(cin, cout, 4 if i == 0 else 3, 2, **kw)
                               for i, (cin, cout) in enumerate(zip([in_ch] + widths[:-1], widths))])
        self.out_conv = conv2d(widths[-1], 1, 1, **kw)
        self.dtype = dtype

    def __call__(self, z: jax.Array) -> jax.Array:
        x = z.astype(self.dtype)
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x), CODE_SLOPE)
        return self.out_conv(x).astype(jnp.float32)
