"""Full-reference image quality: PSNR and SSIM with an explicit data range.

Thin wrappers over :mod:`skimage.metrics`. ``data_range`` is required on purpose: guessing it from the
dtype or from the image (skimage's fallback) silently changes the numbers between float images on
[0, 1], HU images and 8-bit images, which makes results incomparable.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim", "mean_metrics"]

_SSIM_MIN_SIDE = 7  # skimage's default Gaussian-free 7×7 window


def _check_pair(reference, estimate, data_range) -> tuple[np.ndarray, np.ndarray, float]:
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.ndim != 2 or est.ndim != 2:
        raise ValueError(f"expected 2-D images, got shapes {ref.shape} and {est.shape}")
    if ref.shape != est.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs estimate {est.shape}")
    if data_range is None:
        raise ValueError("data_range is required (e.g. 1.0 for images on [0, 1])")
    data_range = float(data_range)
    if not np.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range}")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(est))):
        raise ValueError("images contain NaN or infinite values")
    return ref, est, data_range


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio ``10 log10(R² / MSE)`` in dB.

    Parameters
    ----------
    reference, estimate : numpy.ndarray
        ``(H, W)`` images of the same shape, in the same units as ``data_range``.
    data_range : float
        Peak-to-peak range ``R`` of the signal (1.0 for images on [0, 1]); required.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the images are identical.
    """
    ref, est, r = _check_pair(reference, estimate, data_range)
    if np.array_equal(ref, est):
        return float("inf")  # skimage would divide by zero and warn
    return float(peak_signal_noise_ratio(ref, est, data_range=r))


def ssim(reference: np.ndarray, estimate: np.ndarray, data_range: float) -> float:
    """Structural similarity (Wang et al. 2004), skimage defaults (7×7 uniform window).

    Parameters
    ----------
    reference, estimate : numpy.ndarray
        ``(H, W)`` images of the same shape, each side at least 7 pixels.
    data_range : float
        Peak-to-peak range of the signal (sets the stabilising constants); required.

    Returns
    -------
    float
        Mean SSIM, at most 1.
    """
    ref, est, r = _check_pair(reference, estimate, data_range)
    if min(ref.shape) < _SSIM_MIN_SIDE:
        raise ValueError(f"SSIM needs images of at least {_SSIM_MIN_SIDE}x{_SSIM_MIN_SIDE}, got {ref.shape}")
    return float(structural_similarity(ref, est, data_range=r))


def mean_metrics(refs: Iterable[np.ndarray], ests: Iterable[np.ndarray], data_range: float) -> dict:
    """PSNR and SSIM per image and their means over a set of image pairs.

    Parameters
    ----------
    refs, ests : sequence of numpy.ndarray or numpy.ndarray
        Matching ``(H, W)`` images, or ``(N, H, W)`` stacks.
    data_range : float
        Peak-to-peak range of the signal; required.

    Returns
    -------
    dict
        ``psnr`` and ``ssim`` (means, float), ``psnr_per_image`` and ``ssim_per_image`` (lists).
        Infinite per-image PSNRs (identical pairs) make the mean infinite.
    """
    refs, ests = list(refs), list(ests)
    if len(refs) != len(ests):
        raise ValueError(f"got {len(refs)} references but {len(ests)} estimates")
    if not refs:
        raise ValueError("need at least one image pair")
    p = [psnr(r, e, data_range) for r, e in zip(refs, ests, strict=True)]
    s = [ssim(r, e, data_range) for r, e in zip(refs, ests, strict=True)]
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "psnr_per_image": p, "ssim_per_image": s}
