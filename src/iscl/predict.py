"""Prediction on images of any size: whole-image, or tiled with whole-image BIN statistics.

BIN normalizes every feature map by the statistics of the image it is given (method.md §6), so
plain tiling changes the result: each tile would be normalized by its own statistics. Tiled
prediction here first measures the whole-image statistics, one BIN layer at a time, in forward order:

* every statistics tile's forward pass runs up to the first BIN layer whose statistics are not yet
  known and takes the moments of that layer's input over the tile's *owned* core (the cores
  partition the image); once all tiles have done so, the layer's whole-image statistics are final;
* each pass then *continues from where it paused* (its activation normalized with the final
  statistics) to the next BIN layer, so measuring all ``L`` layers costs about one forward pass per
  statistics tile, and the passes that reach the end give those tiles' outputs;
* the output pass runs the remaining tiles with all statistics fixed, and blends overlapping tiles
  with smooth weights.

A forward pass is paused inside the network's own ``forward`` (skip connections and all), so each
statistics tile runs on its own thread, and the threads take turns: exactly one runs at a time, in
tile order. The activations the paused passes hold are bounded by ``stats_memory``; a tile that does
not fit is instead re-run from its input for every layer (about ``L/2`` passes, the memory of one).

With every tile used for the statistics this is exact up to the tiles' context (their overlap): the
result equals whole-image prediction (``benchmarks/tiling.py`` measures the difference). For very
large images the statistics are estimated from at most ``stats_tiles`` tiles spread evenly over the
image.

Test-time augmentation (``tta=True``) averages the outputs over the 8 rotations and flips of the image.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from iscl.data.tiling import Tile, blend_weights, plan_tiles, read_window
from iscl.engine.iscl import blend
from iscl.nn.norm import BatchInstanceNorm, statistics_override
from iscl.precision import autocast, check_precision

__all__ = ["predict_image", "TiledStatistics"]

OUTPUTS = ("denoised", "generator", "bypass", "noise")

# the 8 dihedral transforms of an image, as (quarter turns, flip left-right first)
_DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


@dataclass
class _Moments:
    """Running count, mean and M2 (sum of squared deviations) per channel, float64 (Chan et al.)."""

    n: float = 0.0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def add(self, core: torch.Tensor) -> None:
        """Add the values of ``core`` (N, C, h, w), a view into an activation, per channel."""
        core = core.float()
        count = float(core.shape[0] * core.shape[2] * core.shape[3])
        if count == 0:
            return
        # two passes in fp32: ~6x faster than torch.var_mean on CPU and as accurate (~1e-7 relative);
        # the mean goes through row means because a reduction over a strided view sums less accurately
        mean = core.mean(dim=3, keepdim=True).mean(dim=(0, 2), keepdim=True)
        var = (core - mean).square_().mean(dim=(0, 2, 3))
        mean, m2 = mean.view(-1).double(), var.double() * count
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
    """Raised inside a statistics pass to end it early (its moments are taken, it is not kept)."""


@dataclass
class TiledStatistics:
    """The BIN override used during tiled prediction of one image (one tile per network call).

    Layers in ``frozen`` are normalized with those whole-image (mean, var) statistics: with one
    image, batch and instance statistics are both the whole image's, so ``rho`` drops out. In a
    statistics stage (``moments`` and ``pause`` set), a call that reaches a layer *not* in ``frozen``
    accumulates the moments of that layer's input over the tile's owned core into ``moments``,
    records the layer in ``reached`` and then calls ``pause(h)``, which returns once the layer's
    statistics are in ``frozen`` (the pass then continues) or raises :class:`_StopForward`.
    ``window``, ``core`` and ``pause`` describe the tile being run.
    """

    frozen: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    moments: _Moments | None = None
    reached: int | None = None  # id of the layer this statistics stage measures
    pause: Callable[[torch.Tensor], None] | None = None
    window: tuple[int, int] = (0, 0)  # (H, W) of the tile's input window
    core: tuple[int, int, int, int] = (0, 0, 0, 0)  # owned core relative to the window, input pixels

    def __call__(self, layer: BatchInstanceNorm, h: torch.Tensor) -> torch.Tensor:
        key = id(layer)
        if key not in self.frozen:
            self._take_moments(key, h)
        mean, var = self.frozen[key]
        # normalized in fp32 (like BatchInstanceNorm) even when the convolutions run in bf16/fp16
        scale = (layer.gamma.double() * torch.rsqrt(var + layer.eps)).float().view(1, -1, 1, 1)
        shift = layer.beta.view(1, -1, 1, 1) - scale * mean.float().view(1, -1, 1, 1)
        if layer.inplace and h.dtype == torch.float32 and not torch.is_grad_enabled():
            # the input is a fresh convolution output (see BatchInstanceNorm): overwrite it, same arithmetic
            return torch.addcmul(shift, h, scale, out=h)
        return torch.addcmul(shift, h.float(), scale).to(h.dtype)

    def _take_moments(self, key: int, h: torch.Tensor) -> None:
        if self.moments is None or self.pause is None:
            raise RuntimeError("tiled prediction reached a BIN layer without statistics; this is a bug")
        if self.reached is None:
            self.reached = key
        elif self.reached != key:
            raise RuntimeError("statistics tiles reached different BIN layers first: tiled prediction needs "
                               "every input to pass the BIN layers in the same order")
        sy, sx = self.window[0] // h.shape[2], self.window[1] // h.shape[3]
        y0, y1, x0, x1 = self.core
        self.moments.add(h[:, :, y0 // sy : y1 // sy, x0 // sx : x1 // sx])
        self.pause(h)


class _PausablePass:
    """One network call on one tile, run on its own thread so that it can wait at a BIN layer.

    :meth:`step` hands control to the pass and blocks until the pass hands it back, in
    :meth:`pause` (at a BIN layer without statistics, the pass keeping everything its ``forward``
    holds: activation, input, skip connections) or by ending (``output`` set, or stopped). So exactly
    one thread runs at a time: the tiles are processed in a fixed order (moments accumulate exactly
    as in a sequential loop) and never compete for torch's thread pool.

    ``held`` maps every paused pass of one statistics pass to the bytes of the activation it paused
    at; a pass that would take the total over ``budget`` stops instead of pausing.
    """

    def __init__(self, net: nn.Module, x: torch.Tensor, held: dict[_PausablePass, int], budget: int,
                 precision: str, device: torch.device):
        self.output: torch.Tensor | None = None
        self.alive = True  # not yet ended: can be stepped
        self._held, self._budget = held, budget
        self._error: BaseException | None = None
        self._closing = False
        self._run_turn, self._main_turn = threading.Semaphore(0), threading.Semaphore(0)
        self._thread = threading.Thread(target=self._run, args=(net, x, precision, device), daemon=True,
                                        name="iscl-statistics-tile")
        self._thread.start()

    def step(self) -> None:
        """Run the pass until it pauses or ends; re-raises an error it ended with."""
        self._run_turn.release()
        self._main_turn.acquire()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """End the pass (a paused one stops at its BIN layer), releasing what it holds."""
        if self.alive:
            self._closing = True
            self._run_turn.release()
        self._thread.join()

    def pause(self, h: torch.Tensor) -> None:
        """Called on the pass's thread at a BIN layer: wait until its statistics are final."""
        need = h.numel() * h.element_size()
        if sum(n for p, n in self._held.items() if p is not self) + need > self._budget:
            raise _StopForward
        self._held[self] = need
        self._main_turn.release()
        self._run_turn.acquire()
        if self._closing:
            raise _StopForward

    def _run(self, net: nn.Module, x: torch.Tensor, precision: str, device: torch.device) -> None:
        self._run_turn.acquire()
        try:
            if not self._closing:
                # grad mode and autocast are per thread: set them as the caller has them
                with torch.no_grad(), autocast(precision, device):
                    self.output = net(x)
        except _StopForward:
            pass
        except BaseException as e:  # handed to the caller by step()
            self._error = e
        finally:
            self._held.pop(self, None)
            self.alive = False
            self._main_turn.release()


