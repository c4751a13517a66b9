"""XSeg training data: the labelled faces of one or more facesets, resident on the devices.

Which faces and which targets (DFL_SPEC §2.3):
* labelled faces (the `xseg_labelled` record == 1) train on their `xseg_labels`;
* with pseudo_labels="mesh" every other face trains on the faceset's own `masks` (the dense
  FaceMesh / landmark hull silhouette from extraction): the bootstrap without pretrained weights.
A faceset without the label arrays has no labelled faces.

XSeg training sets are small (dozens to a few thousand faces), so they are uploaded once,
replicated, and each batch is a jitted gather by index, sharded over the mesh's batch axes (the
SAEHD data layer's resident mode; streaming is left out). Facesets of different sizes are resized
on the host (bicubic) to the largest size once, with their re-crop matrices adjusted; the re-crop
to the model's face type and resolution happens on the device, inside the augmentation, from
`engine.data.sources.base_matrices`.

Each faceset's held-out faces are the last ceil(validation_fraction * n) of its selected faces
(`engine.data.sampler.split_validation`); training walks seeded shuffled epochs over the rest,
addressed by sample position so a resumed run continues with the same faces.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import jax
import numpy as np
from jax.sharding import Mesh

from engine import parallel
from engine.data.sampler import ShuffledEpochs, split_validation
from engine.data.sources import ResidentArrays, base_matrices
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset

_log = logging.getLogger(__name__)

LABELS, LABELLED, MESH_MASKS = "xseg_labels", "xseg_labelled", "masks"


@dataclass
class Selection:
    """The faces of one faceset that train XSeg, and their targets (uint8 0..255)."""

    path: str
    ids: np.ndarray  # int64 face indices
    targets: np.ndarray  # uint8 [n, S, S, 1]
    labelled: int  # how many of them carry real labels


def labelled_ids(fs: Faceset) -> np.ndarray:
    """Indices of faces with XSeg labels (none if the faceset lacks the label arrays)."""
    if LABELS not in fs.array_names or LABELLED not in fs.array_names:
        return np.zeros(0, np.int64)
    return np.flatnonzero(fs.to_numpy(LABELLED).reshape(fs.count) == 1).astype(np.int64)


def select(fs: Faceset, pseudo_labels: str) -> Selection:
    """Faces and targets of one faceset (see the module docstring)."""
    labelled = labelled_ids(fs)
    if pseudo_labels == "mesh":
        if MESH_MASKS not in fs.array_names:
            raise UserError(f"{fs.path}: pseudo_labels=mesh needs the faceset's 'masks' array, which it lacks")
        targets = fs.to_numpy(MESH_MASKS)
        if len(labelled):
            targets[labelled] = fs.read(LABELS, labelled)
        return Selection(fs.path, np.arange(fs.count, dtype=np.int64), targets, len(labelled))
    return Selection(fs.path, labelled, fs.read(LABELS, labelled) if len(labelled) else
                     np.zeros((0, fs.size, fs.size, 1), np.uint8), len(labelled))


def _resize_square(images: np.ndarray, size: int) -> np.ndarray:
    out = [cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC) for im in images]
    return np.stack([o if o.ndim == 3 else o[..., None] for o in out]) if out else images


def _resize_matrix(from_size: int, to_size: int) -> np.ndarray:
    """cv2.resize's pixel map between squares, as a 3x3 (see engine.augment.geometry)."""
    k = to_size / from_size
    return np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5], [0.0, 0.0, 1.0]])


