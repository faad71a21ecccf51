"""Classical baselines: BM3D (optional ``bm3d`` extra) and the identity (the noisy input itself).

BM3D (Dabov et al. 2007; Mäkinen, Azzari & Foi 2020 for correlated noise) needs the noise level. Here
it is estimated **blind, from the noisy image being denoised** — never from a clean image:

* ``noise="white"``: one standard deviation, the robust median estimator on the finest Haar diagonal
  detail (Donoho's MAD, as in ``skimage.restoration.estimate_sigma``), computed only where no pixel
  is clipped at the data range (CT air is clipped to 0 by the display window and has no noise).
* ``noise="psd"``: a noise power spectral density for BM3D's correlated-noise mode, from the
  autocovariance (lags up to ±``psd_radius``) of the flattest, unclipped blocks of the image (local
  mean removed): where the scene is flat, what varies is noise.

Both estimates see only high-to-mid frequencies; structured noise with power at low frequencies
(EM film texture, charging bands, CT streaks) is partly invisible to them — BM3D's blind spot, and a
reason ISCL learns the noise from data instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from iscl.methods.base import MethodBase

__all__ = ["BM3D", "Identity", "BM3DUnavailableError", "import_bm3d", "estimate_noise_sigma", "estimate_noise_psd"]

_INSTALL_HINT = "pip install iscl[bm3d]"


class BM3DUnavailableError(ImportError):
    """The optional ``bm3d`` package is not installed; the message says how to install it."""


def import_bm3d() -> Any:
    """Import the optional ``bm3d`` package, or raise :class:`BM3DUnavailableError` naming the extra."""
    try:
        import bm3d
    except ImportError as exc:
        raise BM3DUnavailableError(
            f"the BM3D baseline needs the optional 'bm3d' package, which is not installed ({exc}); "
            f"install it with `{_INSTALL_HINT}`"
        ) from exc
    return bm3d


def _unclipped(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return (image > low) & (image < high)


def estimate_noise_sigma(image: np.ndarray, clip_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Blind noise standard deviation from one image (image units).

    ``sigma = median(|d|) / 0.6745`` over the Haar diagonal details ``d = (a - b - c + e) / 2`` of
    non-overlapping 2×2 blocks that contain no pixel at or beyond ``clip_range`` (for white noise
    ``var(d) = sigma²``, and scene content is mostly smooth at that scale).

    Parameters
    ----------
    image : (H, W) float array
    clip_range : (low, high)
        Pixels at or outside these values are treated as clipped (no noise information).

    Returns
    -------
    float
        The estimate (0.0 when no unclipped 2×2 block exists).
    """
    a = np.asarray(image, dtype=np.float64)
    h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    a = a[:h, :w]
    p00, p01, p10, p11 = a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]
    d = (p00 - p01 - p10 + p11) / 2.0
    valid = np.ones(d.shape, dtype=bool)
    for p in (p00, p01, p10, p11):
        valid &= _unclipped(p, *clip_range)
    if not valid.any():
        return 0.0
    return float(np.median(np.abs(d[valid])) / 0.6745)


