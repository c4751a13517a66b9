"""Linear colour transfers (DFL_SPEC §4.6 lct, mkl, mkl-m) and the masked pixel statistics they share.

Both map the recoloured image's pixels x (RGB, one row per pixel) by an affine map
x' = (x - mu_x) M^T + mu_y that carries x's mean and covariance onto those of the reference y,
then clip to [0, 1]. They differ in the choice of M among the maps with M C_x M^T = C_y:
* lct: M = Q_y Q_x^-1 with Q = symmetric square root of (C + 1e-5 I) (a PCA-style match);
* mkl: the Monge-Kantorovich (Pitié) map, the symmetric one that moves pixels the least:
  T = C_x^-1/2 (C_x^1/2 C_y C_x^1/2)^1/2 C_x^-1/2. C_x's eigenvalues are clipped at float32 eps
  (DFL: float64 eps; either way only a flat channel reaches it). The middle square root is taken
  as U S U^T from the SVD U S V^T of C_x^1/2 C_y^1/2, not from the eigenvalues of the product:
  those are products of variances (down to ~1e-8 on real faces, below float32 eps) whose float32
  eigendecomposition loses percents, while the SVD keeps its singular values to ~1e-4.

Covariances are population covariances (divided by the pixel count); the ratio-like maps hardly
depend on that choice. Masks: DFL's masked modes multiply the images by the binary area mask,
so the zeros outside it enter the statistics; here, as in rct, only pixels with mask >= 0.5 are
counted (an empty mask counts every pixel), and the map is applied to every pixel.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs
_LCT_REGULARISER = 1e-5
_MKL_EPS = float(np.finfo(np.float32).eps)


def pixel_weights(mask: jnp.ndarray | None, image_shape: tuple[int, ...]) -> jnp.ndarray:
    """Binary weights [..., H, W] for images of `image_shape` [..., H, W, C]: 1 where mask >= 0.5
    (every pixel without a mask, or where the mask selects nothing)."""
    if mask is None:
        return jnp.ones(image_shape[:-1], jnp.float32)
    weight = (mask.reshape(image_shape[:-1]) >= 0.5).astype(jnp.float32)
    empty = jnp.sum(weight, axis=(-2, -1), keepdims=True) == 0
    return jnp.where(empty, 1.0, weight)


def weighted_moments(images: jnp.ndarray, weights: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Weighted channel mean [..., C] and population covariance [..., C, C] of [..., H, W, C] images."""
    images = images.astype(jnp.float32)
    count = jnp.sum(weights, axis=(-2, -1))[..., None]
    mean = jnp.einsum("...hwc,...hw->...c", images, weights, precision=jax.lax.Precision.HIGHEST) / count
    centred = images - mean[..., None, None, :]
    cov = jnp.einsum("...hwc,...hwd,...hw->...cd", centred, centred, weights,
                     precision=jax.lax.Precision.HIGHEST) / count[..., None]
    return mean, cov


def _symmetric_power(matrix: jnp.ndarray, power: float, floor: float) -> jnp.ndarray:
    """V diag(max(lambda, floor)^power) V^T of symmetric [..., C, C] matrices."""
    values, vectors = jnp.linalg.eigh(matrix)
    scaled = vectors * jnp.maximum(values, floor)[..., None, :] ** power
    return matmul(scaled, jnp.swapaxes(vectors, -1, -2))


def _apply_affine(images: jnp.ndarray, mean_x: jnp.ndarray, matrix: jnp.ndarray, mean_y: jnp.ndarray) -> jnp.ndarray:
    """(x - mu_x) M^T + mu_y for every pixel of [..., H, W, C] images (M [..., C, C] per image)."""
    centred = images.astype(jnp.float32) - mean_x[..., None, None, :]
    moved = jnp.einsum("...hwc,...dc->...hwd", centred, matrix, precision=jax.lax.Precision.HIGHEST)
    return moved + mean_y[..., None, None, :]


def lct_map(source: jnp.ndarray, target: jnp.ndarray, source_weights: jnp.ndarray,
            target_weights: jnp.ndarray) -> jnp.ndarray:
    """lct without the final clip, for any channel count (mix-m applies it to L alone)."""
    mean_x, cov_x = weighted_moments(source, source_weights)
    mean_y, cov_y = weighted_moments(target, target_weights)
    eye = _LCT_REGULARISER * jnp.eye(source.shape[-1], dtype=jnp.float32)
    matrix = matmul(_symmetric_power(cov_y + eye, 0.5, 0.0), _symmetric_power(cov_x + eye, -0.5, _LCT_REGULARISER))
    return _apply_affine(source, mean_x, matrix, mean_y)


def lct(
    source: jnp.ndarray,
    target: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Linear colour transfer of `source` [..., H, W, 3] toward `target`: x' = Q_y Q_x^-1 (x - mu_x) + mu_y,
    Q the symmetric square roots of the covariances + 1e-5 I; clipped to [0, 1]. Masks choose the
    pixels counted in the statistics (in-mask only)."""
    out = lct_map(source, target, pixel_weights(source_mask, source.shape), pixel_weights(target_mask, target.shape))
    return jnp.clip(out, 0.0, 1.0)


def mkl(
    source: jnp.ndarray,
    target: jnp.ndarray,
    source_mask: jnp.ndarray | None = None,
    target_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Monge-Kantorovich linear transfer (Pitié) of `source` [..., H, W, 3] toward `target`, clipped to
    [0, 1]. Masks (mkl-m) choose the pixels counted in the statistics (in-mask only)."""
    mean_x, cov_x = weighted_moments(source, pixel_weights(source_mask, source.shape))
    mean_y, cov_y = weighted_moments(target, pixel_weights(target_mask, target.shape))
    root_x = _symmetric_power(cov_x, 0.5, _MKL_EPS)
    inverse_root_x = _symmetric_power(cov_x, -0.5, _MKL_EPS)
    u, s, _ = jnp.linalg.svd(matmul(root_x, _symmetric_power(cov_y, 0.5, 0.0)))
    middle = matmul(u * s[..., None, :], jnp.swapaxes(u, -1, -2))
    matrix = matmul(matmul(inverse_root_x, middle), inverse_root_x)
    return jnp.clip(_apply_affine(source, mean_x, matrix, mean_y), 0.0, 1.0)
