"""Noise drawn from a spectrum estimated as the noisy batches' power minus the clean batches' power.

Noisy and clean images of similar content differ, on average, by the noise: with ``x = s + n`` and ``n``
independent of the scene ``s``, the power spectrum of ``x`` is that of ``s`` plus that of ``n``, and the clean
images ``y`` stand in for ``s``. So ``S_n(f) = max(S_x(f) - S_y(f), 0)`` estimates the noise spectrum at every
frequency, low ones too, where a flat block with its mean removed loses the noise (charging lines correlated
from row to row, CT's streaks); at the very lowest the scenes' own power dominates and the difference of
two estimates of it is mostly their error. Gaussian noise with that spectrum, laid on a clean patch, is a
noisy image whose noise is known. What it cannot keep: noise that depends on the signal (Poisson), and
anything non-Gaussian; and it trusts the two sets' scenes to have the same spectrum.

The spectra are periodograms of Hann-windowed patches (the window keeps a scene's strong low frequencies
from leaking along the axes, where line noise lives), averaged over the batch and then over steps by an
exponential moving average. Written here because no library estimates a noise spectrum from unpaired sets.

With the 8 rotations/flips of the training patches, noise with one orientation (charging lines along the scan
rows) lies along the rows in some patches and down the columns in others, and one averaged spectrum holds
both: every field drawn from it has lines both ways. The *oriented* estimate (source ``"oriented"``) turns each
noisy patch's periodogram so that its stronger axis (the zero column against the zero row) is the zero
column, symmetrizes the clean patches' spectrum (the scenes have no orientation), averages over every batch
seen (the pools do not change during training), and turns half of the fields it draws a quarter.

Not in ISCL: an option (``TrainConfig.extractor_flat_noise_source = "spectrum"`` or ``"oriented"``), off in
``paper``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MOMENTUM", "NoiseSpectrum", "periodograms", "power_spectrum", "spectral_noise"]

MOMENTUM = 0.9  # weight of the running spectra per step (~10 batches): one batch of 8 gives ±35 % per frequency


def periodograms(p: torch.Tensor) -> torch.Tensor:
    """Periodogram of each of (N, 1, H, W) patches, mean-removed and Hann-windowed, as (N, H, W) float32.

    Normalized to power per pixel: white noise of variance σ² has a spectrum of σ² at every frequency
    (up to the window's leakage at the zero frequency).
    """
    if p.dim() != 4 or p.shape[1] != 1:
        raise ValueError(f"periodograms need (N, 1, H, W) patches, got {tuple(p.shape)}")
    p = p.detach().float()
    h, w = p.shape[-2:]
    win = (torch.hann_window(h, periodic=True, device=p.device)[:, None]
           * torch.hann_window(w, periodic=True, device=p.device)[None, :])
    q = (p - p.mean(dim=(-2, -1), keepdim=True)) * win
    return torch.fft.fft2(q[:, 0]).abs().pow(2) / win.pow(2).sum()


def power_spectrum(p: torch.Tensor) -> torch.Tensor:
    """Mean periodogram of (N, 1, H, W) patches (see ``periodograms``), as (H, W) float32."""
    return periodograms(p).mean(dim=0)


def _oriented(s: torch.Tensor) -> torch.Tensor:
    """(N, H, H) periodograms, each transposed where its zero row (variation across the columns only) holds
    more power than its zero column (variation down the rows only, lines along the rows)."""
    turn = s[:, 0, 1:].sum(dim=-1) > s[:, 1:, 0].sum(dim=-1)
    return torch.where(turn[:, None, None], s.transpose(-2, -1), s)


def spectral_noise(spectrum: torch.Tensor, n: int, generator: torch.Generator, turn: bool = False) -> torch.Tensor:
    """``n`` fields of zero-mean Gaussian noise with the (H, W) power ``spectrum``, as (n, 1, H, W) float32.

    White noise filtered by ``sqrt(spectrum)`` in the Fourier domain: a field's expected variance is the
    spectrum's mean, and a spectrum symmetric under ``f -> -f`` (every periodogram of real patches) gives
    real fields. The fields are periodic on (H, W). With ``turn`` (a square spectrum), each field is turned a
    quarter with probability 1/2. The draws come from ``generator`` (CPU), so a resumed run draws what the
    uninterrupted one drew.
    """
    h, w = spectrum.shape
    white = torch.randn(n, 1, h, w, generator=generator, device=generator.device).to(spectrum.device)
    fields = torch.fft.ifft2(torch.fft.fft2(white) * spectrum.clamp(min=0).sqrt()).real
    if turn:
        if h != w:
            raise ValueError(f"spectral_noise: only a square spectrum can be turned, got {(h, w)}")
        flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(spectrum.device)
        fields = torch.where(flip[:, None, None, None], fields.transpose(-2, -1), fields)
    return fields.contiguous()


class NoiseSpectrum:
    """Running spectra of the noisy and the clean patches, and the noise spectrum between them.

    ``update(x, y)`` folds one batch in (the first batch sets them); ``noise`` is
    ``max(S_x - S_y, 0)`` with the zero frequency set to 0 (the noise's mean is not known, and the fields
    are zero-mean). Patches of another size than the first batch's are refused. ``momentum`` None averages
    every batch alike (the mean of all batches seen). ``oriented`` (square patches only) turns each noisy
    periodogram so that its stronger axis is the zero column and symmetrizes the clean spectrum.
    """

    def __init__(self, momentum: float | None = MOMENTUM, oriented: bool = False) -> None:
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"NoiseSpectrum momentum must lie in [0, 1) or be None, got {momentum}")
        self.momentum = momentum
        self.oriented = oriented
        self.count = 0  # batches folded in
        self.noisy: torch.Tensor | None = None
        self.clean: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fold in noisy patches ``x`` and clean patches ``y``, both (N, 1, H, W) of one (H, W)."""
        if x.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"NoiseSpectrum: noisy {tuple(x.shape)} and clean {tuple(y.shape)} patches differ in size")
        if self.oriented and x.shape[-1] != x.shape[-2]:
            raise ValueError(f"NoiseSpectrum: oriented spectra need square patches, got {tuple(x.shape)}")
        px, sy = periodograms(x), power_spectrum(y)
        if self.oriented:
            px, sy = _oriented(px), 0.5 * (sy + sy.T)
        sx = px.mean(dim=0)
        if self.noisy is not None and self.noisy.shape != sx.shape:
            raise ValueError(f"NoiseSpectrum: patches of {tuple(sx.shape)} after patches of {tuple(self.noisy.shape)}")
        self.count += 1  # only once the batch is accepted: a refused batch leaves the estimate as it was
        if self.noisy is None or self.clean is None:
            self.noisy, self.clean = sx, sy
            return
        m = self.momentum if self.momentum is not None else (self.count - 1) / self.count
        self.noisy = m * self.noisy + (1 - m) * sx
        self.clean = m * self.clean + (1 - m) * sy

    @property
    def noise(self) -> torch.Tensor:
        """(H, W) estimated noise power per frequency (FFT order, zero frequency at [0, 0])."""
        if self.noisy is None or self.clean is None:
            raise RuntimeError("NoiseSpectrum.noise before any update")
        s = (self.noisy - self.clean).clamp(min=0)
        s[0, 0] = 0.0
        return s

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "oriented": self.oriented, "count": self.count, "noisy": self.noisy,
                "clean": self.clean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum = None if state["momentum"] is None else float(state["momentum"])
        self.oriented = bool(state.get("oriented", False))
        self.count = int(state.get("count", 0))
        self.noisy, self.clean = state["noisy"], state["clean"]
