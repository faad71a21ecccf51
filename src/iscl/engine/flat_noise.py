"""Noise samples cut from the flattest blocks of the noisy batch, for a supervised pair for H.

Where the scene is flat, what varies in a noisy image is noise: the flattest blocks of the noisy patches,
their mean removed, are samples of the real noise (its marginal distribution and short-range
correlation, as far as a block shows them). Tiled into a patch-sized field and laid on a clean patch,
they make a noisy image whose noise is known, ``clip(y + n)`` with noise ``clip(y + n) - y``. The idea
is GCBD's (Chen et al., CVPR 2018: noise blocks from smooth regions of noisy images, then a denoiser
trained on clean images plus those blocks), here without its GAN: the blocks themselves are the samples.
Written here because no library cuts noise blocks from a batch of patches.

Not in ISCL: an option (``TrainConfig.extractor_flat_noise_weight``), off in ``paper``.
"""

from __future__ import annotations

import torch

__all__ = ["BLOCK", "KEEP", "flat_block_noise"]

BLOCK = 16  # block side (px), 16 per 64² patch: small enough to find flat ones, large enough for CT's correlation
KEEP = 0.25  # the flattest quarter of the unclipped blocks (the block-variance screen BM3D's PSD estimate uses)


def flat_block_noise(x: torch.Tensor, generator: torch.Generator, block: int = BLOCK, keep: float = KEEP,
                     clip: float = 1.0, width: int | None = None, turn: bool = False,
                     guide: torch.Tensor | None = None, levels: int = 0,
                     clean: torch.Tensor | None = None) -> torch.Tensor | None:
    """A noise field the shape of ``x`` tiled from the flattest blocks of ``x``.

    Parameters
    ----------
    x : (N, 1, H, W) noisy patches on [-1, 1], H, W >= ``block`` (blocks are cut from the part that holds whole
        blocks; the tiled field is cropped to (H, W)).
    generator : the RNG that picks a block for every tile (seeded per step by the caller: resume is exact).
    block : block side in pixels.
    keep : fraction of the unclipped blocks, lowest variance first, that the tiles are drawn from.
    clip : a block with a pixel at or beyond ±clip is left out (clipped pixels carry no noise: CT air).
    width : block width in pixels (None: ``block``, square); a strip as wide as the patch keeps noise that is
        correlated along the rows (charging lines) whole instead of cutting it every ``block`` pixels.
    turn : for rectangular blocks of square patches trained with the 8 rotations/flips (half the patches hold
        their rows as columns): a patch whose pixels change less down the columns than along the rows is turned
        a quarter before its blocks are cut, so every strip runs along its lines, and each field is turned at
        random (so the fields hold lines both ways, as the patches do).
    guide : (N, 1, H, W) estimate of the clean patches (e.g. the bypass ``x - H(x)``) whose block variance ranks
        the blocks instead of ``x``'s: ranked on ``x``, the flattest blocks are also those whose noise happened
        to be weakest (with line noise a 16-px block holds only 16 line offsets), so the samples understate the
        noise; ranked on a denoised estimate, they are flat in the scene. None: rank on ``x``.
    levels : 0, or the number of intensity levels the noise is matched at, for noise whose strength follows the
        signal (shot noise; CT noise along the attenuation): the blocks are split by their mean into ``levels``
        equal-count levels and the flattest ``keep`` of each level is kept (ranked over all blocks, the flattest
        are also the darkest where noise grows with the signal), and each tile of the field is drawn from the
        kept blocks whose means lie nearest the mean of ``clean`` under that tile (a window of about one
        level's count of kept blocks).
    clean : (N, 1, H, W) the clean patches the field will be laid on; needed with ``levels``.

    Returns
    -------
    (N, 1, H, W) float32 tensor on ``x``'s device, each block zero-mean; None when no block is unclipped.
    """
    n, c, h, w = x.shape
    bh, bw = block, block if width is None else width
    if c != 1 or h < bh or w < bw:
        raise ValueError(f"flat_block_noise needs (N, 1, H, W) patches of at least {bh}x{bw} px, got {tuple(x.shape)}")
    x = x.detach().float()
    if levels and (clean is None or clean.shape != x.shape):
        got = None if clean is None else tuple(clean.shape)
        raise ValueError(f"flat_block_noise: levels={levels} needs the clean patches, shape {tuple(x.shape)}; "
                         f"got {got}")
    turn = turn and bh != bw and h == w  # (h >= bw then holds: w >= bw was checked)
    g = x if guide is None else guide.detach().float()
    if g.shape != x.shape:
        raise ValueError(f"flat_block_noise: guide {tuple(g.shape)} and patches {tuple(x.shape)} differ in shape")
    if turn:  # each patch turned so that its direction of least change (its lines, if any) runs along the rows
        across_rows = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
        along_rows = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
        turned = (across_rows < along_rows).view(n, 1, 1, 1)
        x, g = (torch.where(turned, a.transpose(-1, -2), a) for a in (x, g))
    blocks, ranked = _blocks(x, bh, bw), _blocks(g, bh, bw)
    unclipped = (blocks.abs() < clip).flatten(1).all(dim=1)
    if not bool(unclipped.any()):
        return None
    blocks, ranked = blocks[unclipped], ranked[unclipped]
    means = blocks.mean(dim=(1, 2))
    blocks = blocks - means.view(-1, 1, 1)
    rows, cols = -(-h // bh), -(-w // bw)
    flatness = ranked.var(dim=(1, 2), unbiased=False)
    if not levels:
        count = max(1, int(round(keep * len(blocks))))
        flattest = blocks[torch.argsort(flatness)[:count]]
        pick = torch.randint(len(flattest), (n * rows * cols,), generator=generator, device=generator.device)
        flip = None
    else:
        # the flip is drawn first: the tiles are matched to the clean patch as the field will lie on it
        flip = ((torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device).view(n, 1, 1, 1)
                if turn else None)
        flattest, kept_means = _flattest_per_level(blocks, means, flatness, levels, keep)
        target = clean.detach().float()
        if flip is not None:
            target = torch.where(flip, target.transpose(-1, -2), target)
        pad = (0, cols * bw - w, 0, rows * bh - h)  # partial edge tiles: the clean patch's edge repeated
        target = torch.nn.functional.pad(target, pad, mode="replicate") if any(pad) else target
        tile_means = torch.nn.functional.avg_pool2d(target, (bh, bw)).flatten()  # row-major tiles, per patch
        window = max(1, len(flattest) // levels)
        nearest = torch.searchsorted(kept_means, tile_means.contiguous()).cpu()
        offset = torch.randint(window, (len(nearest),), generator=generator, device=generator.device).cpu()
        pick = (nearest - window // 2 + offset).clamp(0, len(flattest) - 1)
    field = flattest[pick.to(x.device)].reshape(n, rows, cols, bh, bw).permute(0, 1, 3, 2, 4)
    field = field.reshape(n, 1, rows * bh, cols * bw)[..., :h, :w]
    if turn:
        if flip is None:
            flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device).view(n, 1, 1, 1)
        field = torch.where(flip, field.transpose(-1, -2), field)
    return field.contiguous()


def _flattest_per_level(blocks: torch.Tensor, means: torch.Tensor, flatness: torch.Tensor, levels: int,
                        keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The flattest ``keep`` of the (M, bh, bw) ``blocks`` within each of ``levels`` equal-count levels of their
    ``means``, sorted by mean, and those means (ascending, for ``searchsorted``)."""
    order = torch.argsort(means)
    kept = []
    for level in torch.tensor_split(order, min(levels, len(order))):
        count = max(1, int(round(keep * len(level))))
        kept.append(level[torch.argsort(flatness[level])[:count]])
    kept = torch.cat(kept)
    kept = kept[torch.argsort(means[kept])]
    return blocks[kept], means[kept].contiguous()


def _blocks(x: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """The whole ``bh`` x ``bw`` blocks of (N, 1, H, W) ``x`` as (M, bh, bw), row-major per patch."""
    n, _, h, w = x.shape
    rows, cols = h // bh, w // bw
    return (x[..., : rows * bh, : cols * bw].reshape(n, rows, bh, cols, bw).permute(0, 1, 3, 2, 4)
            .reshape(-1, bh, bw))
