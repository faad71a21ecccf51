"""Tile geometry for predicting images of any size: windows, ownership and blending weights.

Pure NumPy (no networks): :mod:`iscl.predict` runs the networks over these tiles.

Every tile is a window of at most ``tile × tile`` pixels whose start is a multiple of ``align`` (4:
the generator's two stride-2 stages are translation-equivariant only for such shifts). Neighbouring
windows overlap by at least ``overlap`` pixels; their outputs are blended with weights that ramp
smoothly (sin²) across the middle half of the overlap (pixels near a window's inner edge, which see
the tile's artificial border, get ~0 weight), so no seam is visible. Each pixel is also *owned* by exactly one
tile (split at the middle of each overlap, on the ``align`` grid): the owned cores partition the
image and are where whole-image statistics are accumulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "axis_tiles", "plan_tiles", "blend_weights", "read_window"]


@dataclass(frozen=True)
class Tile:
    """One window ``[y0, y1) × [x0, x1)`` and the core ``[oy0, oy1) × [ox0, ox1)`` it owns (image coords)."""

    y0: int
    y1: int
    x0: int
    x1: int
    oy0: int
    oy1: int
    ox0: int
    ox1: int


def axis_tiles(n: int, tile: int, overlap: int, align: int = 4) -> list[tuple[int, int, int, int]]:
    """Windows along one axis of length ``n``: a list of (start, stop, own_start, own_stop).

    ``n`` must be a multiple of ``align`` (callers pad the image first); ``tile`` is rounded down to a
    multiple of ``align``. The axis gets as few windows as ``tile`` and ``overlap`` allow, all of one
    size, evenly spread: the smallest aligned size that still gives neighbours at least ``overlap``
    pixels in common. (Windows of the full ``tile`` size with the last one pushed back to the end
    process up to 2.25x the image's pixels for a 1024² image in 512² tiles; even windows ~1.13x.)
    """
    if n % align:
        raise ValueError(f"axis length {n} must be a multiple of {align}")
    tile = max(align, tile - tile % align)
    if n <= tile:
        return [(0, n, 0, n)]
    if tile - overlap < align:
        raise ValueError(f"overlap {overlap} must be smaller than tile {tile} by at least {align}")
    count = -(-(n - overlap) // (tile - overlap))  # the fewest windows that overlap enough
    while True:
        size = -(-((n - overlap) // count + overlap) // align) * align
        while size <= tile:
            # starts spread evenly on the align grid, the last window ending at n
            starts = [int(round(i * (n - size) / (count - 1) / align)) * align for i in range(count)]
            if all(starts[i] + size - starts[i + 1] >= overlap for i in range(count - 1)):
                break
            size += align
        if size <= tile:
            break
        count += 1
    out = []
    for i, s in enumerate(starts):
        e = s + size
        own0 = 0 if i == 0 else out[-1][3]
        if i == len(starts) - 1:
            own1 = n
        else:
            mid = (starts[i + 1] + e) // 2  # middle of the overlap with the next window
            own1 = mid - mid % align
        out.append((s, e, own0, own1))
    return out


def plan_tiles(height: int, width: int, tile: int, overlap: int, align: int = 4) -> list[Tile]:
    """Row-major tiles covering a ``height × width`` image (both multiples of ``align``)."""
    rows = axis_tiles(height, tile, overlap, align)
    cols = axis_tiles(width, tile, overlap, align)
    return [Tile(r[0], r[1], c[0], c[1], r[2], r[3], c[2], c[3]) for r in rows for c in cols]


def _ramp(length: int, overlap_before: int, overlap_after: int) -> np.ndarray:
    """1-D weights: ~0 on the outer quarter of each overlap (pixels too close to the window edge see
    the tile's artificial border), a sin² rise across the middle half, 1 elsewhere."""
    w = np.ones(length, dtype=np.float64)
    for ov, sl in ((overlap_before, slice(None)), (overlap_after, slice(None, None, -1))):
        if ov > 0:
            quarter, half = ov // 4, max(1, ov - 2 * (ov // 4))
            ramp = np.zeros(ov)
            ramp[quarter : quarter + half] = np.sin(0.5 * np.pi * (np.arange(half) + 0.5) / half) ** 2
            ramp[quarter + half :] = 1.0
            view = w[sl]
            view[:ov] = np.minimum(view[:ov], ramp)
    return w


def blend_weights(tile: Tile, tiles: list[Tile]) -> np.ndarray:
    """Smooth weights (H_t, W_t) for ``tile``: sin² ramps over its overlaps with its neighbours.

    Edges on the image border keep weight 1. Weights are positive everywhere, so dividing the blended
    sum by the summed weights is always defined.
    """
    def overlaps(a0: int, a1: int, starts_stops: set[tuple[int, int]]) -> tuple[int, int]:
        before = max((e - a0 for s, e in starts_stops if s < a0 < e), default=0)
        after = max((a1 - s for s, e in starts_stops if s < a1 < e), default=0)
        return before, after

    ys = {(t.y0, t.y1) for t in tiles}
    xs = {(t.x0, t.x1) for t in tiles}
    wy = _ramp(tile.y1 - tile.y0, *overlaps(tile.y0, tile.y1, ys))
    wx = _ramp(tile.x1 - tile.x0, *overlaps(tile.x0, tile.x1, xs))
    # the ramp must stay strictly positive so no pixel ends with zero total weight
    return np.maximum(np.outer(wy, wx), 1e-6).astype(np.float32)


def read_window(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Window of a 2-D array (a memmap works) as float32; rows/columns past the end are mirrored
    (``reflect``, as the generator pads a side that is not a multiple of 4)."""
    h, w = image.shape[-2:]
    ry = np.arange(y0, y1)
    rx = np.arange(x0, x1)
    if y1 > h or x1 > w:
        ry = np.where(ry >= h, 2 * (h - 1) - ry, ry)
        rx = np.where(rx >= w, 2 * (w - 1) - rx, rx)
        return np.asarray(image[np.ix_(np.clip(ry, 0, h - 1), np.clip(rx, 0, w - 1))], dtype=np.float32)
    return np.asarray(image[y0:y1, x0:x1], dtype=np.float32)
