"""Procedural clean electron-microscopy tissue (neuropil as in serial-section EM).

The scene is drawn layer by layer, every parameter per image:

1. **Cell profiles**: an additively weighted Voronoi diagram (curved boundaries, varied sizes) evaluated
   on smoothly warped coordinates, so membranes meander like real neurites and glia.
2. **Cytoplasm**: a grey level and a texture amplitude per cell, plus fine granular texture.
3. **Membranes**: dark lines of random width and darkness along the cell boundaries.
4. **Mitochondria**: bent ellipses inside one cell, dark matrix, double outer membrane, cristae.
5. **Vesicle clusters**: small rings packed near a membrane, with a post-synaptic density.
6. **Myelinated axons**: wobbly rings of dark lamellar myelin around a pale axoplasm.
7. A final Gaussian blur (the microscope's point-spread function) and a global gain/offset.

Intensity is bright-field-like: 1 is bright (electron transparent), 0 is dark (heavily stained).
Every random choice draws from the :class:`numpy.random.Generator` passed in; there is no data file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from iscl.simulate.noise import gaussian_field

__all__ = ["EMTissueConfig", "em_tissue"]

Range = tuple[float, float]


@dataclass(frozen=True)
class EMTissueConfig:
    """Ranges from which each image draws its parameters (lengths in pixels, intensities on [0, 1]).

    Densities are counts per 256² pixels so that the scale of the tissue does not depend on the size
    of the image: a 64² image is a crop-sized view of the same tissue.
    """

    cell_diameter_px: Range = (22.0, 56.0)
    cell_weight_std: Range = (0.05, 0.3)  # additive Voronoi weight, fraction of the cell diameter
    warp_amplitude_px: Range = (4.0, 11.0)
    warp_scale_px: Range = (12.0, 30.0)
    membrane_width_px: Range = (0.9, 1.8)
    membrane_darkness: Range = (0.55, 0.85)
    cell_grey: Range = (0.5, 0.7)
    cell_grey_spread: Range = (0.03, 0.08)
    dark_cell_fraction: Range = (0.0, 0.2)
    texture_std: Range = (0.02, 0.06)
    texture_scale_px: Range = (0.7, 1.6)
    mito_density: Range = (1.5, 7.0)
    mito_half_length_px: Range = (10.0, 28.0)
    mito_half_width_px: Range = (5.0, 9.0)
    mito_grey: Range = (0.25, 0.4)
    cristae_period_px: Range = (3.0, 5.0)
    vesicle_cluster_density: Range = (0.5, 3.0)
    vesicles_per_cluster: Range = (10.0, 40.0)
    vesicle_radius_px: Range = (1.8, 3.0)
    axon_density: Range = (0.0, 2.5)
    axon_radius_px: Range = (10.0, 30.0)
    myelin_fraction: Range = (0.22, 0.4)
    blur_sigma_px: Range = (0.5, 1.0)
    gain: Range = (0.92, 1.08)
    offset: Range = (-0.04, 0.04)


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _count(rng: np.random.Generator, density: Range, shape: tuple[int, int]) -> int:
    return int(rng.poisson(_u(rng, density) * shape[0] * shape[1] / 256.0**2))


def _window(center: tuple[float, float], radius: float, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """Bounding box of a disc, clipped to the image (None if empty)."""
    cy, cx = center
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, shape[0])
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _grid(win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[win[0], win[1]]
    return yy.astype(np.float64), xx.astype(np.float64)


def _voronoi_cells(shape, rng, cfg):
    """Labels and distance-to-membrane of an additively weighted Voronoi diagram on warped coordinates.

    Returns ``labels`` (H, W) int, ``dist`` (H, W) approximate distance to the nearest boundary in
    pixels, and the number of cells.
    """
    h, w = shape
    diameter = _u(rng, cfg.cell_diameter_px)
    margin = diameter
    # Poisson-disc-like seeds (dart throwing): real profiles rarely collapse into slivers.
    area = (h + 2 * margin) * (w + 2 * margin)
    n_target = max(int(area / (0.8 * diameter**2)), 2)
    cand = rng.uniform((-margin, -margin), (h + margin, w + margin), size=(4 * n_target, 2))
    min_d2 = (0.55 * diameter) ** 2
    seeds = [cand[0]]
    for c in cand[1:]:  # O(n²) with n ≈ 100 seeds: negligible next to the per-pixel work
        if len(seeds) >= n_target:
            break
        if np.min(np.sum((np.asarray(seeds) - c) ** 2, axis=1)) > min_d2:
            seeds.append(c)
    seeds = np.asarray(seeds)
    weights = rng.normal(0.0, _u(rng, cfg.cell_weight_std) * diameter, size=len(seeds))

    # Smoothly warped sampling coordinates turn straight bisectors into meandering membranes.
    amp = _u(rng, cfg.warp_amplitude_px)
    scale = _u(rng, cfg.warp_scale_px)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    wy = yy + amp * gaussian_field(shape, rng, scale)
    wx = xx + amp * gaussian_field(shape, rng, scale)
    pts = np.stack([wy.ravel(), wx.ravel()], axis=1)

    # The weighted nearest seed is almost always among the few Euclidean-nearest ones.
    k = min(6, len(seeds))
    _, idx = cKDTree(seeds).query(pts, k=k)
    idx = idx.reshape(-1, k)
    d = np.sqrt(((pts[:, None, :] - seeds[idx]) ** 2).sum(-1)) - weights[idx]
    order = np.argsort(d, axis=1)[:, :2]
    d_sorted = np.take_along_axis(d, order, axis=1)
    labels = np.take_along_axis(idx, order[:, :1], axis=1)[:, 0].reshape(shape)
    dist = (0.5 * (d_sorted[:, 1] - d_sorted[:, 0])).reshape(shape)
    return labels, dist, len(seeds)


def _mitochondria(img, labels, dist, rng, cfg):
    """Bent ellipses with dark matrix, outer double membrane and transverse cristae, inside one cell."""
    shape = img.shape
    n = _count(rng, cfg.mito_density, shape)
    candidates = np.flatnonzero(dist.ravel() > 6.0)
    if n == 0 or candidates.size == 0:
        return
    for flat in rng.choice(candidates, size=n):
        cy, cx = divmod(int(flat), shape[1])
        a = _u(rng, cfg.mito_half_length_px)
        b = min(_u(rng, cfg.mito_half_width_px), dist[cy, cx] - 1.5)
        a = max(a, b * 1.1)
        win = _window((cy, cx), a + 3, shape)
        if win is None:
            continue
        yy, xx = _grid(win)
        th = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        v = v - rng.uniform(-0.6, 0.6) * b * (u / a) ** 2  # bend
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        edge = (1.0 - r) * b  # ≈ depth inside the outline in pixels
        same = labels[win] == labels[cy, cx]
        alpha = np.clip(edge + 0.5, 0, 1) * same
        period = _u(rng, cfg.cristae_period_px)
        wiggle = 0.7 * np.sin(v * rng.uniform(0.3, 0.8) + rng.uniform(0, 6.3))
        phase = (u + wiggle) / period + rng.uniform(0, 1)
        cristae = np.exp(-((phase - np.round(phase)) * period / 0.75) ** 2)
        cristae *= np.clip((0.8 * b - np.abs(v)) / 1.5, 0, 1)  # invaginations stop short of the far side
        matrix = _u(rng, cfg.mito_grey) * (1.0 - rng.uniform(0.35, 0.6) * cristae)
        outer = np.exp(-(((edge - 0.9) / 0.8) ** 2)) * same
        region = img[win]
        region[:] = region * (1 - alpha) + alpha * matrix
        region *= 1.0 - rng.uniform(0.4, 0.6) * outer


def _vesicles(img, labels, dist, membrane, rng, cfg):
    """Clusters of synaptic vesicles (rings with pale lumen) near a membrane with a dark density."""
    shape = img.shape
    n = _count(rng, cfg.vesicle_cluster_density, shape)
    candidates = np.flatnonzero((dist.ravel() > 5.0) & (dist.ravel() < 12.0))
    if n == 0 or candidates.size == 0:
        return
    for flat in rng.choice(candidates, size=n):
        cy, cx = divmod(int(flat), shape[1])
        nv = int(_u(rng, cfg.vesicles_per_cluster))
        spread = rng.uniform(5.0, 11.0)
        r_v = _u(rng, cfg.vesicle_radius_px)
        centres = rng.normal((cy, cx), spread, size=(nv, 2))
        radii = r_v * rng.uniform(0.85, 1.15, size=nv)
        win = _window((cy, cx), 3 * spread + 4, shape)
        if win is None:
            continue
        yy, xx = _grid(win)
        same = labels[win] == labels[cy, cx]
        rho = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
        # Only vesicles whose centre lies in the bouton's cell are kept.
        ci = np.clip(np.round(centres).astype(int), 0, np.array(shape) - 1)
        keep = labels[ci[:, 0], ci[:, 1]] == labels[cy, cx]
        if not keep.any():
            continue
        rho, radii = rho[keep], radii[keep]
        ring = np.max(np.exp(-(((rho - radii[:, None, None]) / 0.6) ** 2)), axis=0) * same
        lumen = np.max(np.clip(radii[:, None, None] - 0.6 - rho + 0.5, 0, 1), axis=0) * same
        region = img[win]
        region[:] = region * (1 - 0.25 * lumen) + 0.25 * lumen * 0.9  # lumen slightly paler than cytoplasm
        region *= 1.0 - rng.uniform(0.35, 0.6) * ring
        # Post-synaptic density: the membrane next to the cluster is thicker and darker.
        psd = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (1.6 * spread) ** 2))
        region *= 1.0 - rng.uniform(0.3, 0.6) * psd * membrane[win]


def _axons(img, rng, cfg):
    """Myelinated axons: wobbly dark lamellar rings with a pale, finely textured axoplasm."""
    shape = img.shape
    n = _count(rng, cfg.axon_density, shape)
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        r_out = _u(rng, cfg.axon_radius_px)
        cy, cx = rng.uniform(-0.3 * r_out, shape[0] + 0.3 * r_out), rng.uniform(-0.3 * r_out, shape[1] + 0.3 * r_out)
        if any(np.hypot(cy - py, cx - px) < (r_out + pr) * 1.05 for py, px, pr in placed):
            continue  # axons do not interpenetrate
        placed.append((cy, cx, r_out))
        win = _window((cy, cx), 1.3 * r_out + 3, shape)
        if win is None:
            continue
        yy, xx = _grid(win)
        rho = np.hypot(yy - cy, xx - cx)
        phi = np.arctan2(yy - cy, xx - cx)
        wobble = 1.0 + sum(
            rng.uniform(0.0, 0.07) * np.cos(k * phi + rng.uniform(0, 6.3)) for k in (2, 3, 4)
        )
        outer = r_out * wobble
        inner = outer * (1 - _u(rng, cfg.myelin_fraction)) * (1 + 0.05 * np.cos(phi + rng.uniform(0, 6.3)))
        a_out = np.clip(outer - rho + 0.5, 0, 1)
        a_in = np.clip(inner - rho + 0.5, 0, 1)
        myelin = rng.uniform(0.08, 0.2) * (1 + 0.25 * np.cos(2 * np.pi * rho / rng.uniform(1.6, 2.4)))
        axoplasm = rng.uniform(0.7, 0.86) + 0.03 * rng.standard_normal(rho.shape)
        region = img[win]
        region[:] = region * (1 - a_out) + a_out * myelin
        region[:] = region * (1 - a_in) + a_in * axoplasm
        region *= 1.0 - 0.35 * np.exp(-(((rho - inner) / 0.8) ** 2))  # axolemma


def em_tissue(
    shape: tuple[int, int] | int, rng: np.random.Generator, config: EMTissueConfig | None = None
) -> np.ndarray:
    """Draw one clean EM tissue image.

    Parameters
    ----------
    shape : int or tuple of int
        Image size ``(H, W)`` in pixels (an int gives a square). Features have fixed pixel sizes
        (the nominal pixel is about 5 nm), so small images are crops of the same tissue.
    rng : numpy.random.Generator
        Source of every random choice.
    config : EMTissueConfig, optional
        Parameter ranges.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 intensity on [0, 1]; bright cytoplasm (about 0.6–0.8), dark membranes,
        organelles and myelin.
    """
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 8:
        raise ValueError(f"EM images must be at least 8x8 pixels, got {shape}")
    cfg = config or EMTissueConfig()

    labels, dist, n_cells = _voronoi_cells(shape, rng, cfg)

    # Per-cell grey and texture amplitude; some profiles (glia, dark dendrites) are much darker.
    grey = rng.normal(_u(rng, cfg.cell_grey), _u(rng, cfg.cell_grey_spread), size=n_cells)
    dark = rng.random(n_cells) < _u(rng, cfg.dark_cell_fraction)
    grey[dark] -= rng.uniform(0.12, 0.25, size=int(dark.sum()))
    tex_amp = rng.uniform(0.5, 1.5, size=n_cells) * _u(rng, cfg.texture_std)
    img = grey[labels] + tex_amp[labels] * gaussian_field(shape, rng, _u(rng, cfg.texture_scale_px))
    img += 0.02 * gaussian_field(shape, rng, rng.uniform(4.0, 10.0))  # cytoplasmic density variation

    # Membranes; their visibility varies slowly (oblique sectioning makes some fainter).
    width = _u(rng, cfg.membrane_width_px)
    membrane = np.exp(-((dist / width) ** 2))
    visibility = np.clip(1.0 + 0.25 * gaussian_field(shape, rng, 25.0), 0.4, 1.2)
    img *= 1.0 - _u(rng, cfg.membrane_darkness) * membrane * visibility

    _mitochondria(img, labels, dist, rng, cfg)
    _vesicles(img, labels, dist, membrane, rng, cfg)
    _axons(img, rng, cfg)

    img = ndimage.gaussian_filter(img, _u(rng, cfg.blur_sigma_px), mode="reflect")
    img = img * _u(rng, cfg.gain) + _u(rng, cfg.offset)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
