"""Building blocks of DFL's autoencoders in Flax NNX (DFL_SPEC §3.1 conventions, §3.3 blocks).

The conventions that make a faithful port live here and nowhere else:
* "SAME" conv = explicit symmetric zero pad of ((k-1)*dil+1)//2 then VALID (for even k this gives
  one pixel more than TF SAME);
* kernels Glorot-uniform, biases zero (TF's defaults, which DFL keeps);
* depth-to-space in TF's DCR channel order;
* feature maps are flattened channel-major (NCHW), so Dense weights index like DFL's.

Every layer takes `dtype`, the compute dtype (bf16 on GPU); parameters always stay float32.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_GLOROT = nnx.initializers.glorot_uniform()
_ZEROS = nnx.initializers.zeros_init()

# DFL's slopes: 0.1 after every Downscale/Upscale conv, 0.2 inside residual blocks.
UPDOWN_SLOPE = 0.1
RESIDUAL_SLOPE = 0.2


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Zeros DFL pads on each side for its "SAME" convs."""
    return ((kernel_size - 1) * dilation + 1) // 2


def conv_output_size(size: int, kernel_size: int, stride: int) -> int:
    """Output length of a DFL "SAME" conv: ceil(size/stride) for odd k, +1 for even k at stride 2."""
    return (size + 2 * same_padding(kernel_size) - kernel_size) // stride + 1


# Output maps up to this many pixels are convolved as patches @ kernel on a CPU (see Conv).
MATMUL_MAX_PIXELS = 64
_PLAIN_CONVOLUTIONS = contextvars.ContextVar("plain_convolutions", default=False)


@contextlib.contextmanager
def plain_convolutions(enabled: bool = True) -> Iterator[None]:
    """Convs traced inside (a `with` block, or a function it decorates) keep the convolution (no
    matmul path). For FSDP meshes, where the partitioner splits the matmul's contraction and
    all-reduces partial patch gradients, k*k times the input's bytes, and for rematerialised
    components, which exist to save memory and whose recomputed patches (k*k times the input)
    outweighed the saving on a CPU."""
    token = _PLAIN_CONVOLUTIONS.set(enabled or _PLAIN_CONVOLUTIONS.get())
    try:
        yield
    finally:
        _PLAIN_CONVOLUTIONS.reset(token)


def _patches(x: jax.Array, k: int, stride: int, pad: int) -> jax.Array:
    """[b, ho, wo, k*k*c]: the k*k shifted, strided views of x zero-padded by `pad`, tap-major like
    a [k, k, c, out] kernel's rows (a concatenation: XLA:CPU runs the 2-D matmul that follows far
    faster than an einsum over separate tap and channel axes)."""
    h, w = x.shape[1] + 2 * pad, x.shape[2] + 2 * pad
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return jnp.concatenate([xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
                            for i in range(k) for j in range(k)], axis=-1)


def conv_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """The same convolution (zero pad `pad`, square kernel [k,k,in,out]) as one matmul of the
    input's k*k shifted, strided views against the kernel; its gradient is slices and matmuls too."""
    patches = _patches(x, kernel.shape[0], stride, pad)
    rows = patches.reshape(-1, patches.shape[-1])
    return jnp.dot(rows, kernel.reshape(rows.shape[1], -1)).reshape(*patches.shape[:3], -1)


class Conv(nnx.Conv):
    """nnx.Conv that, on a CPU, computes small output maps (<= 8x8 pixels) with `conv_as_matmul`.

    XLA:CPU emits naive loops for convolutions on tiny maps instead of calling its conv kernels:
    the 3x3 conv on SAEHD's 2x2 inter map took 480 ms against 2.6 ms as a matmul, its gradient
    740 ms against 17 ms (benchmarks/RESULTS.md, 2026-11-27). Other backends and larger maps use
    the plain convolution. Same parameters, same result up to float rounding (tested).
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        (pad, _), _ = self.padding
        k = self.kernel_size[0]
        pixels = ((x.shape[1] + 2 * pad - k) // self.strides + 1) * ((x.shape[2] + 2 * pad - k) // self.strides + 1)
        if jax.default_backend() != "cpu" or pixels > MATMUL_MAX_PIXELS or _PLAIN_CONVOLUTIONS.get():
            return super().__call__(x)
        y = conv_as_matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.strides, pad)
        return y + self.bias[...].astype(self.dtype)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _same_conv(u: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    return lax.conv_general_dilated(u, kernel, strides, "SAME", dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose_same(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """lax.conv_transpose(x, kernel, strides, "SAME", transpose_kernel=True), kernel [k,k,out,in]:
    the adjoint of the "SAME" strided conv u -> conv(u, kernel). Its gradients are that conv
    (for x) and that conv's kernel gradient (for the kernel), which compile to fast kernels. XLA:CPU
    runs the transposed conv's own kernel gradient as a naive loop: 58 of the 67 ms of the GAN
    discriminator's forward and backward at batch 8, 64 px (benchmarks/RESULTS.md, 2026-11-27)."""
    return lax.conv_transpose(x, kernel, strides, "SAME", dimension_numbers=_NHWC, transpose_kernel=True)


