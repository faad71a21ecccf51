"""Prediction on images of any size: whole-image, or tiled with whole-image BIN statistics.

BIN normalizes every feature map by the statistics of the image it is given (method.md §6), so
plain tiling changes the result: each tile would be normalized by its own statistics. Here the
statistics are made global by fixed-point passes over the tiles:

1. pass 1 runs every tile with its own statistics and accumulates, per BIN layer, the mean and
   variance of the layer's input over each tile's *owned* core (the cores partition the image);
2. every further pass normalizes each BIN layer with the whole-image statistics of the previous
   pass, and accumulates them again.

With statistics frozen, a tile's core equals the whole-image result once the overlap covers the
receptive field; the statistics of BIN layer ``l`` are exact after ``l`` passes, and in practice
converge in 2–3 (measured in ``benchmarks/tiling.py``). The last pass also produces the output,
blended across overlaps with smooth weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from iscl.data.tiling import Tile, blend_weights, plan_tiles, read_window
from iscl.nn.norm import BatchInstanceNorm, statistics_override

__all__ = ["predict_image", "TiledStatistics"]

OUTPUTS = ("denoised", "generator", "bypass", "noise")


@dataclass
class _Moments:
    """Running count, mean and M2 (sum of squared deviations) per channel, float64 (Chan et al.)."""

    n: float = 0.0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def add(self, core: torch.Tensor) -> None:
        count = float(core.shape[0] * core.shape[2] * core.shape[3])
        if count == 0:
            return
        var, mean = torch.var_mean(core, dim=(0, 2, 3), correction=0)
        mean, m2 = mean.double(), var.double() * count
        if self.mean is None:
            self.n, self.mean, self.m2 = count, mean, m2
            return
        total = self.n + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.n * count / total)
        self.n = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.m2 / self.n  # type: ignore[operator]


@dataclass
class TiledStatistics:
    """The BIN override used during a tiled pass (one image, one tile per call).

    ``frozen``: per-layer (mean, var) to normalize with (``None`` on the first pass: the tile's own
    statistics). Every call accumulates the layer input's moments over the tile's owned core.
    """

    frozen: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    moments: dict[int, _Moments] = field(default_factory=dict)
    window: tuple[int, int] = (0, 0)  # (H, W) of the tile's input window
    core: tuple[int, int, int, int] = (0, 0, 0, 0)  # owned core relative to the window, input pixels

    def __call__(self, layer: BatchInstanceNorm, h: torch.Tensor) -> torch.Tensor:
        sy, sx = self.window[0] // h.shape[2], self.window[1] // h.shape[3]
        y0, y1, x0, x1 = self.core
        key = id(layer)
        self.moments.setdefault(key, _Moments()).add(h[:, :, y0 // sy : y1 // sy, x0 // sx : x1 // sx].float())
        if self.frozen is None:
            layer.override = None
            try:
                return layer(h)
            finally:
                layer.override = self
        mean, var = self.frozen[key]
        # one image: batch and instance statistics are both the whole image's, so rho drops out
        scale = (layer.gamma.double() * torch.rsqrt(var + layer.eps)).to(h.dtype).view(1, -1, 1, 1)
        shift = layer.beta.view(1, -1, 1, 1) - scale * mean.to(h.dtype).view(1, -1, 1, 1)
        return torch.addcmul(shift, h, scale)

    def freeze(self) -> None:
        """Use the accumulated statistics from now on and start accumulating afresh."""
        self.frozen = {k: m.result() for k, m in self.moments.items()}
        self.moments = {}


def _whole(F_net: nn.Module, H_net: nn.Module, x: np.ndarray, gamma: float, outputs: tuple[str, ...],
           device: torch.device) -> dict[str, np.ndarray]:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(device)
    res: dict[str, np.ndarray] = {}
    with torch.no_grad():
        noise = H_net(t)
        bypass = t - noise
        if "noise" in outputs:
            res["noise"] = noise[0, 0].float().cpu().numpy()
        if "bypass" in outputs:
            res["bypass"] = bypass[0, 0].float().cpu().numpy()
        if "generator" in outputs or "denoised" in outputs:
            f = F_net(t)
            if "generator" in outputs:
                res["generator"] = f[0, 0].float().cpu().numpy()
            if "denoised" in outputs:
                res["denoised"] = (gamma * f + (1 - gamma) * bypass).clamp_(-1, 1)[0, 0].float().cpu().numpy()
    return res


def predict_image(F_net: nn.Module, H_net: nn.Module, image: np.ndarray, *, gamma: float = 0.5,
                  outputs: tuple[str, ...] = ("denoised",), tile: int | None = None, overlap: int = 32,
                  passes: int = 3, device: str | torch.device = "cpu",
                  on_tile: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """ISCL outputs for one 2-D image already normalized to [-1, 1].

    Parameters
    ----------
    image : (H, W) float32 on [-1, 1] (a memmap is fine: only windows are read).
    outputs : any of ``denoised``, ``generator`` (F(x)), ``bypass`` (x - H(x)), ``noise`` (H(x)).
    tile : window side; ``None`` or ≥ the image: one whole-image pass (exact, memory ∝ image).
    overlap : minimum overlap of neighbouring windows (pixels); blending ramps over it.
    passes : tiled passes (≥ 1); 1 = each tile normalized by its own statistics (like tiling the
        original code), ≥ 2 = whole-image statistics from the previous pass.
    on_tile : progress callback ``(done, total)`` over all passes.

    Returns
    -------
    dict of (H, W) float32 arrays in [-1, 1] units.
    """
    bad = set(outputs) - set(OUTPUTS)
    if bad:
        raise ValueError(f"unknown outputs {sorted(bad)}; expected some of {OUTPUTS}")
    device = torch.device(device)
    h, w = image.shape
    if tile is None or (h <= tile and w <= tile):
        return _whole(F_net, H_net, image, gamma, outputs, device)
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    hp, wp = h + (-h) % 4, w + (-w) % 4  # the generator's padded size
    tiles = plan_tiles(hp, wp, tile, overlap)
    stats_F, stats_H = TiledStatistics(), TiledStatistics()
    need_F = "generator" in outputs or "denoised" in outputs
    acc = {k: np.zeros((h, w), np.float32) for k in outputs}
    weight = np.zeros((h, w), np.float32)
    total, done = passes * len(tiles), 0
    with torch.no_grad(), statistics_override(F_net, stats_F), statistics_override(H_net, stats_H):
        for p in range(passes):
            last = p == passes - 1
            if p > 0:
                stats_F.freeze()
                stats_H.freeze()
            for t in tiles:
                _run_tile(F_net, H_net, image, t, tiles, (h, w), stats_F, stats_H, need_F, gamma,
                          outputs if last else (), acc, weight, device)
                done += 1
                if on_tile is not None:
                    on_tile(done, total)
    return {k: v / weight for k, v in acc.items()}


def _run_tile(F_net: nn.Module, H_net: nn.Module, image: np.ndarray, t: Tile, tiles: list[Tile],
              size: tuple[int, int], stats_F: TiledStatistics, stats_H: TiledStatistics, run_F: bool, gamma: float,
              outputs: tuple[str, ...], acc: dict[str, np.ndarray], weight: np.ndarray, device: torch.device) -> None:
    h, w = size
    window = read_window(image, t.y0, t.y1, t.x0, t.x1)  # padded coords: rows past h mirrored, as F pads
    x = torch.from_numpy(window)[None, None].to(device)
    # H sees the true image only (no padding in whole-image mode), so clip its window at the border
    hy, hx = min(t.y1, h) - t.y0, min(t.x1, w) - t.x0
    xh = x[..., :hy, :hx]
    stats_H.window = (hy, hx)
    stats_H.core = (t.oy0 - t.y0, min(t.oy1, h) - t.y0, t.ox0 - t.x0, min(t.ox1, w) - t.x0)
    noise = H_net(xh)
    f = None
    if run_F:
        stats_F.window = (t.y1 - t.y0, t.x1 - t.x0)
        stats_F.core = (t.oy0 - t.y0, t.oy1 - t.y0, t.ox0 - t.x0, t.ox1 - t.x0)
        f = F_net(x)[..., :hy, :hx]
    if not outputs:
        return
    bw = blend_weights(t, tiles)[:hy, :hx]
    ys, xs = slice(t.y0, t.y0 + hy), slice(t.x0, t.x0 + hx)
    bypass = xh - noise
    values = {"noise": noise, "bypass": bypass, "generator": f}
    if "denoised" in outputs:
        values["denoised"] = (gamma * f + (1 - gamma) * bypass).clamp_(-1, 1)  # type: ignore[operator]
    for k in outputs:
        acc[k][ys, xs] += values[k][0, 0].float().cpu().numpy() * bw
    weight[ys, xs] += bw
