"""Where a side's faces come from: resident on the devices, or streamed from the faceset.

Both sources answer `fetch(ids)` for a global batch of face indices (the same on every process)
with the same dict of batch-sharded jax.Arrays, bit for bit:
  faces uint8 [B,S,S,3], masks uint8 [B,S,S,1], eyes_mouth_masks uint8 [B,S,S,1],
  base_matrices float32 [B,2,3] (faceset-face pixels -> model-face pixels), sample_ids int32 [B].
A resident faceset is uploaded once, replicated, and each batch is a jitted gather on the
devices; a streamed one reads just this process's rows with one TensorStore batch read per call.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from engine import parallel
from preprocessing.align import image_to_face_matrix
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset

IMAGE_KEYS = ("faces", "masks", "eyes_mouth_masks")


def image_arrays(fs: Faceset) -> dict[str, str]:
    """Batch key -> faceset array; XSeg masks, when the faceset has them, replace the hull masks."""
    names = {"faces": "faces",
             "masks": "xseg_masks" if "xseg_masks" in fs.array_names else "masks",
             "eyes_mouth_masks": "eyes_mouth_masks"}
    missing = [name for name in [*names.values(), "landmarks"] if name not in fs.array_names]
    if missing:
        raise UserError(f"{fs.path}: the faceset lacks the arrays {missing} that training needs")
    return names


def device_bytes(fs: Faceset) -> int:
    """Device bytes of the image arrays plus base matrices if the whole faceset were resident."""
    per_face = fs.size * fs.size * (3 + 1 + 1) + 2 * 3 * 4
    return fs.count * per_face


def base_matrices(fs: Faceset, model_face_type: FaceType, resolution: int) -> np.ndarray:
    """float32 [N, 2, 3]: each stored face's pixels -> the model's face type and resolution.

    image_to_face_matrix fed the face-space landmarks gives exactly this re-crop (as DFL's sample
    processor does); computed once at load on the host (~0.2 ms per face).
    """
    landmarks = fs.to_numpy("landmarks")
    out = np.empty((fs.count, 2, 3), np.float32)
    for i, lm in enumerate(landmarks):
        try:
            out[i] = image_to_face_matrix(lm, resolution, model_face_type)
        except ValueError as e:
            raise UserError(f"{fs.path}: face {i} has unusable landmarks ({e})") from None
    return out


class ResidentArrays:
    """Host arrays uploaded once, replicated on every device; `fetch(ids)` gathers a batch there."""

    def __init__(self, host: dict[str, np.ndarray], mesh: Mesh):
        self._arrays = parallel.host_to_global(host, parallel.replicated(mesh))
        self.ids_sharding = parallel.batch_sharding(mesh)  # batch rows across the data axis
        self._gather = jax.jit(_gather_rows, out_shardings=self.ids_sharding)

    def fetch(self, ids: np.ndarray) -> dict[str, jax.Array]:
        local = ids[parallel.local_batch_slice(self.ids_sharding, len(ids))].astype(np.int32)
        return self._gather(self._arrays, parallel.host_to_global(local, self.ids_sharding))


class ResidentSource(ResidentArrays):
    """The whole faceset replicated on every device; batches are gathered there by index."""

    mode = "resident"

    def __init__(self, fs: Faceset, matrices: np.ndarray, mesh: Mesh):
        # A cache-less handle: read once, so TensorStore must not keep a second copy in RAM.
        once = Faceset.open(fs.path, cache_bytes=0)
        host = {key: once.to_numpy(name) for key, name in image_arrays(fs).items()}
        host["base_matrices"] = matrices
        super().__init__(host, mesh)


class StreamedSource:
    """Reads this process's rows of each batch from the faceset and assembles the global array."""

    mode = "streamed"

    def __init__(self, fs: Faceset, matrices: np.ndarray, mesh: Mesh):
        self._fs = fs
        self._names = image_arrays(fs)
        self._matrices = matrices
        self._sharding = parallel.batch_sharding(mesh)

    def fetch(self, ids: np.ndarray) -> dict[str, jax.Array]:
        local = ids[parallel.local_batch_slice(self._sharding, len(ids))]
        rows = self._fs.read_many(list(self._names.values()), local)
        host = {key: rows[name] for key, name in self._names.items()}
        host["base_matrices"] = self._matrices[local]
        host["sample_ids"] = local.astype(np.int32)
        return parallel.host_to_global(host, self._sharding)


def _gather_rows(arrays: dict[str, jax.Array], ids: jax.Array) -> dict[str, jax.Array]:
    # "clip" skips the out-of-range masking of the default mode: ids are always in range.
    batch = {key: jnp.take(value, ids, axis=0, mode="clip") for key, value in arrays.items()}
    batch["sample_ids"] = ids
    return batch