def _conv_transpose_fwd(x, kernel, strides):
    return conv_transpose_same(x, kernel, strides), (x, kernel)


def _conv_transpose_bwd(strides, saved, dy):
    x, kernel = saved
    dx, kernel_vjp = jax.vjp(lambda k: _same_conv(dy, k, strides), kernel)
    return dx, kernel_vjp(x)[0]


conv_transpose_same.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class ConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose ("SAME" padding, undilated, with bias) through `conv_transpose_same`, for
    its fast gradient; same parameters and, up to float rounding, the same values (tested)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (self.padding != "SAME" or self.kernel_dilation not in (None, 1, (1, 1)) or self.mask is not None
                or self.bias is None):
            raise ValueError("layers.ConvTranspose takes SAME padding, no kernel dilation, no mask and a bias")

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        if not self.transpose_kernel:  # lax flips and swaps a transposed kernel: undo that here
            kernel = jnp.swapaxes(jnp.flip(kernel, (0, 1)), 2, 3)
        strides = self.strides if isinstance(self.strides, tuple) else (self.strides, self.strides)
        return conv_transpose_same(x.astype(self.dtype), kernel, strides) + self.bias[...].astype(self.dtype)


def conv2d(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, *,
           dtype: jnp.dtype, rngs: nnx.Rngs) -> Conv:
    """A conv with DFL's padding and initialisation (NHWC, kernel [k,k,in,out])."""
    p = same_padding(kernel_size)
    return Conv(in_ch, out_ch, (kernel_size, kernel_size), strides=stride,
                padding=((p, p), (p, p)), kernel_init=_GLOROT, bias_init=_ZEROS,
                dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def dense(in_features: int, out_features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A linear layer with DFL's initialisation. Feed it `flatten_channel_major` output."""
    return nnx.Linear(in_features, out_features, kernel_init=_GLOROT, bias_init=_ZEROS,
                      dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def flatten_channel_major(x: jax.Array) -> jax.Array:
    """NHWC [B,H,W,C] -> [B, C*H*W] in NCHW order, as DFL flattens before its Dense layers."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def unflatten_channel_major(x: jax.Array, height: int, width: int, channels: int) -> jax.Array:
    """[B, C*H*W] read as (C,H,W), DFL's reshape_4D, back to NHWC."""
    return jnp.transpose(x.reshape(x.shape[0], channels, height, width), (0, 2, 3, 1))


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
    """TF's DCR order: out[b*h+i, b*w+j, c] = in[h, w, (b*i+j)*C + c]."""
    n, h, w, c = x.shape
    out_c = c // (block * block)
    x = x.reshape(n, h, w, block, block, out_c)
    return jnp.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(n, h * block, w * block, out_c)


def pixel_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x * rsqrt(mean(x^2, last axis) + eps); the mean is taken in float32 so bf16 cannot overflow it."""
    x32 = x.astype(jnp.float32)
    scale = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * scale).astype(x.dtype)


class Downscale(nnx.Module):
    """conv k x k stride 2 -> leaky ReLU(0.1): halves the resolution."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5, *,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv = conv2d(in_ch, out_ch, kernel_size, 2, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.leaky_relu(self.conv(x), UPDOWN_SLOPE)


class DownscaleBlock(nnx.Module):
    """`n` Downscales with ch * min(2^i, 8) channels: the default SAEHD encoder body."""

    def __init__(self, in_ch: int, ch: int, n: int = 4, kernel_size: int = 5, *,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        widths = [ch * min(2 ** i, 8) for i in range(n)]
        self.downs = nnx.Sequential(*[
            Downscale(cin, cout, kernel_size, dtype=dtype, rngs=rngs)
            for cin, cout in zip([in_ch] + widths[:-1], widths)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.downs(x)


class Upscale(nnx.Module):
    """conv 3x3 to 4*out channels -> leaky ReLU(0.1) -> depth-to-space x2: doubles the resolution."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, *,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv = conv2d(in_ch, 4 * out_ch, kernel_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return depth_to_space(jax.nn.leaky_relu(self.conv(x), UPDOWN_SLOPE))


class ResidualBlock(nnx.Module):
    """conv -> leaky(0.2) -> conv, then leaky(0.2)(input + that)."""

    def __init__(self, ch: int, kernel_size: int = 3, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv1 = conv2d(ch, ch, kernel_size, dtype=dtype, rngs=rngs)
        self.conv2 = conv2d(ch, ch, kernel_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(jax.nn.leaky_relu(self.conv1(x), RESIDUAL_SLOPE))
        return jax.nn.leaky_relu(x + y, RESIDUAL_SLOPE)
