"""Batches prepared ahead of the consumer on background threads.

The next `depth` batches after the one just handed out are always in flight (each one a
TensorStore batch read plus the host->device copy), so reading overlaps the train step. Asking
for any other position than the expected one (after a restore) simply discards what was in
flight: a batch is a pure function of its position, so nothing is lost.
"""
from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """`get(p)` returns produce(p) and starts produce(p + stride), ..., produce(p + depth*stride).

    With depth 0 everything runs in the caller's thread (no pool is started).
    """

    def __init__(self, produce: Callable[[int], T], stride: int, depth: int, name: str = "prefetch"):
        self._produce = produce
        self._stride = stride
        self._depth = depth
        self._pool = (concurrent.futures.ThreadPoolExecutor(max_workers=depth, thread_name_prefix=name)
                      if depth > 0 else None)
        self._ahead: collections.deque[tuple[int, concurrent.futures.Future]] = collections.deque()

    def get(self, position: int) -> T:
        if self._pool is None:
            return self._produce(position)
        if not self._ahead or self._ahead[0][0] != position:
            self._discard()
            self._ahead.append((position, self._pool.submit(self._produce, position)))
        _, future = self._ahead.popleft()
        last = self._ahead[-1][0] if self._ahead else position
        while len(self._ahead) < self._depth:
            last += self._stride
            self._ahead.append((last, self._pool.submit(self._produce, last)))
        return future.result()

    def _discard(self) -> None:
        for _, future in self._ahead:
            future.cancel()  # a read already running finishes in the background, unused
        self._ahead.clear()

    def close(self) -> None:
        self._discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
