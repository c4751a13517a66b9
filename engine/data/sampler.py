"""Which faces a training batch holds: seeded shuffled epochs, addressed by sample position.

The data position is a count of samples consumed, never a batch number, and the face at every
position is a pure function of (seed, side, position). So a resumed run continues with exactly
the faces an uninterrupted run would have seen, whatever batch size either run used, and nothing
but one integer per side has to be checkpointed.

DFL_SPEC §3.6: plain sampling walks shuffled epochs; with uniform_yaw the faces are binned by yaw
(128 bins over [-1.2, 1.2] rad) and a non-empty bin is drawn round-robin from a shuffled order of
bins, then a face inside it from that bin's own shuffled epochs. Every non-empty bin is drawn
exactly once per round, so profiles and frontal faces are seen equally often.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from preprocessing.faceset.best_faces import YAW_BINS, YAW_LIMIT, bin_index

# Streams of randomness per side, so the bin order and each bin's shuffles are independent.
_EPOCHS, _BIN_ORDER, _IN_BIN = 0, 1, 2


class Sampler(Protocol):
    """Maps sample positions to face indices."""

    def take(self, start: int, count: int) -> np.ndarray:
        """Face indices (int64) at positions [start, start + count)."""
        ...


class ShuffledEpochs:
    """Position p is face members[perm_e[p % n]] with e = p // n and perm_e seeded by (key, e)."""

    def __init__(self, members: np.ndarray, key: tuple[int, ...]):
        self._members = np.asarray(members, np.int64)
        if self._members.ndim != 1 or len(self._members) == 0:
            raise ValueError(f"need a non-empty 1-D array of members, got shape {self._members.shape}")
        self._key = tuple(int(k) for k in key)
        self._cached: tuple[int, np.ndarray] | None = None  # the last epoch's permutation

    def _permutation(self, epoch: int) -> np.ndarray:
        cached = self._cached  # one read: prefetch threads may call take() concurrently
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([*self._key, epoch]).permutation(len(self._members)))
            self._cached = cached
        return cached[1]

    def take(self, start: int, count: int) -> np.ndarray:
        positions = start + np.arange(count, dtype=np.int64)
        n = len(self._members)
        epochs = positions // n
        out = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self._members[self._permutation(int(epoch))[positions[here] % n]]
        return out


class UniformYaw:
    """Position p draws bin order_r[p % B] (round r = p // B over the B non-empty bins), then
    that bin's face number r from its own shuffled epochs (each bin is visited once per round)."""

    def __init__(self, members: np.ndarray, yaw: np.ndarray, key: tuple[int, ...]):
        members = np.asarray(members, np.int64)
        bins = yaw_bins(yaw)
        occupied = np.unique(bins)
        self._bins = [ShuffledEpochs(members[bins == b], (*key, _IN_BIN, int(b))) for b in occupied]
        self._order = ShuffledEpochs(np.arange(len(occupied)), (*key, _BIN_ORDER))

    def take(self, start: int, count: int) -> np.ndarray:
        drawn = self._order.take(start, count)
        rounds = (start + np.arange(count, dtype=np.int64)) // len(self._bins)
        return np.array([self._bins[b].take(int(r), 1)[0] for b, r in zip(drawn, rounds)], np.int64)


def yaw_bins(yaw: np.ndarray) -> np.ndarray:
    """DFL's 128 equal bins over [-1.2, 1.2] rad; beyond the range go to the end bins.

    A face whose pose fit failed (NaN yaw) counts as frontal rather than being dropped.
    """
    return bin_index(np.nan_to_num(np.asarray(yaw, np.float64), nan=0.0), -YAW_LIMIT, YAW_LIMIT, YAW_BINS)


def make_sampler(members: np.ndarray, seed: int, side: int, yaw: np.ndarray | None = None) -> Sampler:
    """Shuffled epochs over `members` (face indices), or uniform over yaw bins when `yaw` (the
    yaw of each member) is given. `side` separates the src (0) and dst (1) streams."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if yaw is None:
        return ShuffledEpochs(members, (seed, side, _EPOCHS))
    return UniformYaw(members, yaw, (seed, side))


def split_validation(count: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) face indices: the validation faces are the last ceil(fraction*count).

    One contiguous run at the end, independent of the seed: neighbouring video frames are near
    duplicates, so scattered validation faces would mostly have a twin in the training set. At
    least one face is always left for training.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    held_out = min(int(np.ceil(fraction * count)), count - 1) if count else 0
    cut = count - held_out
    return np.arange(cut, dtype=np.int64), np.arange(cut, count, dtype=np.int64)