def estimate_noise_psd(image: np.ndarray, block: int = 32, radius: int = 8, flat_fraction: float = 0.2,
                       clip_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Blind noise PSD in BM3D's convention (an (H, W) array; white noise σ gives ``H·W·σ²`` everywhere).

    Method: tile the image into ``block``² blocks (stride ``block/2``) with no clipped pixel; keep the
    ``flat_fraction`` with the lowest variance after removing a least-squares plane; average their
    autocovariances for lags |dy|, |dx| ≤ ``radius``; taper with a 2-D Bartlett window (so the spectrum
    is non-negative); place it circularly in an (H, W) array and take ``H·W·Re(FFT)``.

    Falls back to white noise of :func:`estimate_noise_sigma` when no block qualifies.
    """
    a = np.asarray(image, dtype=np.float64)
    h, w = a.shape
    b = int(min(block, h, w))
    residuals: list[np.ndarray] = []
    while not residuals and b >= 8:  # mostly clipped images (CT lungs and air): try smaller blocks
        residuals, variances = _flat_blocks(a, b, clip_range)
        if not residuals:
            b //= 2
    if not residuals:
        return np.full((h, w), h * w * estimate_noise_sigma(a, clip_range) ** 2)
    r = int(min(radius, b // 2 - 1))
    keep = np.argsort(variances)[: max(1, int(round(flat_fraction * len(residuals))))]
    acov = np.zeros((2 * r + 1, 2 * r + 1))
    for i in keep:
        res = residuals[i]
        f = np.fft.fft2(res, s=(2 * b, 2 * b))  # zero-padded: linear, not circular, correlation
        full = np.real(np.fft.ifft2(f * np.conj(f))) / (b * b)
        acov += np.roll(np.roll(full, r, axis=0), r, axis=1)[: 2 * r + 1, : 2 * r + 1]
    acov /= len(keep)
    taper = np.outer(np.bartlett(2 * r + 3)[1:-1], np.bartlett(2 * r + 3)[1:-1])
    acov *= taper / taper[r, r]
    kernel = np.zeros((h, w))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            kernel[dy % h, dx % w] += acov[dy + r, dx + r]
    psd = np.real(np.fft.fft2(kernel)) * (h * w)
    return np.maximum(psd, 1e-12 * h * w)


@contextlib.contextmanager
def _numpy_trapz() -> Iterator[None]:
    """Give NumPy >= 2.4 back ``np.trapz`` while bm3d runs.

    bm3d 4.0.3 calls ``np.trapz`` (removed in NumPy 2.4; ``np.trapezoid`` is the same function) on its
    correlated-noise path; the alias exists only for the duration of the call.
    """
    if hasattr(np, "trapz") or not hasattr(np, "trapezoid"):
        yield
        return
    np.trapz = np.trapezoid  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del np.trapz


def _flat_blocks(a: np.ndarray, b: int, clip_range: tuple[float, float]) -> tuple[list[np.ndarray], list[float]]:
    """Unclipped ``b``² blocks (stride b/2) minus their least-squares plane, and their variances."""
    h, w = a.shape
    step = max(b // 2, 1)
    yy, xx = np.mgrid[0:b, 0:b].astype(np.float64)
    design = np.stack([np.ones(b * b), yy.ravel(), xx.ravel()], axis=1)
    pinv = np.linalg.pinv(design)
    residuals, variances = [], []
    for y0 in range(0, h - b + 1, step):
        for x0 in range(0, w - b + 1, step):
            blk = a[y0:y0 + b, x0:x0 + b]
            if not _unclipped(blk, *clip_range).all():
                continue
            res = blk.ravel() - design @ (pinv @ blk.ravel())
            residuals.append(res.reshape(b, b))
            variances.append(float(res.var()))
    return residuals, variances


class BM3D(MethodBase):
    """BM3D with the noise level or PSD estimated blind from each noisy image.

    Parameters
    ----------
    noise : ``"white"`` or ``"psd"``
        One σ (:func:`estimate_noise_sigma`) or a correlated-noise PSD (:func:`estimate_noise_psd`).
    profile : str
        BM3D profile (``"np"``, the package default, or ``"refilter"``, ...).
    clip_range : (low, high)
        Data range: pixels there count as clipped for the estimate, and the output is clipped to it.
    name : str
        Row name.

    Raises
    ------
    BM3DUnavailableError
        At construction, when the optional ``bm3d`` package is missing (``pip install iscl[bm3d]``).
    """

    needs: frozenset[str] = frozenset()

    def __init__(self, noise: str = "white", profile: str = "np", clip_range: tuple[float, float] = (0.0, 1.0),
                 name: str = "bm3d"):
        super().__init__()
        if noise not in ("white", "psd"):
            raise ValueError(f"noise must be 'white' or 'psd', got {noise!r}")
        self._bm3d = import_bm3d()  # fail early, before a benchmark spends time on other methods
        self.noise = noise
        self.profile = profile
        self.clip_range = (float(clip_range[0]), float(clip_range[1]))
        self.name = name
        self.last_sigma: float | None = None

    def _denoise(self, image: np.ndarray) -> np.ndarray:
        a = image.astype(np.float64)
        if self.noise == "white":
            sigma = estimate_noise_sigma(a, self.clip_range)
            self.last_sigma = sigma
            if sigma <= 0.0:
                return image.copy()
            out = self._bm3d.bm3d(a, sigma_psd=sigma, profile=self.profile)
        else:
            psd = estimate_noise_psd(a, clip_range=self.clip_range)
            self.last_sigma = float(np.sqrt(psd.mean() / a.size))
            with _numpy_trapz():
                out = self._bm3d.bm3d(a, sigma_psd=psd, profile=self.profile)
        return np.clip(out, *self.clip_range).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        bm3d_version = getattr(self._bm3d, "__version__", None)
        if bm3d_version is None:
            from importlib import metadata

            try:
                bm3d_version = metadata.version("bm3d")
            except metadata.PackageNotFoundError:  # pragma: no cover
                bm3d_version = "unknown"
        d.update(noise=self.noise, profile=self.profile, bm3d=bm3d_version,
                 noise_estimate="blind, from each noisy test image only")
        return d


class Identity(MethodBase):
    """Returns the noisy input unchanged: the row every denoiser must beat."""

    needs: frozenset[str] = frozenset()

    def __init__(self, name: str = "noisy"):
        super().__init__()
        self.name = name

    def _denoise(self, image: np.ndarray) -> np.ndarray:
        return image.copy()
