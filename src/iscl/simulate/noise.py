"""Electron-microscopy noise models: random fields, Poisson–Gaussian shot noise, film and charge noise.

Two structured artefacts from Quan et al. (ICCVW 2019) are modelled on top of the Poisson–Gaussian
shot noise of Foi et al. (IEEE TIP 2008):

* **Film noise** (bright-field TEM). The section lies on a support film (carbon/formvar) whose
  thickness ``t(x)`` varies: slow 1/f^β mottling, fine grain, folds (wrinkles) and dust. Electrons
  scattered by the film are removed by the objective aperture, so the film *multiplies* the image by its
  transmission ``exp(-k t)`` (Beer–Lambert): ``noisy = clean × T``.
* **Charge noise** (scanning EM). A poorly grounded specimen charges while the beam scans row by row, so
  the detector signal gets *additive*, row-correlated disturbances: line-to-line offsets, a slow drift
  along the slow-scan axis, charge centres whose dark tails decay along the fast-scan direction, and
  short streaks: ``noisy = clean + C``.

Every random choice draws from an explicit :class:`numpy.random.Generator`. ``strength`` scales the
standard deviation of every noise component linearly (0 gives the clean image back).

Images are ``(H, W)`` float arrays of detected intensity on [0, 1]; rows are the fast-scan lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage, signal

__all__ = [
    "ShotNoiseConfig",
    "FilmNoiseConfig",
    "ChargeNoiseConfig",
    "NoisyImage",
    "power_law_field",
    "gaussian_field",
    "poisson_gaussian",
    "film_thickness",
    "film_transmission",
    "film_noise",
    "charge_pattern",
    "charge_noise",
]

Range = tuple[float, float]


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


# --------------------------------------------------------------------------------------------------
# Random fields (shared with the tissue generator, hence public)
# --------------------------------------------------------------------------------------------------


def _radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """|f| in cycles/pixel on the ``rfft2`` grid of ``shape``."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.sqrt(fy * fy + fx * fx)


def _filtered_white(shape: tuple[int, int], rng: np.random.Generator, transfer: np.ndarray) -> np.ndarray:
    white = rng.standard_normal(shape)
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=shape)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def power_law_field(shape: tuple[int, int], rng: np.random.Generator, beta: float) -> np.ndarray:
    """Gaussian random field with power spectrum ∝ 1/|f|^β (β = 0 white, 2 Brownian-like, 3 smooth).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` in pixels.
    rng : numpy.random.Generator
        Source of randomness.
    beta : float
        Spectral exponent β ≥ 0.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float64 field with zero mean and unit standard deviation. The field is periodic (it is
        synthesised with the FFT); that is invisible for the textures it is used for.
    """
    f = _radial_frequency(shape)
    f[0, 0] = np.inf  # drop the DC term: the mean is set by the caller
    return _filtered_white(shape, rng, f ** (-beta / 2.0))


