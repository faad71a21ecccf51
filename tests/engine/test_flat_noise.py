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


def test_full_width_strips_keep_row_correlated_noise_whole():
    torch.manual_seed(0)
    # row offsets (charging lines) on a scene with a textured lower half: the strips of the flat half are kept
    x = torch.randn(4, 1, 64, 1).expand(4, 1, 64, 64) * 0.1
    x = x + torch.cat([torch.zeros(4, 1, 32, 64), torch.randn(4, 1, 32, 64) * 0.5], dim=2)
    out = flat_block_noise(x, torch.Generator().manual_seed(0), block=8, width=64)
    assert out.shape == x.shape
    assert torch.allclose(out, out[..., :1].expand_as(out), atol=1e-6)  # every row one offset, its whole width
    strips = x[:, 0, :32].reshape(4, 4, 8, 64).reshape(-1, 8, 64)
    strips = strips - strips.mean(dim=(1, 2), keepdim=True)
    for tile in out[:, 0].reshape(-1, 8, 64):
        assert tile.abs().sum() > 0 and any(torch.allclose(tile, s, atol=1e-6) for s in strips)
    # square blocks of the same data cut the lines every 16 px
    square = flat_block_noise(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(square, square[..., :1].expand_as(square), atol=1e-6)


def test_turned_strips_follow_patches_whose_lines_run_down_the_columns():
    torch.manual_seed(0)
    rows = torch.randn(8, 1, 64, 1).expand(8, 1, 64, 64) * 0.1
    # half the patches turned a quarter, as the augmentation does; they are the flatter ones
    x = torch.cat([rows[:4], 0.5 * rows[4:].transpose(-1, -2)])
    out = flat_block_noise(x, torch.Generator().manual_seed(1), block=8, width=64, turn=True)
    along_rows = [torch.allclose(f, f[..., :1].expand_as(f), atol=1e-6) for f in out]
    along_cols = [torch.allclose(f, f[..., :1, :].expand_as(f), atol=1e-6) for f in out]
    assert all(r != c for r, c in zip(along_rows, along_cols))  # each field one orientation, whole lines
    assert any(along_rows) and any(along_cols)
    # without turning, the column-line patches give strips that cut across their lines, and the fields mix them
    plain = flat_block_noise(x, torch.Generator().manual_seed(1), block=8, width=64)
    assert not all(torch.allclose(f, f[..., :1].expand_as(f), atol=1e-6) for f in plain)


def test_a_guide_ranks_the_blocks_by_its_flatness_not_the_noisy_patches():
    torch.manual_seed(0)
    levels = torch.linspace(0.01, 0.3, 32)
    b = blocks_of(torch.randn(2, 1, 64, 64)) * levels.view(-1, 1, 1)
    x = b.reshape(2, 4, 4, 16, 16).permute(0, 1, 3, 2, 4).reshape(2, 1, 64, 64)
    # a denoised estimate in which the blocks with the strongest noise are the flat ones in the scene
    g = (blocks_of(torch.randn(2, 1, 64, 64)) * levels.flip(0).view(-1, 1, 1))
    guide = g.reshape(2, 4, 4, 16, 16).permute(0, 1, 3, 2, 4).reshape(2, 1, 64, 64)
    out = flat_block_noise(x, torch.Generator().manual_seed(0), guide=guide)
    strongest = b[-8:] - b[-8:].mean(dim=(1, 2), keepdim=True)
    for tile in blocks_of(out):
        assert any(torch.allclose(tile, s, atol=1e-6) for s in strongest)
    with pytest.raises(ValueError, match="guide"):
        flat_block_noise(x, torch.Generator(), guide=guide[:1])


def test_levels_match_each_tile_to_blocks_of_its_clean_intensity():
    torch.manual_seed(0)
    # noise that grows with the signal: 64 blocks, means -0.5..0.5, noise std 0.02..0.22 along the mean
    means = torch.linspace(-0.5, 0.5, 64)
    b = blocks_of(torch.randn(4, 1, 64, 64)) * (0.02 + 0.2 * (means + 0.5)).view(-1, 1, 1) + means.view(-1, 1, 1)
    x = b.reshape(4, 4, 4, 16, 16).permute(0, 1, 3, 2, 4).reshape(4, 1, 64, 64)
    y = torch.cat([torch.full((4, 1, 64, 32), -0.4), torch.full((4, 1, 64, 32), 0.4)], dim=-1)  # dark | bright
    out = flat_block_noise(x, torch.Generator().manual_seed(0), levels=4, clean=y)
    centred = b - b.mean(dim=(1, 2), keepdim=True)
    for tile in blocks_of(out):
        assert any(torch.allclose(tile, c, atol=1e-6) for c in centred)
    dark, bright = out[..., :32].std(), out[..., 32:].std()
    assert bright > 2 * dark  # each half gets the noise of its own intensity
    # unmatched, the flattest quarter is the darkest blocks, laid on the bright half too
    plain = flat_block_noise(x, torch.Generator().manual_seed(0))
    assert plain[..., 32:].std() < 1.5 * plain[..., :32].std() and plain[..., 32:].std() < 0.5 * bright
    assert torch.equal(out, flat_block_noise(x, torch.Generator().manual_seed(0), levels=4, clean=y))
    with pytest.raises(ValueError, match="clean patches"):
        flat_block_noise(x, torch.Generator(), levels=4)
    # turned strips are matched to the clean patch as the field will lie on it (half the fields turned)
    # (line noise along the rows, growing with the strip's mean; two dark clean patches, two bright ones)
    strip_means = torch.linspace(-0.5, 0.5, 32).view(4, 1, 8, 1, 1)
    signs = torch.tensor([1.0, -1.0]).repeat(4).view(1, 1, 1, 8, 1)  # every strip's line noise exactly its std
    lines = signs * (0.02 + 0.2 * (strip_means + 0.5)) + strip_means
    strips = (lines + 0.01 * torch.randn(4, 1, 8, 8, 64)).reshape(4, 1, 64, 64)
    levels_y = torch.tensor([-0.4, -0.4, 0.4, 0.4]).view(4, 1, 1, 1).expand(4, 1, 64, 64)
    turned = flat_block_noise(strips, torch.Generator().manual_seed(2), block=8, width=64, turn=True, levels=4,
                              clean=levels_y)
    assert turned[2:].std() > 2 * turned[:2].std()
    # clean patches dark above, bright below: a field left along the rows is matched strip by strip, a turned
    # one (its strips down the columns, each over both halves) is matched to their mean, the same left and right
    halves = torch.cat([torch.full((8, 1, 32, 64), -0.4), torch.full((8, 1, 32, 64), 0.4)], dim=-2)
    fields = flat_block_noise(torch.cat([strips, strips]), torch.Generator().manual_seed(3), block=8, width=64,
                              turn=True, levels=4, clean=halves)
    along_rows = [bool((f.diff(dim=-2) ** 2).mean() > (f.diff(dim=-1) ** 2).mean()) for f in fields]  # its lines
    assert any(along_rows) and not all(along_rows)
    for f, rows_ in zip(fields, along_rows):
        if rows_:
            assert f[..., 32:, :].std() > 2 * f[..., :32, :].std()
        else:
            assert f[..., :, 32:].std() < 2 * f[..., :, :32].std() and f[..., :, :32].std() < 2 * f[..., :, 32:].std()


def test_extra_flat_steps_update_h_alone_on_their_own_batches(tiny_config):
    from iscl.engine.iscl import ISCL

    cfg = tiny_config.model_copy(deep=True)
    g = torch.Generator().manual_seed(4)
    x, y, xe, ye = (0.2 * torch.randn(2, 1, 64, 64, generator=g) for _ in range(4))

    def model() -> ISCL:
        m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
        m.load_state_dict(base.state_dict())
        return m

    base = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    plain, extra, by_hand = model(), model(), model()
    record = extra.train_step(x, y, [(xe, ye)])
    assert record["h_flat_extra"] > 0 and "h_flat_extra" not in plain.train_step(x, y)
    for name in ("F", "G", "D_X", "D_Y"):  # the extra update is H's alone, after the step's three sub-steps
        assert all(torch.equal(a, b) for a, b in zip(getattr(plain.nets, name).parameters(),
                                                      getattr(extra.nets, name).parameters())), name
    assert not all(torch.equal(a, b) for a, b in zip(plain.nets.H.parameters(), extra.nets.H.parameters()))
    # ... and it is one update of |H(y + n) - n| on the extra batch, n its flat-block noise
    by_hand.d_step(x, y), by_hand.fg_step(x, y), by_hand.h_step(x, y)
    noisy = by_hand._flat_noisy(xe, ye, stream=500_009 + 1_000_000_007)
    H = by_hand.nets.H
    loss = (H(noisy) - (noisy - ye)).abs().mean()
    assert loss.item() == pytest.approx(record["h_flat_extra"], rel=1e-5)
    by_hand.opt_h.zero_grad()
    loss.backward()
    by_hand.opt_h.step()
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(H.parameters(), extra.nets.H.parameters()))
