"""Prediction on images of any size: whole-image, or tiled with whole-image BIN statistics.

BIN normalizes every feature map by the statistics of the image it is given (method.md §6), so
plain tiling changes the result: each tile would be normalized by its own statistics. Tiled
prediction here first measures the whole-image statistics, one BIN layer at a time, in forward order:

* for layer ``l`` every statistics tile is run through the network up to layer ``l`` only, with
  layers ``< l`` normalized by the whole-image statistics already measured; the moments of layer
  ``l``'s input are accumulated over each tile's *owned* core (the cores partition the image);
* then the output pass runs every tile with all statistics fixed, and blends overlapping tiles with
  smooth weights.

With every tile used for the statistics this is exact up to the tiles' context (their overlap): the
result equals whole-image prediction (``benchmarks/tiling.py`` measures the difference). The cost is
about ``L/2`` forward passes per statistics tile (``L`` = BIN layers), so for very large images the
statistics are estimated from at most ``stats_tiles`` tiles spread evenly over the image, and the
full image is only run once, in the output pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from iscl.data.tiling import Tile, blend_weights, plan_tiles, read_window
from iscl.nn.norm import BatchInstanceNorm, statistics_override
from iscl.precision import autocast, check_precision

__all__ = ["predict_image", "TiledStatistics"]

OUTPUTS = ("denoised", "generator", "bypass", "noise")


@dataclass
class _Moments:
    """Running count, mean and M2 (sum of squared deviations) per channel, float64 (Chan et al.)."""

    n: float = 0.0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def add(self, core: torch.Tensor) -> None:
        core = core.float()
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


class _StopForward(Exception):
    """Raised inside a statistics pass once the target layer's moments are taken."""


