"""A Noise2Void-style blind-spot denoiser (Krull, Buchholz & Jug, CVPR 2019): self-supervised on noisy images.

Training sees the noisy pool only. In every patch about ``mask_fraction`` of the pixels (one random
pixel per ``s×s`` box of a grid, N2V's stratified sampling) are replaced by a random other pixel of
their ``(2r+1)×(2r+1)`` neighbourhood, and the loss is the mean squared error between the network's
output and the *original* noisy values at those pixels only. With noise that is independent from
pixel to pixel and zero-mean, the best such prediction is the clean value; with structured (spatially
correlated) noise — EM film/charge noise, CT streaks — the neighbours carry the noise too and the
network learns to reproduce it. That is the assumption ISCL is meant to escape (method.md §6).

Network: ISCL's generator (same width, depth, initialisation, optimiser and SWA as ISCL's F), so the
comparison isolates the training signal. Its ``tanh`` output suits N2V: the target, the expected
noisy value given the context, lies on [-1, 1] like the data. The original N2V uses a U-Net; ours
is the same kind of encoder-decoder with a receptive field well beyond the 5×5 replacement window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from iscl.data.patches import PatchSampler
from iscl.methods.base import SingleGeneratorMethod, config_summary, to_network

__all__ = ["BlindSpot", "blind_spot_mask"]


def blind_spot_mask(batch: np.ndarray, rng: np.random.Generator, fraction: float = 1.0 / 64,
                    radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Mask a batch of patches the Noise2Void way.

    Parameters
    ----------
    batch : (B, 1, P, P) float32
        Noisy patches (any units).
    rng : numpy.random.Generator
        Source of the masked positions and of the replacing neighbours.
    fraction : float
        Target share of masked pixels; the grid box side is ``s = round(1/sqrt(fraction))`` and one
        pixel per box is masked (1/64 ≈ 1.6 % by default: one per 8×8 box).
    radius : int
        Neighbours are drawn uniformly from the ``(2r+1)²`` window around the pixel, excluding the
        pixel itself; an offset that leaves the patch is mirrored (``-d`` instead of ``d``).

    Returns
    -------
    masked : (B, 1, P, P) float32
        A copy of ``batch`` with the masked pixels replaced by their neighbours' values.
    mask : (B, 1, P, P) float32
        1 at masked pixels, 0 elsewhere.
    """
    if not 0.0 < fraction <= 0.25:
        raise ValueError(f"fraction must be in (0, 0.25], got {fraction}")
    b, c, h, w = batch.shape
    if not 1 <= radius < min(h, w) / 2:
        raise ValueError(f"radius must be >= 1 and below half the patch side, got {radius}")
    s = max(2, int(round(1.0 / np.sqrt(fraction))))
    # one position per s×s box of a grid covering the patch (boxes cut by the border are kept, and
    # their pixel is drawn inside the patch)
    gy, gx = np.meshgrid(np.arange(0, h, s), np.arange(0, w, s), indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    n = gy.size
    ys = np.minimum(gy[None] + rng.integers(0, s, (b, n)), h - 1)
    xs = np.minimum(gx[None] + rng.integers(0, s, (b, n)), w - 1)
    # neighbour offsets in the window, the centre excluded
    offsets = np.array([(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                        if (dy, dx) != (0, 0)])
    pick = offsets[rng.integers(0, len(offsets), (b, n))]
    ny = _mirror(ys, pick[..., 0], h)
    nx = _mirror(xs, pick[..., 1], w)
    bi = np.repeat(np.arange(b), n).reshape(b, n)
    masked = batch.copy()
    mask = np.zeros_like(batch)
    masked[bi, 0, ys, xs] = batch[bi, 0, ny, nx]
    mask[bi, 0, ys, xs] = 1.0
    return masked, mask


def _mirror(i: np.ndarray, d: np.ndarray, n: int) -> np.ndarray:
    """``i + d``, or ``i - d`` where that leaves [0, n): never ``i`` itself for ``d != 0`` (``radius < n/2``)."""
    j = i + d
    return np.where((j < 0) | (j > n - 1), i - d, j)


class _MaskedStream:
    def __init__(self, sampler: PatchSampler, rng: np.random.Generator, fraction: float, radius: int):
        self.sampler, self.rng, self.fraction, self.radius = sampler, rng, fraction, radius

    def next(self, batch_size: int) -> list[torch.Tensor]:
        x = self.sampler.next_batch(batch_size)
        masked, mask = blind_spot_mask(x, self.rng, self.fraction, self.radius)
        return [torch.from_numpy(masked), torch.from_numpy(x), torch.from_numpy(mask)]


class BlindSpot(SingleGeneratorMethod):
    """Noise2Void-style masked-pixel training on the noisy images only.

    Parameters
    ----------
    config : str or Config
        Preset or Config for the generator's architecture and the optimiser (as ISCL).
    network : dict, optional
        Overrides of ``config.network``.
    mask_fraction : float
        Share of masked pixels per patch (N2V uses about 0.2–2 %; default 1/64).
    radius : int
        Neighbourhood radius for the replacement values (N2V: 5×5 window, radius 2).
    weights : ``"swa"`` or ``"raw"``
        Predict with the SWA-averaged or the last weights.
    name : str
        Row name.
    """

    needs = frozenset({"noisy"})

    def __init__(self, config: Any = "cpu", *, network: dict[str, Any] | None = None,
                 mask_fraction: float = 1.0 / 64, radius: int = 2, weights: str = "swa", name: str = "blindspot"):
        super().__init__(config, network=network, weights=weights, name=name)
        if not 0.0 < mask_fraction <= 0.25:
            raise ValueError(f"mask_fraction must be in (0, 0.25], got {mask_fraction}")
        self.mask_fraction = float(mask_fraction)
        self.radius = int(radius)

    def _batches(self, cfg: Any, clean: Any, noisy: list[np.ndarray], pairs: Any) -> _MaskedStream:
        t = cfg.train
        sampler = PatchSampler([to_network(a) for a in noisy], t.patch_size, t.augment, seed=t.seed, stream=1)
        # masks have their own stream, so the patch order matches the other methods' noisy stream
        return _MaskedStream(sampler, np.random.default_rng([t.seed, 2]), self.mask_fraction, self.radius)

    def _loss(self, net: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        masked, target, mask = batch
        out = net(masked)
        return ((out - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(prediction="N(x)", loss="MSE on masked pixels", mask_fraction=self.mask_fraction,
                 radius=self.radius, weights=self.weights, config=config_summary(self))
        return d
