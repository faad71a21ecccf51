"""Tiled prediction equals whole-image prediction (BIN statistics made global), also at odd sizes, and the
paused statistics pass equals the layer-by-layer one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from iscl.data.tiling import plan_tiles
from iscl.nn import Generator, NoiseExtractor
from iscl.nn.norm import BatchInstanceNorm, statistics_override
from iscl.predict import TiledStatistics, _measure_statistics, predict_image
from synthetic import perturbed_nets_and_image


def psnr(a, b, data_range=2.0):
    return 10 * np.log10(data_range**2 / np.mean((a - b) ** 2))


@pytest.fixture(scope="module")
def nets_and_image():
    return perturbed_nets_and_image(150, 161)  # sides not multiples of 4


def test_tiled_equals_whole_image(nets_and_image):
    F, H, img = nets_and_image  # 150x161: odd, not a multiple of 4
    outputs = ("denoised", "noise", "generator", "bypass")
    whole = predict_image(F, H, img, outputs=outputs)
    tiled = predict_image(F, H, img, outputs=outputs, tile=96, overlap=48)
    assert all(tiled[k].shape == img.shape for k in outputs)
    # H's receptive field (5 px) is inside the overlap: exact up to float rounding
    np.testing.assert_allclose(tiled["noise"], whole["noise"], atol=1e-5)
    assert psnr(whole["denoised"], tiled["denoised"]) > 60


def test_tiles_with_own_statistics_would_differ(nets_and_image):
    # the reason for the statistics passes: normalizing each tile by itself changes the output
    F, H, img = nets_and_image
    whole = predict_image(F, H, img[:96, :96], outputs=("noise",))
    alone = predict_image(F, H, img[:64, :64], outputs=("noise",))
    assert np.abs(whole["noise"][:40, :40] - alone["noise"][:40, :40]).max() > 1e-3


def test_no_seams_at_tile_borders(nets_and_image):
    """A seam is a line along a tile border where tiled output departs from whole-image output more than
    elsewhere. Measure |tiled - whole| in 4-px bands around every interior tile border (window edges and the
    ownership splits between tiles) and at pixels more than 6 px from any border: the bands must not be worse
    than inside (up to a factor for the blend ramps, which give the truncated-context tile a little weight:
    now ~1.8x on the mean and ~1.5x on the 99th percentile; tiles without overlap give ~12x and ~5x), and the
    largest deviation is small everywhere."""
    F, H, img = nets_and_image
    tiled = predict_image(F, H, img, outputs=("denoised",), tile=96, overlap=48)["denoised"]
    whole = predict_image(F, H, img, outputs=("denoised",))["denoised"]
    diff = np.abs(tiled - whole)
    h, w = img.shape
    tiles = plan_tiles(h + (-h) % 4, w + (-w) % 4, 96, 48)
    rows = {v for t in tiles for v in (t.y0, t.y1, t.oy0, t.oy1)} - {0, h + (-h) % 4}
    cols = {v for t in tiles for v in (t.x0, t.x1, t.ox0, t.ox1)} - {0, w + (-w) % 4}
    assert len(tiles) > 1 and rows and cols  # this geometry has borders in both directions
    # distance of each pixel centre to the nearest border line (a border at c lies between pixels c-1 and c)
    dy = np.min([np.abs(np.arange(h) + 0.5 - c) for c in rows], axis=0)
    dx = np.min([np.abs(np.arange(w) + 0.5 - c) for c in cols], axis=0)
    dist = np.minimum(dy[:, None], dx[None, :])
    band, inside = diff[dist < 2], diff[dist > 6]
    assert band.size > 1000 and inside.size > 1000
    assert band.mean() < 3 * inside.mean(), (band.mean(), inside.mean())
    assert np.quantile(band, 0.99) < 2.5 * np.quantile(inside, 0.99)
    assert diff.max() < 1e-2


def test_statistics_from_a_subset_of_tiles_is_an_estimate(nets_and_image):
    F, H, img = nets_and_image
    whole = predict_image(F, H, img, outputs=("denoised",))["denoised"]
    est = predict_image(F, H, img, outputs=("denoised",), tile=64, overlap=32, stats_tiles=4)["denoised"]
    assert 20 < psnr(whole, est) < 200


def _statistics(net, img, is_F, budget, tile=64, overlap=32):
    """The statistics pass alone: (frozen statistics, outputs by tile, tiles, calls of the first conv)."""
    h, w = img.shape
    tiles = plan_tiles(h + (-h) % 4, w + (-w) % 4, tile, overlap)
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    calls = []
    hook = first_conv.register_forward_hook(lambda *_: calls.append(1))
    stats = TiledStatistics()
    try:
        with torch.no_grad(), statistics_override(net, stats):
            outputs = _measure_statistics(net, stats, img, tiles, (h, w), is_F, budget, "fp32", torch.device("cpu"),
                                          lambda: None)
    finally:
        hook.remove()
    return stats.frozen, outputs, tiles, len(calls)


def _residual_generator():
    torch.manual_seed(1)
    F = Generator(width=4, n_res=1, residual=True).eval()
    with torch.no_grad():
        for m in F.modules():
            if hasattr(m, "rho"):
                m.rho.uniform_(0, 1)
                m.gamma.uniform_(0.5, 1.5)
        F.head.weight.normal_(0, 0.05)  # the head starts at zero: F would be the identity
    return F


@pytest.mark.parametrize("which", ["H", "F", "residual F"])
def test_paused_statistics_pass_equals_layer_by_layer(nets_and_image, which):
    F, H, img = nets_and_image
    net, is_F = {"H": (H, False), "F": (F, True), "residual F": (_residual_generator(), True)}[which]
    n_layers = sum(isinstance(m, BatchInstanceNorm) for m in net.modules())
    ref_stats, ref_out, tiles, ref_calls = _statistics(net, img, is_F, budget=0)  # every tile re-run per layer
    # all tiles paused together (one pass each), and a budget where only some fit (the others re-run)
    one_tile = 4 * 64 * 64 * 4  # float32 bytes of a 4-channel 64² activation, the largest of these networks
    for budget, expected_calls in ((2**30, len(tiles)), (3 * one_tile, None)):
        stats, out, _, calls = _statistics(net, img, is_F, budget)
        assert stats.keys() == ref_stats.keys() and len(stats) == n_layers
        for key, (mean, var) in ref_stats.items():  # the same arithmetic in the same order: bit for bit
            assert torch.equal(stats[key][0], mean) and torch.equal(stats[key][1], var)
        assert out.keys() == ref_out.keys() == set(tiles)
        assert all(torch.equal(out[t], ref_out[t]) for t in tiles)
        if expected_calls is not None:
            assert calls == expected_calls
        assert calls < ref_calls
    assert ref_calls == (n_layers + 1) * len(tiles)


@pytest.mark.parametrize("stats_memory", [2**30, 20_000, 0])
def test_tiled_output_does_not_depend_on_stats_memory(nets_and_image, stats_memory):
    _, H, img = nets_and_image
    F = _residual_generator()
    outputs = ("denoised", "noise", "generator", "bypass")
    kw = dict(outputs=outputs, tile=64, overlap=32)
    ref = predict_image(F, H, img, stats_memory=0, **kw)
    tiled = predict_image(F, H, img, stats_memory=stats_memory, **kw)
    for k in outputs:
        np.testing.assert_array_equal(tiled[k], ref[k])


def test_residual_generator_tiled_equals_whole_image(nets_and_image):
    _, H, img = nets_and_image
    F = _residual_generator()
    whole = predict_image(F, H, img, outputs=("generator", "denoised"))
    tiled = predict_image(F, H, img, outputs=("generator", "denoised"), tile=96, overlap=48)
    assert np.abs(whole["generator"] - img).max() > 1e-2  # not the identity
    assert psnr(whole["generator"], tiled["generator"]) > 60
    assert psnr(whole["denoised"], tiled["denoised"]) > 60


def test_progress_reaches_its_total(nets_and_image):
    F, H, img = nets_and_image
    seen = []
    predict_image(F, H, img, tile=64, overlap=32, stats_memory=20_000, on_tile=lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][0] == seen[-1][1]


class _FailingAt(torch.nn.Module):
    """A noise extractor whose ``n``-th call raises after its first BIN layer."""

    def __init__(self, n):
        super().__init__()
        self.net, self.n, self.calls = NoiseExtractor(4, 5), n, 0

    def forward(self, x):
        self.calls += 1
        call = self.calls
        h = self.net.body[:4](x)  # conv, lrelu, conv, BIN: a statistics pass pauses in the BIN layer
        if call == self.n:
            raise ValueError("broken tile")
        return self.net.body[4:](h)


def test_error_in_a_statistics_pass_propagates_and_ends_the_paused_passes(nets_and_image):
    F, _, img = nets_and_image
    threads = threading.active_count()
    with pytest.raises(ValueError, match="broken tile"):
        # the 3rd tile fails once its first layer's statistics are known, with every other tile paused
        predict_image(F, _FailingAt(3), img, outputs=("noise",), tile=64, overlap=32)
    assert threading.active_count() == threads


@pytest.mark.parametrize("tile", [None, 96])
def test_gamma_zero_is_the_clipped_bypass_without_running_F(nets_and_image, tile):
    F, H, img = nets_and_image
    calls = []
    handle = F.register_forward_hook(lambda *a: calls.append(1))
    try:
        got = predict_image(F, H, img, gamma=0.0, tile=tile, overlap=48)
    finally:
        handle.remove()
    assert calls == []  # F(x) carries weight 0: it is not computed
    both = predict_image(F, H, img, gamma=0.0, outputs=("denoised", "bypass", "generator"), tile=tile, overlap=48)
    assert np.array_equal(got["denoised"], both["denoised"])
    # whole image: exactly; tiled: the tiles' clipped bypasses are averaged, equal up to float rounding
    np.testing.assert_allclose(got["denoised"], np.clip(both["bypass"], -1, 1), rtol=0,
                               atol=0 if tile is None else 1e-5)
    # any other gamma still blends F in
    assert not np.array_equal(predict_image(F, H, img, gamma=0.25, tile=tile, overlap=48)["denoised"], got["denoised"])