def _measure_statistics(net: nn.Module, stats: TiledStatistics, image: np.ndarray, stat_tiles: list[Tile],
                        size: tuple[int, int], is_F: bool, budget: int, precision: str, device: torch.device,
                        progress: Callable[[], None]) -> dict[Tile, torch.Tensor]:
    """Fill ``stats.frozen`` with the whole-image statistics of every BIN layer ``net`` calls.

    ``net`` must already route its BIN layers through ``stats``. One stage per BIN layer plus a last
    one: in each, every statistics tile's pass runs on to the next layer without statistics (a
    paused pass resumes; any other starts from the tile's input), then that layer's statistics are
    final. Stages end once no pass reaches such a layer. ``progress`` is called once per tile and
    stage. Returns ``net``'s output (the whole window, (1, C, h, w)) for each statistics tile.
    """
    held: dict[_PausablePass, int] = {}
    paused: dict[Tile, _PausablePass] = {}
    outputs: dict[Tile, torch.Tensor] = {}
    try:
        while True:
            stats.moments, stats.reached = _Moments(), None
            for t in stat_tiles:
                run = paused.pop(t, None)
                if run is None:
                    run = _PausablePass(net, _tile_input(image, t, size, is_F, device), held, budget, precision,
                                        device)
                paused[t] = run  # until it is known to have ended (closed if anything fails)
                stats.window, stats.core = _tile_geometry(t, size, is_F)
                stats.pause = run.pause
                run.step()
                if not run.alive:
                    del paused[t]
                    run.close()  # join its thread: one still tearing down when the process exits aborts it
                    if run.output is not None:
                        outputs[t] = run.output
                progress()
            if stats.reached is None:  # every pass ran to the end: all statistics are known
                return outputs
            stats.frozen[stats.reached] = stats.moments.result()
    finally:
        for run in paused.values():
            run.close()
        stats.moments = stats.reached = stats.pause = None


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
        if _needs_F(outputs, gamma):
            f = F_net(t).float()
            if "generator" in outputs:
                res["generator"] = f[0, 0].float().cpu().numpy()
            if "denoised" in outputs:
                res["denoised"] = blend(f, bypass, gamma)[0, 0].cpu().numpy()
        elif "denoised" in outputs:
            res["denoised"] = blend(None, bypass, gamma)[0, 0].cpu().numpy()
    return res


