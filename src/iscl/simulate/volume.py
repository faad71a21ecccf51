"""Simulated serial-section EM volumes with slice-wise noise (for the ``--axis`` study).

Serial-section and block-face EM image a volume one section at a time, so part of the noise changes
from one section to the next: a section's brightness and contrast (section thickness, staining, beam
current), and a smooth shading field of its own (film, charging). Inside one (H, W) slice such noise
looks like content; across slices it is a set of streaks, the rows of every (Z, W) and (Z, H) plane.

* :func:`em_volume` draws a clean, isotropic 3-D tissue: cells of smoothly varying grey bounded by dark
  membrane sheets (the zero set of a smooth random field), with dark organelles, blurred by the PSF.
* :func:`slice_streak_noise` adds per-slice gain, offset and shading (independent between slices) and
  pixel noise.

Every random choice draws from the :class:`numpy.random.Generator` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from iscl.simulate.noise import gaussian_field

__all__ = ["em_volume", "slice_streak_noise", "SliceNoiseConfig"]


def _unit_field(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    """A smooth 3-D random field (white noise blurred by a Gaussian of ``scale`` voxels), zero mean, unit std."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    f -= f.mean()
    return f / (f.std() + 1e-12)


def em_volume(shape: tuple[int, int, int], rng: np.random.Generator, *, cell_scale: float = 5.0,
              membrane_width: float = 0.12, organelle_fraction: float = 0.04, psf_sigma: float = 0.7) -> np.ndarray:
    """A clean, isotropic EM-like tissue volume.

    Parameters
    ----------
    shape : (Z, H, W) voxels; the structure is isotropic (same statistics along every axis).
    rng : source of randomness.
    cell_scale : correlation length (voxels) of the field whose zero set draws the membranes; cells are
        a few times wider.
    membrane_width : membrane half-thickness, in units of the field (about ``2 * membrane_width *
        cell_scale`` voxels).
    organelle_fraction : fraction of the volume inside dark organelles.
    psf_sigma : the final Gaussian blur (voxels).

    Returns
    -------
    numpy.ndarray
        (Z, H, W) float32 on [0, 1]; 1 is bright (unstained), membranes and organelles are dark.
    """
    shape = tuple(int(n) for n in shape)
    sheets = _unit_field(shape, rng, cell_scale)
    cytoplasm = _unit_field(shape, rng, 2.5 * cell_scale)
    blobs = _unit_field(shape, rng, 0.6 * cell_scale)
    img = 0.62 + 0.08 * np.tanh(1.5 * cytoplasm)
    img -= 0.38 * np.exp(-((sheets / membrane_width) ** 2))
    img = np.where(blobs > np.quantile(blobs, 1.0 - organelle_fraction), 0.32, img)
    img += 0.015 * _unit_field(shape, rng, 0.8)  # fine granular texture
    img = ndimage.gaussian_filter(img, psf_sigma)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SliceNoiseConfig:
    """Strengths of the slice-wise and pixel noise, in intensity units on [0, 1].

    ``offset_std``/``gain_std``: per-slice brightness offset and relative contrast; ``shading_std`` and
    ``shading_scale_px``: a smooth per-slice field (std, correlation length in pixels); ``pixel_std``:
    independent Gaussian noise of every voxel.
    """

    offset_std: float = 0.05
    gain_std: float = 0.08
    shading_std: float = 0.04
    shading_scale_px: float = 16.0
    pixel_std: float = 0.06


def slice_streak_noise(volume: np.ndarray, rng: np.random.Generator,
                       config: SliceNoiseConfig | None = None) -> np.ndarray:
    """Noisy copy of a (Z, H, W) volume: per-slice gain, offset and shading, plus pixel noise.

    ``noisy[z] = volume[z] * gain_z + offset_z + shading_z + N(0, pixel_std²)``, with gain, offset and
    shading drawn independently for every slice z: streaks along the rows of every (Z, W) and (Z, H) plane.

    Parameters
    ----------
    volume : (Z, H, W) float array on [0, 1].
    rng : source of randomness.
    config : the strengths (default :class:`SliceNoiseConfig`).

    Returns
    -------
    numpy.ndarray
        (Z, H, W) float32, not clipped (pixel noise reaches slightly outside [0, 1]).
    """
    cfg = config or SliceNoiseConfig()
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"slice_streak_noise: expected a (Z, H, W) volume, got shape {v.shape}")
    z = v.shape[0]
    gain = 1.0 + rng.normal(0.0, cfg.gain_std, z)[:, None, None]
    offset = rng.normal(0.0, cfg.offset_std, z)[:, None, None]
    shading = np.stack([gaussian_field(v.shape[1:], rng, cfg.shading_scale_px) for _ in range(z)]) * cfg.shading_std
    noisy = v * gain + offset + shading + rng.normal(0.0, cfg.pixel_std, v.shape)
    return noisy.astype(np.float32)
