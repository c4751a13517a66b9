"""Training preview: a PNG grid of faces and the model's reconstructions and swaps (DFL_SPEC §3.7).

Columns, left to right: src, src->src (src through the src decoder), dst, dst->dst, and the swap
(dst's face through the src decoder); one row per sample, at most `max_rows` (DFL shows
min(4, batch, 800 // res)). With `masks`, a second block of the same rows follows below with
each image multiplied by its mask, as DFL's masked preview does (DFL uses the target masks for
src and dst, the predicted masks for the reconstructions and pred_dst_mask * pred_src_mask for the
swap). The file is replaced atomically, so a viewer never shows a half-written PNG.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

COLUMNS = ("src", "src->src", "dst", "dst->dst", "dst->src")


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


Masks = np.ndarray | Sequence[np.ndarray] | None


def preview_grid(columns: Sequence[np.ndarray], masks: Masks = None,
                 max_rows: int = 4) -> np.ndarray:
    """The grid as RGB uint8 [rows*res (x2 with masks), len(columns)*res, 3].

    `columns` are float NHWC batches in [0, 1] of one shape (values outside are clipped); `masks`
    is one [N,H,W(,1)] batch for every column or one per column.
    """
    cols = [np.asarray(c, np.float32) for c in columns]
    shape = cols[0].shape
    if len(shape) != 4 or shape[-1] != 3 or any(c.shape != shape for c in cols):
        raise ValueError(f"preview images must all be [N,H,W,3]; got {[c.shape for c in cols]}")
    rows = min(max_rows, shape[0])
    blocks = [cols]
    if masks is not None:
        if not isinstance(masks, (list, tuple)):
            masks = [masks] * len(cols)
        mask_arrays = [np.asarray(m, np.float32).reshape(shape[:3] + (1,)) for m in masks]
        blocks.append([c * m for c, m in zip(cols, mask_arrays)])
    # Within a block: row r is sample r's images side by side; blocks stack vertically.
    grid = np.concatenate([np.concatenate([np.concatenate(list(c[:rows]), axis=0) for c in block],
                                          axis=1) for block in blocks], axis=0)
    return _to_uint8(grid)


def write_preview_grid(path_png: str | os.PathLike, src: np.ndarray, pred_src_src: np.ndarray,
                       dst: np.ndarray, pred_dst_dst: np.ndarray, pred_src_dst: np.ndarray,
                       masks: Masks = None,
                       max_rows: int = 4) -> None:
    """Writes the preview PNG (see the module docstring); inputs are float NHWC RGB in [0, 1]."""
    grid = preview_grid([src, pred_src_src, dst, pred_dst_dst, pred_src_dst], masks, max_rows)
    write_png_atomic(path_png, grid)


def write_png_atomic(path_png: str | os.PathLike, rgb: np.ndarray) -> None:
    """Writes uint8 RGB `rgb` as a PNG through a temporary file, so a viewer never sees half a file."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path_png}: PNG encoding failed")
    path = os.fspath(path_png)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(encoded.tobytes())
    os.replace(tmp, path)