def _needs_F(outputs: tuple[str, ...], gamma: float) -> bool:
    """Whether F must run: for its own output, or for a blend with γ > 0 (at γ = 0 the blend is x - H(x))."""
    return "generator" in outputs or ("denoised" in outputs and gamma != 0)


def predict_image(F_net: nn.Module, H_net: nn.Module, image: np.ndarray, *, gamma: float = 0.5,
                  outputs: tuple[str, ...] = ("denoised",), tile: int | None = None, overlap: int = 32,
                  stats_tiles: int = 16, stats_memory: int = 2**30, device: str | torch.device = "cpu",
                  precision: str = "fp32", tta: bool = False,
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
    stats_memory : bytes of activations that statistics tiles may hold while paused at a BIN layer
        (each counted as the activation it paused at; its input and skip connections come on top).
        Tiles that fit cost about one forward pass each for the statistics and give their outputs
        from it; the others are re-run from their input for every BIN layer (``L/2`` passes).
        The default (1 GiB) fits 16 tiles of 512² for the paper networks (32 MiB each); ``0``
        re-runs every tile (least memory, slowest; the same result).
    precision : ``fp32``, or ``bf16``/``fp16`` to run the convolutions under autocast (BIN statistics,
        blending and outputs stay fp32; see :mod:`iscl.precision`).
    tta : test-time augmentation: predict each of the 8 rotations/flips of the image (whole or tiled,
        as without it), transform the outputs back and average them (in float64). ``denoised`` is
        the mean of the 8 clipped blends, so it stays on [-1, 1]. 8× the time.
    on_tile : progress callback ``(done, total)`` over the statistics and output passes (counting
        each statistics tile once per BIN layer of each network and once as its pass ends, and each
        tile once in the output pass; with ``tta`` over all 8 predictions).

    Returns
    -------
    dict of (H, W) float32 arrays in [-1, 1] units.
    """
    bad = set(outputs) - set(OUTPUTS)
    if bad:
        raise ValueError(f"unknown outputs {sorted(bad)}; expected some of {OUTPUTS}")
    device = torch.device(device)
    check_precision(precision, device)

    def predict(x: np.ndarray, progress: Callable[[int, int], None] | None) -> dict[str, np.ndarray]:
        return _predict(F_net, H_net, x, gamma, outputs, tile, overlap, stats_tiles, stats_memory, precision,
                        device, progress)

    with autocast(precision, device):
        if not tta:
            return predict(image, on_tile)
        sums: dict[str, np.ndarray] = {}
        for i, (k, flip) in enumerate(_DIHEDRAL):
            # every transform has the same number of tiles, so progress runs on over the 8 predictions
            progress = None if on_tile is None else (lambda done, total, i=i: on_tile(i * total + done, 8 * total))
            view = np.rot90(image[:, ::-1] if flip else image, k)  # a view: memmaps stay lazy
            for key, out in predict(view, progress).items():
                back = np.rot90(out, -k)
                back = back[:, ::-1] if flip else back
                if key in sums:
                    sums[key] += back
                else:
                    sums[key] = back.astype(np.float64)
        return {key: (v / len(_DIHEDRAL)).astype(np.float32) for key, v in sums.items()}


def _predict(F_net: nn.Module, H_net: nn.Module, image: np.ndarray, gamma: float, outputs: tuple[str, ...],
             tile: int | None, overlap: int, stats_tiles: int, stats_memory: int, precision: str,
             device: torch.device, on_tile: Callable[[int, int], None] | None) -> dict[str, np.ndarray]:
    h, w = image.shape
    if tile is None or (h <= tile and w <= tile):
        return _whole(F_net, H_net, image, gamma, outputs, device)
    hp, wp = h + (-h) % 4, w + (-w) % 4  # the generator's padded size
    tiles = plan_tiles(hp, wp, tile, overlap)
    stat_tiles = _spread(tiles, stats_tiles)
    nets = [(H_net, False)] + ([(F_net, True)] if _needs_F(outputs, gamma) else [])
    n_layers = [sum(isinstance(m, BatchInstanceNorm) for m in net.modules()) for net, _ in nets]
    total = sum(n + 1 for n in n_layers) * len(stat_tiles) + len(tiles)
    done = 0

    def progress() -> None:
        nonlocal done
        done += 1
        if on_tile is not None:
            on_tile(done, total)

    acc = {k: np.zeros((h, w), np.float32) for k in outputs}
    weight = np.zeros((h, w), np.float32)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        # 1. whole-image statistics, which also give the statistics tiles' outputs
        ready: list[dict[Tile, torch.Tensor]] = []
        for net, is_F in nets:
            stats = TiledStatistics()
            stack.enter_context(statistics_override(net, stats))
            ready.append(_measure_statistics(net, stats, image, stat_tiles, (h, w), is_F, stats_memory, precision,
                                             device, progress))
        # 2. the output pass with all statistics fixed, in tile order (the blend sums in a fixed order)
        for t in tiles:
            (hy, hx), _ = _tile_geometry(t, (h, w), False)
            xh = _tile_input(image, t, (h, w), False, device)
            noise = ready[0].pop(t, None)
            noise = (H_net(xh) if noise is None else noise).float()
            f = None
            if len(nets) == 2:
                f = ready[1].pop(t, None)
                f = (F_net(_tile_input(image, t, (h, w), True, device)) if f is None else f)[..., :hy, :hx].float()
            _blend(t, tiles, xh, noise, f, gamma, outputs, acc, weight)
            progress()
    return {k: v / weight for k, v in acc.items()}


def _tile_geometry(t: Tile, size: tuple[int, int], is_F: bool) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(H, W) of the network's input window for tile ``t``, and the tile's owned core relative to it.

    F sees padded coordinates (rows past the image mirrored, as the generator pads to a multiple of 4);
    H sees the true image only (it does not pad in whole-image mode), so its window is clipped.
    """
    h, w = size
    if is_F:
        return (t.y1 - t.y0, t.x1 - t.x0), (t.oy0 - t.y0, t.oy1 - t.y0, t.ox0 - t.x0, t.ox1 - t.x0)
    return ((min(t.y1, h) - t.y0, min(t.x1, w) - t.x0),
            (t.oy0 - t.y0, min(t.oy1, h) - t.y0, t.ox0 - t.x0, min(t.ox1, w) - t.x0))


def _tile_input(image: np.ndarray, t: Tile, size: tuple[int, int], is_F: bool, device: torch.device) -> torch.Tensor:
    """The network input (1, 1, H, W) for tile ``t``: its window as :func:`_tile_geometry` gives it."""
    (hy, hx), _ = _tile_geometry(t, size, is_F)
    # a copy: the window may be a view with negative strides (of a rotated image, see tta), which torch rejects
    x = torch.from_numpy(np.ascontiguousarray(read_window(image, t.y0, t.y1, t.x0, t.x1)))[None, None].to(device)
    return x[..., :hy, :hx]


def _blend(t: Tile, tiles: list[Tile], xh: torch.Tensor, noise: torch.Tensor, f: torch.Tensor | None, gamma: float,
           outputs: tuple[str, ...], acc: dict[str, np.ndarray], weight: np.ndarray) -> None:
    """Add tile ``t``'s outputs (from H's input ``xh``, ``noise`` and F's cropped ``f``) to the blend."""
    hy, hx = xh.shape[-2:]
    bw = blend_weights(t, tiles)[:hy, :hx]
    ys, xs = slice(t.y0, t.y0 + hy), slice(t.x0, t.x0 + hx)
    bypass = xh - noise
    values = {"noise": noise, "bypass": bypass, "generator": f}
    if "denoised" in outputs:
        values["denoised"] = blend(f, bypass, gamma)  # type: ignore[arg-type]
    for k in outputs:
        acc[k][ys, xs] += values[k][0, 0].float().cpu().numpy() * bw
    weight[ys, xs] += bw
