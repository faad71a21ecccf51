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
                     clip: float = 1.0) -> torch.Tensor | None:
    """A noise field the shape of ``x`` tiled from the flattest blocks of ``x``.

    Parameters
    ----------
    x : (N, 1, H, W) noisy patches on [-1, 1], H, W >= ``block`` (blocks are cut from the part that holds whole
        blocks; the tiled field is cropped to (H, W)).
    generator : the RNG that picks a block for every tile (seeded per step by the caller: resume is exact).
    block : block side in pixels.
    keep : fraction of the unclipped blocks, lowest variance first, that the tiles are drawn from.
    clip : a block with a pixel at or beyond ±clip is left out (clipped pixels carry no noise: CT air).

    Returns
    -------
    (N, 1, H, W) float32 tensor on ``x``'s device, each block zero-mean; None when no block is unclipped.
    """
    n, c, h, w = x.shape
    if c != 1 or h < block or w < block:
        raise ValueError(f"flat_block_noise needs (N, 1, H, W) patches of at least {block}² px, got {tuple(x.shape)}")
    x = x.detach().float()
    rows, cols = h // block, w // block  # blocks from the whole-block part; the tiling covers all and is cropped
    blocks = (x[..., : rows * block, : cols * block].reshape(n, rows, block, cols, block).permute(0, 1, 3, 2, 4)
              .reshape(-1, block, block))
    unclipped = (blocks.abs() < clip).flatten(1).all(dim=1)
    if not bool(unclipped.any()):
        return None
    blocks = blocks[unclipped]
    blocks = blocks - blocks.mean(dim=(1, 2), keepdim=True)
    count = max(1, int(round(keep * len(blocks))))
    flattest = blocks[torch.argsort(blocks.pow(2).mean(dim=(1, 2)))[:count]]
    rows, cols = -(-h // block), -(-w // block)
    pick = torch.randint(len(flattest), (n * rows * cols,), generator=generator, device=generator.device)
    field = flattest[pick.to(x.device)].reshape(n, rows, cols, block, block).permute(0, 1, 3, 2, 4)
    return field.reshape(n, 1, rows * block, cols * block)[..., :h, :w].contiguous()
