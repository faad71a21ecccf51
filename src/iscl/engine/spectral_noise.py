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

Not in ISCL: an option (``TrainConfig.extractor_flat_noise_source = "spectrum"``), off in ``paper``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MOMENTUM", "NoiseSpectrum", "power_spectrum", "spectral_noise"]

MOMENTUM = 0.9  # weight of the running spectra per step (~10 batches): one batch of 8 gives ±35 % per frequency


def power_spectrum(p: torch.Tensor) -> torch.Tensor:
    """Mean periodogram of (N, 1, H, W) patches, each mean-removed and Hann-windowed, as (H, W) float32.

    Normalized to power per pixel: white noise of variance σ² has a spectrum of σ² at every frequency
    (up to the window's leakage at the zero frequency).
    """
    if p.dim() != 4 or p.shape[1] != 1:
        raise ValueError(f"power_spectrum needs (N, 1, H, W) patches, got {tuple(p.shape)}")
    p = p.detach().float()
    h, w = p.shape[-2:]
    win = (torch.hann_window(h, periodic=True, device=p.device)[:, None]
           * torch.hann_window(w, periodic=True, device=p.device)[None, :])
    q = (p - p.mean(dim=(-2, -1), keepdim=True)) * win
    return torch.fft.fft2(q).abs().pow(2).mean(dim=(0, 1)) / win.pow(2).sum()


def spectral_noise(spectrum: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` fields of zero-mean Gaussian noise with the (H, W) power ``spectrum``, as (n, 1, H, W) float32.

    White noise filtered by ``sqrt(spectrum)`` in the Fourier domain: a field's expected variance is the
    spectrum's mean, and a spectrum symmetric under ``f -> -f`` (every periodogram of real patches) gives
    real fields. The fields are periodic on (H, W). The draws come from ``generator`` (CPU), so a resumed run
    draws what the uninterrupted one drew.
    """
    h, w = spectrum.shape
    white = torch.randn(n, 1, h, w, generator=generator, device=generator.device).to(spectrum.device)
    return torch.fft.ifft2(torch.fft.fft2(white) * spectrum.clamp(min=0).sqrt()).real.contiguous()


class NoiseSpectrum:
    """Running spectra of the noisy and the clean patches, and the noise spectrum between them.

    ``update(x, y)`` folds one batch in (the first batch sets them); ``noise`` is
    ``max(S_x - S_y, 0)`` with the zero frequency set to 0 (the noise's mean is not known, and the fields
    are zero-mean). Patches of another size than the first batch's are refused.
    """

    def __init__(self, momentum: float = MOMENTUM) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"NoiseSpectrum momentum must lie in [0, 1), got {momentum}")
        self.momentum = momentum
        self.noisy: torch.Tensor | None = None
        self.clean: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fold in noisy patches ``x`` and clean patches ``y``, both (N, 1, H, W) of one (H, W)."""
        if x.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"NoiseSpectrum: noisy {tuple(x.shape)} and clean {tuple(y.shape)} patches differ in size")
        sx, sy = power_spectrum(x), power_spectrum(y)
        if self.noisy is None or self.clean is None:
            self.noisy, self.clean = sx, sy
            return
        if self.noisy.shape != sx.shape:
            raise ValueError(f"NoiseSpectrum: patches of {tuple(sx.shape)} after patches of {tuple(self.noisy.shape)}")
        m = self.momentum
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
        return {"momentum": self.momentum, "noisy": self.noisy, "clean": self.clean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum = float(state["momentum"])
        self.noisy, self.clean = state["noisy"], state["clean"]