@dataclass
class TiledStatistics:
    """The BIN override used during tiled prediction of one image (one tile per network call).

    Layers in ``frozen`` are normalized with those whole-image (mean, var) statistics: with one
    image, batch and instance statistics are both the whole image's, so ``rho`` drops out. When the
    call reaches ``target``, the moments of its input over the tile's owned core are accumulated and
    the forward pass stops.
    """

    frozen: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    target: int | None = None
    moments: _Moments = field(default_factory=_Moments)
    window: tuple[int, int] = (0, 0)  # (H, W) of the tile's input window
    core: tuple[int, int, int, int] = (0, 0, 0, 0)  # owned core relative to the window, input pixels

    def __call__(self, layer: BatchInstanceNorm, h: torch.Tensor) -> torch.Tensor:
        key = id(layer)
        if key == self.target:
            sy, sx = self.window[0] // h.shape[2], self.window[1] // h.shape[3]
            y0, y1, x0, x1 = self.core
            self.moments.add(h[:, :, y0 // sy : y1 // sy, x0 // sx : x1 // sx])
            raise _StopForward
        if key not in self.frozen:
            raise RuntimeError("tiled prediction reached a BIN layer without statistics; this is a bug")
        mean, var = self.frozen[key]
        # normalized in fp32 (like BatchInstanceNorm) even when the convolutions run in bf16/fp16
        scale = (layer.gamma.double() * torch.rsqrt(var + layer.eps)).float().view(1, -1, 1, 1)
        shift = layer.beta.view(1, -1, 1, 1) - scale * mean.float().view(1, -1, 1, 1)
        return torch.addcmul(shift, h.float(), scale).to(h.dtype)


def _spread(items: list, k: int) -> list:
    """At most ``k`` items, evenly spread over the list (all of them when ``k >= len``)."""
    if k >= len(items):
        return items
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in idx]


def _whole(F_net: nn.Module, H_net: nn.Module, x: np.ndarray, gamma: float, outputs: tuple[str, ...],
           device: torch.device) -> dict[str, np.ndarray]:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(device)
    res: dict[str, np.ndarray] = {}
    with torch.no_grad():
        noise = H_net(t).float()
        bypass = t - noise
        if "noise" in outputs:
            res["noise"] = noise[0, 0].float().cpu().numpy()
        if "bypass" in outputs:
            res["bypass"] = bypass[0, 0].float().cpu().numpy()
        if "generator" in outputs or "denoised" in outputs:
            f = F_net(t).float()
            if "generator" in outputs:
                res["generator"] = f[0, 0].float().cpu().numpy()
            if "denoised" in outputs:
                res["denoised"] = (gamma * f + (1 - gamma) * bypass).clamp_(-1, 1)[0, 0].float().cpu().numpy()
    return res


def predict_image(F_net: nn.Module, H_net: nn.Module, image: np.ndarray, *, gamma: float = 0.5,
                  outputs: tuple[str, ...] = ("denoised",), tile: int | None = None, overlap: int = 32,
                  stats_tiles: int = 16, device: str | torch.device = "cpu", precision: str = "fp32",
                  on_tile: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """ISCL outputs for one 2-D image already normalized to [-1, 1].

    Parameters
    ----------
    image : (H, W) float32 on [-1, 1] (a memmap is fine: only windows are read).
    outputs : any of ``denoised``, ``generator`` (F(x)), ``bypass`` (x - H(x)), ``noise`` (H(x)).
    tile : window side; ``None`` or ≥ the image: one whole-image pass (exact, memory ∝ image).
    overlap : minimum overlap of neighbouring windows (pixels); blending ramps over it.
    stats_tiles : at most this many tiles (spread evenly) measure the whole-image statistics; with
        all tiles (the default covers images up to 4 × 4 tiles) tiled equals whole-image prediction.
    precision : ``fp32``, or ``bf16``/``fp16`` to run the convolutions under autocast (BIN statistics,
        blending and outputs stay fp32; see :mod:`iscl.precision`).
    on_tile : progress callback ``(done, total)`` over the statistics and output passes.

    Returns
    -------
    dict of (H, W) float32 arrays in [-1, 1] units.
    """
    bad = set(outputs) - set(OUTPUTS)
    if bad:
        raise ValueError(f"unknown outputs {sorted(bad)}; expected some of {OUTPUTS}")
    device = torch.device(device)
    check_precision(precision, device)
    with autocast(precision, device):
        return _predict(F_net, H_net, image, gamma, outputs, tile, overlap, stats_tiles, device, on_tile)


def _predict(F_net: nn.Module, H_net: nn.Module, image: np.ndarray, gamma: float, outputs: tuple[str, ...],
             tile: int | None, overlap: int, stats_tiles: int, device: torch.device,
             on_tile: Callable[[int, int], None] | None) -> dict[str, np.ndarray]:
    h, w = image.shape
    if tile is None or (h <= tile and w <= tile):
        return _whole(F_net, H_net, image, gamma, outputs, device)
    hp, wp = h + (-h) % 4, w + (-w) % 4  # the generator's padded size
    tiles = plan_tiles(hp, wp, tile, overlap)
    stat_tiles = _spread(tiles, stats_tiles)
    need_F = "generator" in outputs or "denoised" in outputs
    nets = [(H_net, TiledStatistics(), False)] + ([(F_net, TiledStatistics(), True)] if need_F else [])
    layer_lists = [[m for m in net.modules() if isinstance(m, BatchInstanceNorm)] for net, _, _ in nets]
    total = sum(len(ls) for ls in layer_lists) * len(stat_tiles) + len(tiles)
    done = 0
    acc = {k: np.zeros((h, w), np.float32) for k in outputs}
    weight = np.zeros((h, w), np.float32)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for net, stats, _ in nets:
            stack.enter_context(statistics_override(net, stats))
        # 1. whole-image statistics, one BIN layer at a time (module order = forward order)
        for (net, stats, is_F), layers in zip(nets, layer_lists):
            for layer in layers:
                stats.target, stats.moments = id(layer), _Moments()
                for t in stat_tiles:
                    x, _ = _window(image, t, (h, w), stats, is_F, device)
                    try:
                        net(x)
                    except _StopForward:
                        pass
                    done += 1
                    if on_tile is not None:
                        on_tile(done, total)
                stats.frozen[id(layer)] = stats.moments.result()
            stats.target = None
        # 2. the output pass with all statistics fixed
        F_stats = nets[1][1] if need_F else None
        for t in tiles:
            _run_tile(F_net, H_net, image, t, tiles, (h, w), F_stats, nets[0][1], gamma, outputs, acc, weight, device)
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return {k: v / weight for k, v in acc.items()}


def _window(image: np.ndarray, t: Tile, size: tuple[int, int], stats: TiledStatistics, is_F: bool,
            device: torch.device) -> tuple[torch.Tensor, tuple[int, int]]:
    """The network input for tile ``t`` and the clipped (H, W) of the true image inside it.

    F sees padded coordinates (rows past the image mirrored, as the generator pads to a multiple of 4);
    H sees the true image only (it does not pad in whole-image mode), so its window is clipped.
    Sets the statistics' window and owned core to match.
    """
    h, w = size
    hy, hx = min(t.y1, h) - t.y0, min(t.x1, w) - t.x0
    x = torch.from_numpy(read_window(image, t.y0, t.y1, t.x0, t.x1))[None, None].to(device)
    if is_F:
        stats.window = (t.y1 - t.y0, t.x1 - t.x0)
        stats.core = (t.oy0 - t.y0, t.oy1 - t.y0, t.ox0 - t.x0, t.ox1 - t.x0)
        return x, (hy, hx)
    stats.window = (hy, hx)
    stats.core = (t.oy0 - t.y0, min(t.oy1, h) - t.y0, t.ox0 - t.x0, min(t.ox1, w) - t.x0)
    return x[..., :hy, :hx], (hy, hx)


def _run_tile(F_net: nn.Module, H_net: nn.Module, image: np.ndarray, t: Tile, tiles: list[Tile],
              size: tuple[int, int], stats_F: TiledStatistics | None, stats_H: TiledStatistics, gamma: float,
              outputs: tuple[str, ...], acc: dict[str, np.ndarray], weight: np.ndarray, device: torch.device) -> None:
    xh, (hy, hx) = _window(image, t, size, stats_H, False, device)
    noise = H_net(xh).float()
    f = None
    if stats_F is not None:
        x, _ = _window(image, t, size, stats_F, True, device)
        f = F_net(x)[..., :hy, :hx].float()
    bw = blend_weights(t, tiles)[:hy, :hx]
    ys, xs = slice(t.y0, t.y0 + hy), slice(t.x0, t.x0 + hx)
    bypass = xh - noise
    values = {"noise": noise, "bypass": bypass, "generator": f}
    if "denoised" in outputs:
        values["denoised"] = (gamma * f + (1 - gamma) * bypass).clamp_(-1, 1)  # type: ignore[operator]
    for k in outputs:
        acc[k][ys, xs] += values[k][0, 0].float().cpu().numpy() * bw
    weight[ys, xs] += bw
