"""Overlapping tiles, so small faces in large frames are still seen by a 192 px detector.

BlazeFace sees the whole frame shrunk to 192 px and reliably finds faces from ~14 px there, i.e.
from ~140 px in a 1920 px frame. Running it again on 640 px tiles finds faces from ~50 px. Tiles
overlap by at least 192 px, and each tile *owns* the part of the frame closer to its centre than
to its neighbours' (the split runs through the middle of each overlap): a detection counts only
in the tile that owns its centre, so a face cut by one tile's edge is taken from the neighbour
that holds it whole (any face up to the overlap in size is whole in its owner).
"""
from __future__ import annotations

import dataclasses
import math

TILE_SIZE = 640
MIN_OVERLAP = 192
AUTO_TILES_ABOVE = 1024
"""With tiles="auto", frames whose longer side exceeds this many pixels are also tiled."""


@dataclasses.dataclass(frozen=True)
class Tile:
    """A tile [x0, x1) x [y0, y1) in frame pixels and the region [own_x0, own_x1) x [own_y0, own_y1) it answers for."""

    x0: int
    y0: int
    x1: int
    y1: int
    own_x0: float
    own_y0: float
    own_x1: float
    own_y1: float

    def owns(self, x: float, y: float) -> bool:
        return self.own_x0 <= x < self.own_x1 and self.own_y0 <= y < self.own_y1


def tile_grid(height: int, width: int, tile: int = TILE_SIZE, min_overlap: int = MIN_OVERLAP) -> list[Tile]:
    """Evenly spread tiles covering the frame, row by row; one tile when the frame fits in one."""
    rows = _spans(height, tile, min_overlap)
    cols = _spans(width, tile, min_overlap)
    return [Tile(x0, y0, x1, y1, ox0, oy0, ox1, oy1)
            for (y0, y1, oy0, oy1) in rows for (x0, x1, ox0, ox1) in cols]


def _spans(length: int, tile: int, min_overlap: int) -> list[tuple[int, int, float, float]]:
    """1-D tiling: (start, stop, own_start, own_stop) per tile; ownership splits overlaps in half."""
    if length <= tile:
        return [(0, length, -math.inf, math.inf)]
    count = math.ceil((length - tile) / (tile - min_overlap)) + 1
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    splits = [(starts[i + 1] + starts[i] + tile) / 2 for i in range(count - 1)]
    bounds = [-math.inf, *splits, math.inf]
    return [(s, s + tile, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]
