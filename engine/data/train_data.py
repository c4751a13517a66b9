"""TrainData: the src and dst facesets as a stream of global, batch-sharded device batches.

    data = TrainData(src, dst, cfg, mesh, model_face_type, resolution, seed)
    batch = data.next_batch()      # {"src": {...}, "dst": {...}}, see sources.py for the keys
    state = data.state()           # JSON-able position; data.restore(state) continues exactly
    val = data.validation_batch(n) # the first n held-out faces (the same every call)

Each faceset is resident on the devices when its arrays fit what is left of
`cfg.data.device_budget_mb` (src is placed first; the budget is per device, because resident
facesets are replicated), and streamed otherwise. Which one never changes the batches.

Config fields read: train.batch_size, train.uniform_yaw, data.device_budget_mb,
data.prefetch, data.validation_fraction.
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from engine import parallel
from engine.data import sampler as sampling
from engine.data.prefetch import Prefetcher
from engine.data.sources import (ResidentSource, StreamedSource, base_matrices, device_bytes,
                                 image_arrays)
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset

_log = logging.getLogger(__name__)

SIDES = ("src", "dst")


class _Side:
    """One faceset: its training/validation split, sampler, source and position (in samples)."""

    def __init__(self, index: int, fs: Faceset, source: ResidentSource | StreamedSource,
                 seed: int, batch_size: int, validation_fraction: float, uniform_yaw: bool,
                 prefetch: int):
        self.fs = fs
        self.source = source
        self.train_ids, self.validation_ids = sampling.split_validation(fs.count, validation_fraction)
        yaw = fs.read("pose", self.train_ids)[:, 1] if uniform_yaw else None
        self.sampler = sampling.make_sampler(self.train_ids, seed, index, yaw)
        self.batch_size = batch_size
        self.position = 0
        depth = prefetch if source.mode == "streamed" else 0  # resident gathers dispatch async
        self._prefetcher = Prefetcher(self._batch_at, batch_size, depth, name=f"read-{SIDES[index]}")

    def _batch_at(self, position: int) -> dict[str, jax.Array]:
        return self.source.fetch(self.sampler.take(position, self.batch_size))

    def next_batch(self) -> dict[str, jax.Array]:
        batch = self._prefetcher.get(self.position)
        self.position += self.batch_size
        return batch

    def state(self) -> dict[str, int]:
        train = len(self.train_ids)
        return {"samples": self.position, "epoch": self.position // train, "train_faces": train}

    def close(self) -> None:
        self._prefetcher.close()


class TrainData:
    """Sampled, sharded training batches from a src and a dst faceset (see the module docstring)."""

    def __init__(self, src_path: str, dst_path: str, cfg: Any, mesh: Mesh,
                 model_face_type: FaceType, resolution: int, seed: int):
        self._mesh = mesh
        self.batch_size = int(cfg.train.batch_size)
        _check_batch_size(self.batch_size, mesh, "config train.batch_size")
        _check_data_config(cfg.data)
        if seed < 0:
            raise UserError(f"seed={seed}: must be >= 0")
        budget = float(cfg.data.device_budget_mb) * 2**20
        self._sides: dict[str, _Side] = {}
        try:
            for index, (name, path) in enumerate(zip(SIDES, (src_path, dst_path))):
                fs = _open(path, bool(cfg.train.uniform_yaw))
                matrices = base_matrices(fs, FaceType(model_face_type), int(resolution))
                resident = device_bytes(fs) <= budget
                if resident:
                    budget -= device_bytes(fs)
                source = (ResidentSource if resident else StreamedSource)(fs, matrices, mesh)
                self._sides[name] = _Side(index, fs, source, int(seed), self.batch_size,
                                          float(cfg.data.validation_fraction),
                                          bool(cfg.train.uniform_yaw), int(cfg.data.prefetch))
                _log.info("%s: %s, %d faces of %d px (%d held out for validation), %s", name, path,
                          fs.count, fs.size, len(self._sides[name].validation_ids), source.mode)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------- batches
    def next_batch(self) -> dict[str, dict[str, jax.Array]]:
        """The next global batch of `batch_size` faces per side, sharded over the batch axis."""
        return {name: side.next_batch() for name, side in self._sides.items()}

    def validation_batch(self, n: int) -> dict[str, dict[str, jax.Array]]:
        """The first n held-out faces of each side (repeated when a side holds fewer)."""
        _check_batch_size(n, self._mesh, "validation batch size")
        out = {}
        for name, side in self._sides.items():
            if not len(side.validation_ids):
                raise UserError(f"{side.fs.path}: no faces are held out for validation "
                                f"(data.validation_fraction is 0 or the faceset has one face)")
            out[name] = side.source.fetch(np.resize(side.validation_ids, n))
        return out

    # ----------------------------------------------------------------------------- position
    def state(self) -> dict[str, dict[str, int]]:
        """JSON-able data position: samples consumed (and the epoch) per side."""
        return {name: side.state() for name, side in self._sides.items()}

    def restore(self, state: dict[str, dict[str, int]]) -> None:
        """Continues from a `state()`, also one saved with another batch size."""
        for name, side in self._sides.items():
            saved = state[name]
            if saved.get("train_faces") != len(side.train_ids):
                _log.warning("%s: the faceset now has %d training faces, the checkpoint's had %s; "
                             "the sample order after resuming differs from the original run's",
                             side.fs.path, len(side.train_ids), saved.get("train_faces"))
            side.position = int(saved["samples"])

    # ----------------------------------------------------------------------------- description
    @property
    def info(self) -> dict[str, dict[str, Any]]:
        """Per side: path, face count, training/validation split, stored size and type, mode, and
        the bytes it holds on every device (0 when streamed), for the trainer's memory check."""
        return {name: {"path": side.fs.path, "count": side.fs.count, "size": side.fs.size,
                       "face_type": side.fs.face_type, "train": len(side.train_ids),
                       "validation": len(side.validation_ids), "mode": side.source.mode,
                       "device_bytes": device_bytes(side.fs) if side.source.mode == "resident" else 0}
                for name, side in self._sides.items()}

    def close(self) -> None:
        for side in self._sides.values():
            side.close()

    def __enter__(self) -> "TrainData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: str, uniform_yaw: bool) -> Faceset:
    """Opens a faceset and checks, before anything is loaded, that it can be trained on."""
    fs = Faceset.open(path)
    if fs.count == 0:
        raise UserError(f"{path}: the faceset holds no faces")
    image_arrays(fs)  # names the arrays a training faceset needs if some are missing
    if uniform_yaw and "pose" not in fs.array_names:
        raise UserError(f"{path}: uniform_yaw needs the faceset's 'pose' array, which it lacks")
    return fs


def _check_data_config(data: Any) -> None:
    if not 0.0 <= float(data.validation_fraction) < 1.0:
        raise UserError(f"config data.validation_fraction={data.validation_fraction}: must be in [0, 1)")
    if int(data.prefetch) < 0:
        raise UserError(f"config data.prefetch={data.prefetch}: must be >= 0 (0 reads in the train loop)")


def _check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
    shards = parallel.batch_shards(mesh)
    if batch_size < 1 or batch_size % shards:
        up = max(shards, -(-batch_size // shards) * shards)
        raise UserError(f"{what}={batch_size}: must be a positive multiple of the {shards} devices "
                        f"the batch is split over (mesh {dict(mesh.shape)}); use {up}, or fewer "
                        f"devices with --config.mesh.data")
