"""Flat-block noise: tiles of the flattest unclipped blocks of the noisy batch, each zero-mean."""

from __future__ import annotations

import pytest
import torch

from iscl.engine.flat_noise import flat_block_noise


def blocks_of(x: torch.Tensor, b: int = 16) -> torch.Tensor:
    n, _, h, w = x.shape
    return x.reshape(n, h // b, b, w // b, b).permute(0, 1, 3, 2, 4).reshape(-1, b, b)


def test_tiles_are_the_flattest_unclipped_blocks_mean_removed():
    torch.manual_seed(0)
    # every block gets its own noise level and offset; one row of blocks is clipped CT air
    levels = torch.linspace(0.01, 0.3, 32)
    b = blocks_of(torch.randn(2, 1, 64, 64)) * levels.view(-1, 1, 1) + torch.linspace(-0.5, 0.5, 32).view(-1, 1, 1)
    b[:4] = -1.0  # clipped: lowest variance of all, but no noise information
    x = b.reshape(2, 4, 4, 16, 16).permute(0, 1, 3, 2, 4).reshape(2, 1, 64, 64)
    out = flat_block_noise(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    unclipped = b[4:] - b[4:].mean(dim=(1, 2), keepdim=True)
    flattest = unclipped[:7]  # a quarter of the 28 unclipped blocks, the lowest levels
    for tile in blocks_of(out):
        assert tile.mean().abs() < 1e-6
        assert any(torch.allclose(tile, f, atol=1e-6) for f in flattest)
    # the draw varies over the tiles and is repeatable from the seed
    assert len({round(float(t.std()), 6) for t in blocks_of(out)}) > 1
    assert torch.equal(out, flat_block_noise(x, torch.Generator().manual_seed(0)))


def test_all_clipped_gives_none_and_bad_shapes_are_refused():
    assert flat_block_noise(torch.full((1, 1, 64, 64), -1.0), torch.Generator()) is None
    with pytest.raises(ValueError, match="at least 16"):
        flat_block_noise(torch.zeros(1, 1, 72, 8), torch.Generator())


def test_sides_that_are_not_multiples_of_the_block_get_a_cropped_tiling():
    x = torch.randn(2, 1, 72, 70) * 0.1
    out = flat_block_noise(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous()
    assert out[..., 64:, :].abs().sum() > 0 and out[..., :, 64:].abs().sum() > 0
