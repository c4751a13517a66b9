"""XSeg masks for whole facesets (DFL_SPEC §2.4): the library behind `python -m engine.xseg_apply`.

Each face is re-cropped to the model's face type and resolution (a resize when the faceset has
the model's face type, else the affine between the two crops of the same landmarks), predicted,
warped back to the faceset's crop, binarised at 0.5 and stored as the `xseg_masks` array (uint8
0/255 [S,S,1]) through `preprocessing.faceset.edit.add_array`: the other arrays are not touched,
and an interrupted run leaves the faceset as it was. Training and merging then use these masks.

`predict_masks` is the jittable core. Kept apart from the CLI module so importing it defines no
absl flags (two CLI modules imported in one process would clash on flag names).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from engine.augment.geometry import invert_affine, resize_matrix, transform_points
from engine.augment.resample import pixel_grid, sample
from preprocessing.errors import UserError

MASK_ARRAY = "xseg_masks"


def predict_masks(model, faces: jax.Array, face_to_model: jax.Array | None = None) -> jax.Array:
    """Binary XSeg masks float32 {0, 1} [..., S, S, 1] for faces uint8 (or [0,1] float) [..., S, S, 3].

    `model` is an `engine.models.xseg.XSeg` (inside a jit: `nnx.merge(graphdef, params)`).
    `face_to_model` [..., 2, 3] maps face pixels to the model's crop pixels; None means the faces
    have the model's face type and are just resized. Pure and jittable.
    """
    lead, size = faces.shape[:-3], faces.shape[-2]
    flat = faces.reshape((-1,) + faces.shape[-3:])
    if jnp.issubdtype(flat.dtype, jnp.floating):
        flat = flat * 255.0
    res = model.resolution
    if face_to_model is None:
        matrices = jnp.broadcast_to(resize_matrix(size, res), (flat.shape[0], 2, 3))
    else:
        matrices = face_to_model.reshape(-1, 2, 3).astype(jnp.float32)

    def to_model(face, m):
        x, y = transform_points(invert_affine(m), *pixel_grid(res, res))
        return jnp.clip(sample(face, x, y, method="cubic", border="replicate") / 255.0, 0.0, 1.0)

    def back(prob, m):
        x, y = transform_points(m, *pixel_grid(size, size))
        return sample(prob, x, y, method="linear", border="constant")

    crops = jax.vmap(to_model)(flat, matrices)
    probs = jax.nn.sigmoid(model(crops))
    masks = (jax.vmap(back)(probs, matrices) >= 0.5).astype(jnp.float32)
    return masks.reshape(lead + (size, size, 1))


def face_to_model_matrices(fs, model_face_type, resolution: int) -> np.ndarray | None:
    """None when the faceset has the model's face type (plain resize), else the per-face affines."""
    from engine.data.sources import base_matrices

    if fs.face_type == model_face_type:
        return None
    if "landmarks" not in fs.array_names:
        raise UserError(f"{fs.path}: face type {fs.face_type.dfl_name} differs from the model's "
                        f"{model_face_type.dfl_name} and the faceset lacks the 'landmarks' to re-crop")
    return base_matrices(fs, model_face_type, resolution)


def apply_xseg(workdir: str, faceset: str, batch_size: int = 32, progress: bool = True) -> int:
    """Writes xseg_masks for every face of `faceset`; returns the face count."""
    from flax import nnx
    from tqdm import tqdm

    from engine.xseg.model import load_trained
    from preprocessing.face_types import FaceType
    from preprocessing.faceset import Faceset
    from preprocessing.faceset.edit import add_array

    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size}: must be >= 1")
    if not os.path.isdir(faceset):
        raise UserError(f"{faceset}: no such faceset folder")
    fs = Faceset.open(faceset)
    graphdef, params, cfg = load_trained(workdir)
    matrices = face_to_model_matrices(fs, FaceType.from_flag(cfg.model.face_type), int(cfg.model.resolution))

    @jax.jit
    def predict(params, faces, m):
        masks = predict_masks(nnx.merge(graphdef, params), faces, m)
        return (masks * 255.0).astype(jnp.uint8)

    bar = tqdm(total=fs.count, unit="face", disable=not progress)

    def rows(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, fs.size, fs.size, 1), np.uint8)
        for s in range(start, stop, batch_size):
            e = min(s + batch_size, stop)
            ids = np.resize(np.arange(s, e), batch_size)  # a fixed shape: one compile
            m = None if matrices is None else matrices[ids]
            out[s - start:e - start] = np.asarray(predict(params, fs.read("faces", ids), m))[:e - s]
            bar.update(e - s)
        return out

    try:
        add_array(faceset, MASK_ARRAY, rows, overwrite=True)
    finally:
        bar.close()
    return fs.count
