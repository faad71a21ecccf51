"""Tile geometry: alignment, coverage, ownership partition and blending weights."""

from __future__ import annotations

import numpy as np
import pytest

from iscl.data.tiling import axis_tiles, blend_weights, plan_tiles, read_window


@pytest.mark.parametrize(("n", "tile", "overlap"), [(1024, 512, 32), (160, 96, 48), (100, 64, 16), (64, 512, 32)])
def test_axis_tiles_cover_align_and_partition(n, tile, overlap):
    tiles = axis_tiles(n, tile, overlap)
    assert tiles[0][0] == 0 and tiles[-1][1] == n
    owned = np.zeros(n, int)
    for s, e, o0, o1 in tiles:
        assert s % 4 == 0 and e - s <= max(tile, 4) and s <= o0 < o1 <= e
        owned[o0:o1] += 1
    assert np.all(owned == 1)  # the owned cores partition the axis
    for (_, e0, _, _), (s1, _, _, _) in zip(tiles, tiles[1:]):
        assert e0 - s1 >= overlap  # neighbours overlap at least as asked


def test_blend_weights_are_smooth_positive_and_one_inside():
    tiles = plan_tiles(256, 256, 128, 64)
    total = np.zeros((256, 256))
    for t in tiles:
        wgt = blend_weights(t, tiles)
        assert wgt.shape == (t.y1 - t.y0, t.x1 - t.x0) and wgt.min() > 0 and wgt.max() == 1
        total[t.y0 : t.y1, t.x0 : t.x1] += wgt
    assert total.min() > 0.99  # some tile always has (nearly) full weight: no dark seams after normalizing
    row = blend_weights(tiles[0], tiles)[0]
    assert np.all(np.diff(row[-64:]) <= 1e-12)  # monotone fall-off across the overlap, no step


def test_read_window_mirrors_past_the_edge():
    a = np.arange(30, dtype=np.float32).reshape(5, 6)
    w = read_window(a, 0, 8, 4, 8)
    assert w.shape == (8, 4)
    assert np.array_equal(w[:5, :2], a[:, 4:6])
    assert np.array_equal(w[5], a[3, [4, 5, 4, 3]])  # reflect, as F.pad(mode="reflect")