def gaussian_field(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of standard deviation ``scale`` pixels, normalised.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` in pixels.
    rng : numpy.random.Generator
        Source of randomness.
    scale : float
        Correlation length (Gaussian σ) in pixels; larger is smoother.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float64 field, zero mean, unit standard deviation.
    """
    f = _radial_frequency(shape)
    # Fourier transform of a Gaussian kernel with σ = scale pixels.
    return _filtered_white(shape, rng, np.exp(-2.0 * (np.pi * scale * f) ** 2))


# --------------------------------------------------------------------------------------------------
# Shot noise
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShotNoiseConfig:
    """Poisson–Gaussian detector model ``z = a·Poisson(y/a) + N(0, b²)`` (Foi et al. 2008).

    Attributes
    ----------
    electrons_at_white : (float, float)
        Range of the expected electron count for intensity 1; ``a = 1 / electrons``.
    read_sigma : (float, float)
        Range of the signal-independent (read-out) noise σ ``b``, in intensity units on [0, 1].
    """

    electrons_at_white: Range = (70.0, 140.0)
    read_sigma: Range = (0.01, 0.03)


def poisson_gaussian(
    image: np.ndarray, rng: np.random.Generator, gain: float, read_sigma: float
) -> np.ndarray:
    """Poisson–Gaussian noise of Foi et al. (2008): ``z = a·P(y/a) + b·ξ``, so ``Var z = a·y + b²``.

    Parameters
    ----------
    image : numpy.ndarray
        Noise-free intensity ``y`` ≥ 0 (negative values are treated as 0), any shape.
    rng : numpy.random.Generator
        Source of randomness.
    gain : float
        ``a`` ≥ 0, intensity per detected electron (0 switches the Poisson part off).
    read_sigma : float
        ``b`` ≥ 0, standard deviation of the additive Gaussian part.

    Returns
    -------
    numpy.ndarray
        Noisy float64 image of the same shape (not clipped).
    """
    y = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    z = gain * rng.poisson(y / gain).astype(np.float64) if gain > 0 else y.copy()
    if read_sigma > 0:
        z += rng.normal(0.0, read_sigma, size=y.shape)
    return z


def _sample_shot(rng: np.random.Generator, cfg: ShotNoiseConfig, strength: float) -> tuple[float, float]:
    a = 1.0 / _uniform(rng, cfg.electrons_at_white)
    b = _uniform(rng, cfg.read_sigma)
    # Scale so that both standard deviations grow linearly with strength.
    return a * strength**2, b * strength


class NoisyImage(NamedTuple):
    """Result of a noise model.

    Attributes
    ----------
    noisy : numpy.ndarray
        ``(H, W)`` float32 noisy image clipped to [0, 1].
    component : numpy.ndarray
        ``(H, W)`` float32 structured component: the normalised film transmission ``T`` (film noise) or
        the additive charge pattern ``C`` (charge noise), before shot noise.
    params : dict
        The per-image parameters that were drawn.
    """

    noisy: np.ndarray
    component: np.ndarray
    params: dict


# --------------------------------------------------------------------------------------------------
# Film noise (multiplicative)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilmNoiseConfig:
    """Ranges of the support-film model; each image draws its own values.

    Thickness is in units of the mean film thickness (so the flat film has ``t = 1``); ``k`` is the
    film's scattering contrast per unit thickness, scaled by ``strength``.

    Attributes
    ----------
    k : (float, float)
        Contrast coefficient in ``T = exp(-k t)``.
    mottle_beta, mottle_std : (float, float)
        Spectral exponent and relative standard deviation of the 1/f^β thickness mottling.
    grain_scale_px, grain_std : (float, float)
        Correlation length (pixels) and relative standard deviation of the fine grain.
    wrinkles_mean : (float, float)
        Range of the Poisson mean of the number of folds per 256² pixels.
    wrinkle_width_px, wrinkle_height : (float, float)
        Cross-section σ (pixels) and extra thickness of a fold (a fold doubles the film locally).
    dust_mean : (float, float)
        Range of the Poisson mean of the number of dust particles per 256² pixels.
    dust_radius_px, dust_height : (float, float)
        Radius (pixels) and thickness of a dust particle.
    """

    k: Range = (0.45, 0.7)
    mottle_beta: Range = (2.2, 3.0)
    mottle_std: Range = (0.25, 0.4)
    grain_scale_px: Range = (0.6, 1.2)
    grain_std: Range = (0.08, 0.16)
    wrinkles_mean: Range = (0.5, 2.0)
    wrinkle_width_px: Range = (1.5, 4.0)
    wrinkle_height: Range = (0.5, 1.2)
    dust_mean: Range = (2.0, 8.0)
    dust_radius_px: Range = (1.0, 5.0)
    dust_height: Range = (1.5, 4.0)


def _wrinkles(shape: tuple[int, int], rng: np.random.Generator, cfg: FilmNoiseConfig) -> np.ndarray:
    """Folds of the film: meandering ridges of finite length with a Gaussian cross-section."""
    h, w = shape
    out = np.zeros(shape)
    n = rng.poisson(_uniform(rng, cfg.wrinkles_mean) * h * w / 256.0**2)
    if n == 0:
        return out
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for _ in range(n):  # a handful of objects; each is vectorised over the image
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        theta = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # along the fold
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)  # across the fold
        half_len = rng.uniform(0.3, 1.2) * max(h, w)
        meander = rng.uniform(2.0, 12.0) * np.sin(2 * np.pi * u / rng.uniform(60.0, 250.0) + rng.uniform(0, 6.3))
        width = _uniform(rng, cfg.wrinkle_width_px)
        ridge = np.exp(-0.5 * ((v - meander) / width) ** 2)
        taper = np.exp(-((u / half_len) ** 4))  # folds fade out instead of ending abruptly
        out += _uniform(rng, cfg.wrinkle_height) * ridge * taper
    return out


def _dust(shape: tuple[int, int], rng: np.random.Generator, cfg: FilmNoiseConfig) -> np.ndarray:
    """Dust/contamination particles: small, irregular, strongly scattering blobs."""
    h, w = shape
    n = rng.poisson(_uniform(rng, cfg.dust_mean) * h * w / 256.0**2)
    out = np.zeros(shape)
    if n == 0:
        return out
    pos = rng.uniform((0, 0), (h, w), size=(n, 2))
    rad = rng.uniform(*cfg.dust_radius_px, size=n)
    height = rng.uniform(*cfg.dust_height, size=n)
    # Render each particle in a small window; irregular outline from an angular perturbation.
    for (py, px), r, hh in zip(pos, rad, height, strict=True):
        m = int(np.ceil(2 * r + 2))
        y0, y1 = max(int(py) - m, 0), min(int(py) + m + 1, h)
        x0, x1 = max(int(px) - m, 0), min(int(px) + m + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        phi = np.arctan2(yy - py, xx - px)
        rr = r * (1 + 0.25 * np.cos(2 * phi + rng.uniform(0, 6.3)) + 0.15 * np.cos(3 * phi + rng.uniform(0, 6.3)))
        d = np.hypot(yy - py, xx - px)
        out[y0:y1, x0:x1] += hh / (1 + np.exp((d - rr) / 0.6))  # soft-edged disc
    return out


def film_thickness(
    shape: tuple[int, int], rng: np.random.Generator, config: FilmNoiseConfig | None = None
) -> tuple[np.ndarray, dict]:
    """Draw a support-film thickness map.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` in pixels.
    rng : numpy.random.Generator
        Source of randomness.
    config : FilmNoiseConfig, optional
        Parameter ranges.

    Returns
    -------
    thickness : numpy.ndarray
        ``(H, W)`` float64 thickness ≥ 0 in units of the mean film thickness.
    params : dict
        The drawn scalar parameters.
    """
    cfg = config or FilmNoiseConfig()
    p = {
        "mottle_beta": _uniform(rng, cfg.mottle_beta),
        "mottle_std": _uniform(rng, cfg.mottle_std),
        "grain_scale_px": _uniform(rng, cfg.grain_scale_px),
        "grain_std": _uniform(rng, cfg.grain_std),
    }
    t = 1.0 + p["mottle_std"] * power_law_field(shape, rng, p["mottle_beta"])
    t += p["grain_std"] * gaussian_field(shape, rng, p["grain_scale_px"])
    t += _wrinkles(shape, rng, cfg) + _dust(shape, rng, cfg)
    return np.clip(t, 0.0, None), p


def film_transmission(thickness: np.ndarray, k: float) -> np.ndarray:
    """Normalised film transmission ``T = exp(-k t) / mean(exp(-k t))``.

    The division by the mean mimics the exposure/flat-field normalisation of the camera, so the film
    changes local contrast but not the average brightness.

    Parameters
    ----------
    thickness : numpy.ndarray
        ``(H, W)`` thickness ``t`` ≥ 0 (relative units).
    k : float
        Contrast coefficient ≥ 0 (0 gives ``T = 1``).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float64 transmission, positive, with mean 1.
    """
    trans = np.exp(-k * (thickness - thickness.mean()))  # shift first: avoids underflow for thick films
    return trans / trans.mean()


def film_noise(
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    strength: float = 1.0,
    config: FilmNoiseConfig | None = None,
    shot: ShotNoiseConfig | None = None,
    shot_noise: bool = True,
) -> NoisyImage:
    """Bright-field TEM image through a support film: ``noisy = PG(clean × T)``.

    The film transmission ``T`` is drawn before (and independently of) the tissue, so for a fixed
    generator state it is the same whatever ``clean`` is; the ratio noisy/clean before shot noise is
    exactly ``T``. Shot noise acts on the transmitted intensity because the film removes electrons
    before detection.

    Parameters
    ----------
    clean : numpy.ndarray
        ``(H, W)`` clean intensity on [0, 1].
    rng : numpy.random.Generator
        Source of randomness.
    strength : float, default 1.0
        ≥ 0; scales ``k`` and the shot-noise standard deviations linearly.
    config, shot : optional
        Parameter ranges of the film and of the Poisson–Gaussian detector.
    shot_noise : bool, default True
        Set False to get the deterministic ``clip(clean × T)`` (used by the tests).

    Returns
    -------
    NoisyImage
        ``noisy`` (float32 on [0, 1]), ``component`` = ``T`` (float32), ``params``.
    """
    clean = _check_image(clean)
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    cfg = config or FilmNoiseConfig()
    thickness, params = film_thickness(clean.shape, rng, cfg)
    params["k"] = _uniform(rng, cfg.k) * strength
    trans = film_transmission(thickness, params["k"])
    gain, read = _sample_shot(rng, shot or ShotNoiseConfig(), strength)
    params.update(shot_gain=gain, read_sigma=read)
    y = clean * trans
    z = poisson_gaussian(y, rng, gain, read) if shot_noise else y
    return NoisyImage(np.clip(z, 0, 1).astype(np.float32), trans.astype(np.float32), params)


# --------------------------------------------------------------------------------------------------
# Charge noise (additive)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargeNoiseConfig:
    """Ranges of the scan-charging model (intensity units on [0, 1]; rows are fast-scan lines).

    Attributes
    ----------
    line_sigma : (float, float)
        Standard deviation of the line-to-line offsets.
    line_ar : (float, float)
        AR(1) coefficient of the offsets from one line to the next (charge decays between lines).
    drift_sigma, drift_scale_px : (float, float)
        Amplitude and row correlation length of the slow drift along the slow-scan axis.
    shading_sigma : (float, float)
        Amplitude of the weak 2-D slow shading (1/f³ field).
    centres_mean : (float, float)
        Range of the Poisson mean of the number of charge centres per 256² pixels.
    centre_amplitude, centre_rows_px, centre_tail_px : (float, float)
        Depth of a charge centre's dark tail, its extent across rows (σ, pixels) and its exponential
        decay length along the scan (pixels).
    streaks_mean : (float, float)
        Range of the Poisson mean of the number of short streaks per 256² pixels.
    streak_length_px, streak_amplitude : (float, float)
        Length (pixels) and absolute amplitude of a streak (sign random).
    """

    line_sigma: Range = (0.04, 0.07)
    line_ar: Range = (0.0, 0.6)
    drift_sigma: Range = (0.02, 0.05)
    drift_scale_px: Range = (15.0, 60.0)
    shading_sigma: Range = (0.01, 0.03)
    centres_mean: Range = (2.0, 6.0)
    centre_amplitude: Range = (0.2, 0.5)
    centre_rows_px: Range = (1.0, 4.0)
    centre_tail_px: Range = (10.0, 70.0)
    streaks_mean: Range = (8.0, 25.0)
    streak_length_px: Range = (4.0, 40.0)
    streak_amplitude: Range = (0.08, 0.3)


def _line_offsets(h: int, rng: np.random.Generator, sigma: float, ar: float) -> np.ndarray:
    """AR(1) sequence of per-line offsets with marginal standard deviation ``sigma``."""
    innov = rng.normal(0.0, sigma * np.sqrt(1 - ar**2), size=h)
    innov[0] = rng.normal(0.0, sigma)
    return signal.lfilter([1.0], [1.0, -ar], innov)


def _charge_centres(shape: tuple[int, int], rng: np.random.Generator, cfg: ChargeNoiseConfig) -> np.ndarray:
    """Charge centres: a bright head followed by a dark tail decaying along the scan (to the right)."""
    h, w = shape
    out = np.zeros(shape)
    n = rng.poisson(_uniform(rng, cfg.centres_mean) * h * w / 256.0**2)
    cols = np.arange(w, dtype=np.float64)[None, :]
    for _ in range(n):
        r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
        amp = _uniform(rng, cfg.centre_amplitude)
        sr = _uniform(rng, cfg.centre_rows_px)
        tail = _uniform(rng, cfg.centre_tail_px)
        lo, hi = max(int(r0 - 3 * sr), 0), min(int(r0 + 3 * sr) + 2, h)
        rows = np.arange(lo, hi, dtype=np.float64)[:, None]
        across = np.exp(-0.5 * ((rows - r0) / sr) ** 2)
        dc = cols - c0
        # The detector overshoots where the beam meets the charged spot, then the signal is suppressed
        # and recovers exponentially as the beam moves on along the line.
        along = 0.5 * np.exp(-0.5 * (dc / 1.5) ** 2) - np.where(dc > 0, np.exp(-np.clip(dc, 0, None) / tail), 0.0)
        out[lo:hi] += amp * across * along
    return out


def _streaks(shape: tuple[int, int], rng: np.random.Generator, cfg: ChargeNoiseConfig) -> np.ndarray:
    """Short one-line streaks (brief discharges), bright or dark."""
    h, w = shape
    out = np.zeros(shape)
    n = rng.poisson(_uniform(rng, cfg.streaks_mean) * h * w / 256.0**2)
    if n == 0:
        return out
    rows = rng.integers(0, h, size=n)
    start = rng.uniform(0, w, size=n)
    length = rng.uniform(*cfg.streak_length_px, size=n)
    amp = rng.uniform(*cfg.streak_amplitude, size=n) * rng.choice([-1.0, 1.0], size=n)
    cols = np.arange(w, dtype=np.float64)[None, :]
    t = (cols - start[:, None]) / length[:, None]  # (n, W) position inside each streak
    profile = np.where((t >= 0) & (t <= 1), np.exp(-2.0 * t), 0.0)  # sharp onset, fading out
    np.add.at(out, rows, amp[:, None] * profile)
    return out


def charge_pattern(
    shape: tuple[int, int], rng: np.random.Generator, config: ChargeNoiseConfig | None = None
) -> tuple[np.ndarray, dict]:
    """Draw an additive scan-charging pattern ``C``.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)``; rows are scan lines, scanned left to right, top to bottom.
    rng : numpy.random.Generator
        Source of randomness.
    config : ChargeNoiseConfig, optional
        Parameter ranges.

    Returns
    -------
    pattern : numpy.ndarray
        ``(H, W)`` float64 additive pattern in intensity units (mean roughly 0).
    params : dict
        The drawn scalar parameters.
    """
    cfg = config or ChargeNoiseConfig()
    h, w = shape
    p = {
        "line_sigma": _uniform(rng, cfg.line_sigma),
        "line_ar": _uniform(rng, cfg.line_ar),
        "drift_sigma": _uniform(rng, cfg.drift_sigma),
        "drift_scale_px": _uniform(rng, cfg.drift_scale_px),
        "shading_sigma": _uniform(rng, cfg.shading_sigma),
    }
    rows = _line_offsets(h, rng, p["line_sigma"], p["line_ar"])
    drift = ndimage.gaussian_filter1d(rng.standard_normal(h + 4 * int(p["drift_scale_px"])), p["drift_scale_px"])
    drift = drift[2 * int(p["drift_scale_px"]) : 2 * int(p["drift_scale_px"]) + h]
    drift = p["drift_sigma"] * (drift - drift.mean()) / (drift.std() + 1e-12)
    pattern = np.repeat((rows + drift)[:, None], w, axis=1)
    pattern += p["shading_sigma"] * power_law_field(shape, rng, 3.0)
    pattern += _charge_centres(shape, rng, cfg) + _streaks(shape, rng, cfg)
    return pattern, p


def charge_noise(
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    strength: float = 1.0,
    config: ChargeNoiseConfig | None = None,
    shot: ShotNoiseConfig | None = None,
    shot_noise: bool = True,
) -> NoisyImage:
    """Scanning-EM image with specimen charging: ``noisy = PG(clean) + strength · C``.

    The pattern is drawn before (and independently of) the tissue; it is added after shot noise because
    it disturbs the detector signal, not the number of emitted electrons.

    Parameters
    ----------
    clean : numpy.ndarray
        ``(H, W)`` clean intensity on [0, 1].
    rng : numpy.random.Generator
        Source of randomness.
    strength : float, default 1.0
        ≥ 0; scales the pattern and the shot-noise standard deviations linearly.
    config, shot : optional
        Parameter ranges of the charging and of the Poisson–Gaussian detector.
    shot_noise : bool, default True
        Set False to get the deterministic ``clip(clean + strength·C)``.

    Returns
    -------
    NoisyImage
        ``noisy`` (float32 on [0, 1]), ``component`` = ``strength · C`` (float32), ``params``.
    """
    clean = _check_image(clean)
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    pattern, params = charge_pattern(clean.shape, rng, config)
    pattern *= strength
    gain, read = _sample_shot(rng, shot or ShotNoiseConfig(), strength)
    params.update(shot_gain=gain, read_sigma=read)
    z = poisson_gaussian(clean, rng, gain, read) if shot_noise else clean.astype(np.float64)
    return NoisyImage(np.clip(z + pattern, 0, 1).astype(np.float32), pattern.astype(np.float32), params)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) image, got shape {image.shape}")
    return image
