"""DFL's XSeg segmentation U-Net (DFL_SPEC §2.1) in Flax NNX, at any resolution and base width.

Blocks: ConvBlock = conv 3x3 (bias) -> FRN -> TLU; UpConvBlock = transposed conv 3x3 stride 2
-> FRN -> TLU; BlurPool = binomial low-pass then stride 2. Input: RGB in [0, 1] (DFL feeds BGR;
our weights are trained here, so the project's RGB convention applies). Output: logits [B,R,R,1].

How the levels adapt to the resolution: DFL's table has 6 levels for 256 px, each halving the
size, so the dense bottleneck sees 4x4. A `resolution` R (a power of two >= 8) gets
L = log2(R / 4) levels: the first L rows of DFL's table (channels base*(1, 2, 4, 8, 8, 8),
convs (2, 2, 2, 3, 3, 3), blur filter sizes (4, 3, 2, 2, 2, 2)), so the bottleneck is always 4x4.
The bottleneck's hidden width is 16*base (DFL: 512 at base 32). Each decoder level i upsamples to
min(channels_i, 4*base) channels (DFL's 128-wide UpConvs at the three deepest levels), concatenates
skip x_i and runs as many convs as encoder level i, back to channels_i. R=256, base=32 is DFL's net.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.models.layers import ConvTranspose, conv2d, dense, flatten_channel_major, unflatten_channel_major

LEVEL_WIDTHS = (1, 2, 4, 8, 8, 8)  # channels per encoder level, in units of base
LEVEL_CONVS = (2, 2, 2, 3, 3, 3)
BLUR_SIZES = (4, 3, 2, 2, 2, 2)
BOTTLENECK = 4  # spatial size the dense layers see
DENSE_WIDTH = 16  # bottleneck hidden units, in units of base
UPCONV_CAP = 4  # widest UpConv output, in units of base
FRN_EPS = 1e-6


def num_levels(resolution: int) -> int:
    """Encoder levels that bring `resolution` down to the 4x4 bottleneck (6 at 256 px)."""
    levels = int(round(math.log2(resolution / BOTTLENECK))) if resolution > 0 else 0
    if resolution < 2 * BOTTLENECK or BOTTLENECK * 2 ** levels != resolution or levels > len(LEVEL_WIDTHS):
        raise ValueError(f"XSeg resolution must be a power of two from 8 to 256, got {resolution}")
    return levels


def binomial_taps(size: int) -> np.ndarray:
    """Normalised 1-D binomial filter of `size` taps (size 4: 1 3 3 1 / 8)."""
    taps = np.array([math.comb(size - 1, k) for k in range(size)], np.float32)
    return taps / taps.sum()


def blur_pool(x: jax.Array, size: int) -> jax.Array:
    """Anti-aliased stride-2 downsample of NHWC `x`: binomial filter with zero padding
    [floor((f-1)/2), ceil((f-1)/2)], as two separable strided passes (no depthwise conv, slow on CPU)."""
    taps = binomial_taps(size)
    before, after = (size - 1) // 2, size // 2
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (before, after)
        padded = jnp.pad(x, pad)
        out_len = (x.shape[axis] + 1) // 2
        terms = [jax.lax.slice_in_dim(padded, k, k + 2 * (out_len - 1) + 1, stride=2, axis=axis)
                 for k in range(size)]
        x = sum(float(t) * term for t, term in zip(taps, terms))
    return x


class FRN(nnx.Module):
    """Filter response normalisation + TLU: max(x / sqrt(mean_hw(x^2) + |eps|) * gamma + beta, tau)."""

    def __init__(self, channels: int):
        self.gamma = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.eps = nnx.Param(jnp.full((1,), FRN_EPS, jnp.float32))
        self.tau = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)  # the mean of squares overflows bf16 easily
        nu2 = jnp.mean(jnp.square(x32), axis=(1, 2), keepdims=True)
        y = x32 * jax.lax.rsqrt(nu2 + jnp.abs(self.eps[...])) * self.gamma[...] + self.beta[...]
        return jnp.maximum(y, self.tau[...]).astype(x.dtype)


class ConvBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv = conv2d(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        self.frn = FRN(out_ch)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.frn(self.conv(x))


class UpConvBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv = ConvTranspose(in_ch, out_ch, (3, 3), strides=(2, 2), padding="SAME",
                                  kernel_init=nnx.initializers.glorot_uniform(),
                                  bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                                  param_dtype=jnp.float32, rngs=rngs)
        self.frn = FRN(out_ch)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.frn(self.conv(x))


def _convs(in_ch: int, out_ch: int, n: int, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Sequential:
    return nnx.Sequential(*[ConvBlock(in_ch if i == 0 else out_ch, out_ch, dtype=dtype, rngs=rngs)
                            for i in range(n)])


class XSeg(nnx.Module):
    """The U-Net (see the module docstring). `__call__(x, pretrain=False)` -> logits."""

    def __init__(self, resolution: int = 256, base: int = 32, *, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.resolution, self.base = int(resolution), int(base)
        self.levels = num_levels(self.resolution)
        self.dtype = dtype
        widths = [base * w for w in LEVEL_WIDTHS[:self.levels]]
        self.encoder = nnx.List([
            _convs(3 if i == 0 else widths[i - 1], widths[i], LEVEL_CONVS[i], dtype=dtype, rngs=rngs)
            for i in range(self.levels)])
        flat = BOTTLENECK * BOTTLENECK * widths[-1]
        self.dense1 = dense(flat, DENSE_WIDTH * base, dtype=dtype, rngs=rngs)
        self.dense2 = dense(DENSE_WIDTH * base, flat, dtype=dtype, rngs=rngs)
        ups, decoder = [], []
        for i in range(self.levels):
            incoming = widths[min(i + 1, self.levels - 1)]  # the level below, or the bottleneck
            up = min(widths[i], UPCONV_CAP * base)
            ups.append(UpConvBlock(incoming, up, dtype=dtype, rngs=rngs))
            decoder.append(_convs(up + widths[i], widths[i], LEVEL_CONVS[i], dtype=dtype, rngs=rngs))
        self.ups, self.decoder = nnx.List(ups), nnx.List(decoder)
        self.out = conv2d(widths[0], 1, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, pretrain: bool = False) -> jax.Array:
        """x: RGB [B,R,R,3] in [0, 1] -> float32 logits [B,R,R,1]. `pretrain` zeroes every skip."""
        x = x.astype(self.dtype)
        skips = []
        for i, convs in enumerate(self.encoder):
            x = convs(x)
            skips.append(jnp.zeros_like(x) if pretrain else x)
            x = blur_pool(x, BLUR_SIZES[i])
        channels = x.shape[-1]
        x = self.dense2(self.dense1(flatten_channel_major(x)))
        x = unflatten_channel_major(x, BOTTLENECK, BOTTLENECK, channels)
        for i in reversed(range(self.levels)):
            x = self.decoder[i](jnp.concatenate([self.ups[i](x), skips[i]], axis=-1))
        return self.out(x).astype(jnp.float32)


def param_count(model: XSeg) -> int:
    """Number of trainable scalars."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