class XsegData:
    """Resident training and validation faces for XSeg (see the module docstring).

        data = XsegData(paths, cfg, mesh)
        batch = data.next_batch()     # faces, targets, base_matrices, sample_ids (batch-sharded)
        val = data.validation_batch() # all held-out faces, padded to a multiple of the batch
    """

    def __init__(self, paths: Sequence[str], cfg: Any, mesh: Mesh):
        if not paths:
            raise UserError("give at least one --faceset")
        pseudo = cfg.pseudo_labels
        if pseudo not in ("none", "mesh"):
            raise UserError(f"--config.pseudo_labels={pseudo!r}: choose none or mesh")
        fraction = float(cfg.data.validation_fraction)
        if not 0.0 <= fraction < 1.0:
            raise UserError(f"--config.data.validation_fraction={fraction}: must be in [0, 1)")
        self.batch_size = int(cfg.train.batch_size)
        shards = parallel.batch_shards(mesh)
        if self.batch_size < 1 or self.batch_size % shards:
            raise UserError(f"--config.train.batch_size={self.batch_size}: must be a positive multiple "
                            f"of the {shards} devices the batch is split over")
        face_type = FaceType.from_flag(cfg.model.face_type)
        resolution = int(cfg.model.resolution)
        facesets = []
        for path in paths:
            if not os.path.isdir(path):
                raise UserError(f"{path}: no such faceset folder")
            facesets.append(Faceset.open(path))
        size = max(fs.size for fs in facesets)
        faces, targets, matrices, train, val = [], [], [], [], []
        offset = 0
        for fs in facesets:
            sel = select(fs, pseudo)
            if not len(sel.ids):
                _log.warning("%s: no labelled faces", fs.path)
                continue
            if "landmarks" not in fs.array_names:
                raise UserError(f"{fs.path}: the faceset lacks the 'landmarks' array that re-cropping needs")
            m = base_matrices(fs, face_type, resolution)[sel.ids].astype(np.float64)
            f, t = fs.read("faces", sel.ids), sel.targets
            if fs.size != size:  # stored pixels -> resized pixels, so compose its inverse
                f, t = _resize_square(f, size), _resize_square(t, size)
                m = m @ np.linalg.inv(_resize_matrix(fs.size, size))
            faces.append(f)
            targets.append(t)
            matrices.append(m.astype(np.float32))
            t_ids, v_ids = split_validation(len(sel.ids), fraction)
            train.append(t_ids + offset)
            val.append(v_ids + offset)
            offset += len(sel.ids)
            print(f"{fs.path}: {len(sel.ids)} faces ({sel.labelled} labelled"
                  f"{', mesh masks for the rest' if pseudo == 'mesh' else ''}), {len(v_ids)} held out")
        if not offset:
            raise UserError(f"no labelled faces in {', '.join(paths)} (label some with "
                            f"preprocessing.faceset xseg labels, or use --config.pseudo_labels=mesh)")
        self.train_ids = np.concatenate(train)
        self.validation_ids = np.concatenate(val)
        self._sampler = ShuffledEpochs(self.train_ids, (int(cfg.seed), 0))
        self.position = 0
        host = {"faces": np.concatenate(faces), "targets": np.concatenate(targets),
                "base_matrices": np.concatenate(matrices)}
        self.count = offset
        self._resident = ResidentArrays(host, mesh)

    def fetch(self, ids: np.ndarray) -> dict[str, jax.Array]:
        return self._resident.fetch(ids)

    def next_batch(self) -> dict[str, jax.Array]:
        ids = self._sampler.take(self.position, self.batch_size)
        self.position += self.batch_size
        return self.fetch(ids)

    def validation_batches(self) -> list[dict[str, jax.Array]]:
        """Every held-out face once, in batches of batch_size (the last padded by repeating faces
        from the start; `valid` [B] marks real rows). Without held-out faces: one training batch."""
        ids = self.validation_ids if len(self.validation_ids) else self.train_ids[:self.batch_size]
        n = -(-len(ids) // self.batch_size) * self.batch_size
        padded = np.resize(ids, n)
        valid = np.arange(n) < len(ids)
        out = []
        for start in range(0, n, self.batch_size):
            batch = self.fetch(padded[start:start + self.batch_size])
            sharding = self._resident.ids_sharding
            batch["valid"] = parallel.host_to_global(
                valid[start:start + self.batch_size][parallel.local_batch_slice(
                    sharding, self.batch_size)].astype(np.float32), sharding)
            out.append(batch)
        return out

    def state(self) -> dict[str, int]:
        return {"samples": self.position, "train_faces": len(self.train_ids)}

    def restore(self, state: dict[str, int]) -> None:
        if state.get("train_faces") != len(self.train_ids):
            _log.warning("the facesets now give %d training faces, the checkpoint's %s; the sample "
                         "order differs from the original run's", len(self.train_ids), state.get("train_faces"))
        self.position = int(state["samples"])

