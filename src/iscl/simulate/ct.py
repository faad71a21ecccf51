"""Low-dose CT: procedural anatomy in Hounsfield units and a projection-space dose simulation.

Pipeline for one slice (all lengths in millimetres, attenuation in 1/mm):

1. A clean HU slice: procedural thorax or abdomen (:func:`phantom_hu`), or a real slice that ships with
   pydicom (:func:`real_slices`).
2. HU → linear attenuation ``μ = μ_water (1 + HU/1000)`` (air −1000 HU → 0).
3. Parallel-beam line integrals ``p = ∫ μ dl`` with :func:`skimage.transform.radon`.
4. Quantum noise in the measured counts: ``N = Poisson(I0 · e^−p) + N(0, σ_e²)`` (electronic noise),
   clipped to a small positive floor, then ``p̂ = −log(N / I0)``. This is the standard low-dose CT
   simulation used for the AAPM/Mayo Low Dose CT Grand Challenge data (McCollough et al. 2017).
5. Filtered back-projection with a Hann-apodised ramp (:func:`skimage.transform.iradon`), back to HU.

The clean target is the noise-free reconstruction with the same geometry and filter, so the only
difference between clean and noisy is dose-dependent noise (including photon-starvation streaks).
The default ``I0 = 2.5e4`` photons per detector bin is about a quarter of a ``1e5`` normal dose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.transform import iradon, radon, resize

from iscl.simulate.noise import gaussian_field

__all__ = [
    "CTPhantomConfig",
    "CTScanConfig",
    "phantom_hu",
    "water_phantom",
    "real_slices",
    "hu_to_mu",
    "mu_to_hu",
    "projection_angles",
    "forward_project",
    "add_quantum_noise",
    "fbp",
    "simulate_low_dose",
    "window",
]

Range = tuple[float, float]
AIR_HU = -1000.0


@dataclass(frozen=True)
class CTPhantomConfig:
    """Ranges for the procedural anatomy (HU values are typical non-contrast/contrast adult values).

    Attributes
    ----------
    fov_mm : (float, float)
        Reconstruction field of view (diameter of the scanned circle) in millimetres.
    thorax_probability : float
        Probability of a thorax slice; otherwise an upper-abdomen slice.
    contrast_probability : float
        Probability that vessels/organs are contrast-enhanced.
    lesions : (float, float)
        Range of the number of low-contrast lesions (liver in the abdomen, lung nodules in the thorax).
    lesion_contrast_hu : (float, float)
        Absolute lesion contrast in HU; the sign is random (hypo- or hyper-dense).
    texture_hu : (float, float)
        Standard deviation of smooth parenchymal texture in HU.
    """

    fov_mm: Range = (340.0, 440.0)
    thorax_probability: float = 0.5
    contrast_probability: float = 0.5
    lesions: Range = (1.0, 5.0)
    lesion_contrast_hu: Range = (10.0, 40.0)
    texture_hu: Range = (4.0, 12.0)


@dataclass(frozen=True)
class CTScanConfig:
    """Scanner and reconstruction settings.

    Attributes
    ----------
    i0 : float
        Incident photons per detector bin and view for the low-dose scan (2.5e4 ≈ quarter dose).
    reference_i0 : float or None
        Dose of the clean domain; None gives the noise-free reconstruction, a number (e.g. 1e5) a
        normal-dose reconstruction as in the AAPM/Mayo data.
    electronic_sigma : float
        Standard deviation of the additive electronic noise, in photon counts.
    min_counts : float
        Floor applied to the counts before the logarithm (detectors never report ≤ 0).
    n_views : int or None
        Number of views over 180°; None uses ``ceil(1.4 × size)`` (close to the sampling requirement).
    filter_name : str
        FBP filter passed to :func:`skimage.transform.iradon`.
    mu_water_per_mm : float
        Linear attenuation of water at the effective energy (about 70 keV).
    window_hu : (float, float)
        HU interval mapped to [0, 1] (default the soft-tissue window L40/W400).
    """

    i0: float = 2.5e4
    reference_i0: float | None = None
    electronic_sigma: float = 5.0
    min_counts: float = 0.5
    n_views: int | None = None
    filter_name: str = "hann"
    mu_water_per_mm: float = 0.0192
    window_hu: Range = (-160.0, 240.0)


# --------------------------------------------------------------------------------------------------
# Procedural anatomy
# --------------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _ellipse(x, y, cx, cy, ax, ay, angle=0.0):
    """Boolean mask of an ellipse (centre, semi-axes in mm, rotation in radians)."""
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _body_depth(x, y, rng, a, b):
    """Depth below the skin (mm, negative outside) of a wobbly superellipse body outline."""
    p = rng.uniform(2.0, 2.5)
    phi = np.arctan2(y, x)
    wobble = 1.0 + sum(rng.uniform(0, 0.025) * np.cos(k * phi + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    # Normalised superellipse radius; rho < 1 inside.
    rho = (np.abs(x / a) ** p + np.abs(y / b) ** p) ** (1.0 / p) / wobble
    r = np.hypot(x, y)
    return r * (1.0 / np.maximum(rho, 1e-6) - 1.0)


def _vertebra(hu, x, y, rng, cy):
    """Vertebral body, spinal canal and posterior elements at the back (image bottom)."""
    r = rng.uniform(14.0, 20.0)
    body = _ellipse(x, y, 0, cy, 1.1 * r, r)
    hu[body] = 900.0 + rng.uniform(-100, 200)  # cortical shell
    hu[_ellipse(x, y, 0, cy, 1.1 * r - 2.0, r - 2.0)] = rng.uniform(150.0, 300.0)  # cancellous bone
    canal_y = cy + r + rng.uniform(6.0, 9.0)
    ring = _ellipse(x, y, 0, canal_y, 12.0, 10.0)
    hu[ring] = rng.uniform(600.0, 900.0)  # pedicles and laminae
    hu[_ellipse(x, y, 0, canal_y, 8.0, 7.0)] = rng.uniform(10.0, 30.0)  # spinal canal (cord/CSF)
    hu[_ellipse(x, y, 0, canal_y + 15.0, 3.5, 9.0)] = rng.uniform(500.0, 800.0)  # spinous process
    for side in (-1, 1):  # transverse processes
        hu[_ellipse(x, y, side * 18.0, canal_y - 2.0, 9.0, 3.0, side * 0.3)] = rng.uniform(500.0, 800.0)
    return canal_y


def _thorax(hu, x, y, inner, rng, a, b, wall, cfg, contrast):
    blood = rng.uniform(150.0, 300.0) if contrast else rng.uniform(35.0, 50.0)
    hu[inner] = rng.uniform(-110.0, -70.0)  # mediastinal fat
    lung_hu = rng.uniform(-880.0, -780.0)
    for side in (-1, 1):
        lung = _ellipse(x, y, side * rng.uniform(0.42, 0.52) * a, rng.uniform(-0.05, 0.1) * b,
                        rng.uniform(0.33, 0.42) * a, rng.uniform(0.62, 0.75) * b, side * rng.uniform(-0.2, 0.2))
        hu[lung & inner] = lung_hu
    lungs = (hu < -500) & inner  # not the air around the body
    hu[lungs] += 25.0 * gaussian_field(hu.shape, rng, 3.0)[lungs]  # parenchymal heterogeneity
    # Pulmonary vessels: many small discs of blood density inside the lungs.
    n = rng.integers(40, 90)
    for _ in range(n):
        cx, cy = rng.uniform(-a, a), rng.uniform(-b, b)
        rad = rng.uniform(0.8, 3.5)
        m = _ellipse(x, y, cx, cy, rad, rad * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)) & lungs
        hu[m] = rng.uniform(20.0, 50.0)
    for _ in range(rng.integers(int(cfg.lesions[0]), int(cfg.lesions[1]) + 1)):  # nodules
        cx, cy = rng.uniform(-a, a), rng.uniform(-b, b)
        rad = rng.uniform(2.0, 8.0)
        hu[_ellipse(x, y, cx, cy, rad, rad) & lungs] = rng.uniform(-20.0, 60.0)
    # Heart (image right = patient's left), aorta and oesophagus.
    heart = _ellipse(x, y, rng.uniform(0.05, 0.2) * a, rng.uniform(-0.25, -0.05) * b,
                     rng.uniform(0.28, 0.36) * a, rng.uniform(0.33, 0.45) * b, rng.uniform(-0.6, -0.2))
    hu[heart & inner] = rng.uniform(35.0, 50.0)
    chambers = _ellipse(x, y, rng.uniform(0.1, 0.2) * a, rng.uniform(-0.2, -0.1) * b, 0.12 * a, 0.15 * b)
    hu[chambers & inner] = blood
    hu[_ellipse(x, y, rng.uniform(0.08, 0.15) * a, 0.42 * b, 12.0, 12.0) & inner] = blood  # descending aorta
    hu[_ellipse(x, y, -0.02 * a, 0.4 * b, 5.0, 4.0) & inner] = -900.0  # oesophagus with air
    # Ribs in the chest wall, sternum at the front.
    for phi in rng.uniform(0, 2 * np.pi, size=rng.integers(6, 12)):
        rx, ry = np.cos(phi) * (a - wall * 0.6), np.sin(phi) * (b - wall * 0.6)
        rib = _ellipse(x, y, rx, ry, rng.uniform(4.0, 7.0), rng.uniform(3.0, 5.0), phi + np.pi / 2)
        hu[rib] = rng.uniform(600.0, 1000.0)
    hu[_ellipse(x, y, 0, -b + wall * 0.7, 12.0, 5.0)] = rng.uniform(400.0, 700.0)


def _abdomen(hu, x, y, inner, rng, a, b, cfg, contrast):
    enh = rng.uniform(40.0, 60.0) if contrast else 0.0
    blood = rng.uniform(150.0, 250.0) if contrast else rng.uniform(35.0, 50.0)
    hu[inner] = rng.uniform(-110.0, -80.0)  # visceral fat
    liver = _ellipse(x, y, -rng.uniform(0.3, 0.45) * a, rng.uniform(-0.15, 0.05) * b,
                     rng.uniform(0.42, 0.55) * a, rng.uniform(0.55, 0.7) * b, rng.uniform(-0.3, 0.3)) & inner
    hu[liver] = rng.uniform(50.0, 65.0) + enh
    spleen = _ellipse(x, y, rng.uniform(0.5, 0.6) * a, rng.uniform(0.1, 0.3) * b,
                      rng.uniform(0.15, 0.22) * a, rng.uniform(0.25, 0.35) * b, rng.uniform(-0.8, -0.3)) & inner
    hu[spleen] = rng.uniform(40.0, 55.0) + enh
    # Stomach/bowel loops: wall, then gas, fluid or mixed content.
    for _ in range(rng.integers(4, 12)):
        cx, cy = rng.uniform(-0.2, 0.6) * a, rng.uniform(-0.7, 0.2) * b
        rad = rng.uniform(7.0, 22.0)
        loop = _ellipse(x, y, cx, cy, rad, rad * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)) & inner & ~liver
        hu[loop] = rng.uniform(30.0, 50.0)
        lumen = _ellipse(x, y, cx, cy, rad - 2.5, (rad - 2.5) * 0.8, 0) & loop
        hu[lumen] = rng.choice([-950.0, rng.uniform(0.0, 25.0), rng.uniform(-60.0, 20.0)])
    for side in (-1, 1):  # kidneys with renal sinus fat
        kc = (side * rng.uniform(0.3, 0.4) * a, rng.uniform(0.3, 0.45) * b)
        ang = side * rng.uniform(0.3, 0.7)
        kidney = _ellipse(x, y, *kc, rng.uniform(0.1, 0.14) * a, rng.uniform(0.16, 0.22) * b, ang) & inner
        hu[kidney] = rng.uniform(150.0, 200.0) if contrast else rng.uniform(25.0, 40.0)
        hu[_ellipse(x, y, *kc, 0.04 * a, 0.07 * b, ang) & kidney] = rng.uniform(-90.0, 0.0)
    hu[_ellipse(x, y, rng.uniform(0.02, 0.1) * a, 0.25 * b, 11.0, 11.0) & inner] = blood  # aorta
    hu[_ellipse(x, y, -rng.uniform(0.1, 0.18) * a, 0.22 * b, 12.0, 9.0) & inner] = blood - 20.0  # IVC
    # Low-contrast liver lesions: the task a denoiser must not erase.
    for _ in range(rng.integers(int(cfg.lesions[0]), int(cfg.lesions[1]) + 1)):
        ys, xs = np.nonzero(liver)
        if ys.size == 0:
            break
        i = rng.integers(ys.size)
        rad = rng.uniform(3.0, 12.0)
        delta = _u(rng, cfg.lesion_contrast_hu) * rng.choice([-1.0, 1.0])
        m = _ellipse(x, y, x[ys[i], xs[i]], y[ys[i], xs[i]], rad, rad * rng.uniform(0.7, 1.0)) & liver
        hu[m] += delta


def phantom_hu(
    size: int, rng: np.random.Generator, config: CTPhantomConfig | None = None
) -> tuple[np.ndarray, float]:
    """Draw a procedural axial CT slice (thorax or upper abdomen) in Hounsfield units.

    Parameters
    ----------
    size : int
        Image size in pixels (square); the scanned circle is the inscribed circle.
    rng : numpy.random.Generator
        Source of every random choice (region, shapes, HU values, texture).
    config : CTPhantomConfig, optional
        Parameter ranges.

    Returns
    -------
    hu : numpy.ndarray
        ``(size, size)`` float32 HU, −1000 (air) outside the body and exactly −1000 outside the
        scanned circle; fat ≈ −100, muscle ≈ 50, liver ≈ 60, lung ≈ −850, bone 200–1100.
    pixel_mm : float
        Pixel spacing in millimetres.
    """
    cfg = config or CTPhantomConfig()
    fov = _u(rng, cfg.fov_mm)
    px = fov / size
    coords = (np.arange(size) - (size - 1) / 2.0) * px
    y, x = np.meshgrid(coords, coords, indexing="ij")  # y grows downwards (posterior)

    a = rng.uniform(0.37, 0.44) * fov  # lateral semi-axis
    b = rng.uniform(0.62, 0.8) * a  # antero-posterior semi-axis
    depth = _body_depth(x, y, rng, a, b)
    hu = np.full((size, size), AIR_HU)
    fat_t, muscle_t = rng.uniform(6.0, 30.0), rng.uniform(6.0, 16.0)
    hu[depth > 0] = rng.uniform(20.0, 40.0)  # skin
    hu[depth > 2.0] = rng.uniform(-120.0, -90.0)  # subcutaneous fat
    hu[depth > 2.0 + fat_t] = rng.uniform(40.0, 60.0)  # muscle wall
    wall = 2.0 + fat_t + muscle_t
    inner = depth > wall
    contrast = rng.random() < cfg.contrast_probability
    thorax = rng.random() < cfg.thorax_probability
    if thorax:
        _thorax(hu, x, y, inner, rng, a, b, wall, cfg, contrast)
    else:
        _abdomen(hu, x, y, inner, rng, a, b, cfg, contrast)
    # Paraspinal muscles, then the spine on top of everything.
    vy = b - wall - rng.uniform(25.0, 40.0)
    for side in (-1, 1):
        hu[_ellipse(x, y, side * 30.0, vy + 28.0, 22.0, 16.0) & (depth > 2.0 + fat_t)] = rng.uniform(40.0, 60.0)
    _vertebra(hu, x, y, rng, vy)

    soft = (hu > -200) & (hu < 150)
    hu[soft] += _u(rng, cfg.texture_hu) * gaussian_field(hu.shape, rng, 2.0 / px)[soft]
    hu = ndimage.gaussian_filter(hu, 0.5)  # partial-volume blur of the sharp painted edges
    return _mask_circle(hu).astype(np.float32), px


def water_phantom(size: int, radius_fraction: float = 0.8, fov_mm: float = 300.0) -> tuple[np.ndarray, float]:
    """Uniform water disc (0 HU) in air, for physics checks.

    Returns
    -------
    hu : numpy.ndarray
        ``(size, size)`` float32 HU.
    pixel_mm : float
        Pixel spacing in millimetres (``fov_mm / size``).
    """
    c = (np.arange(size) - (size - 1) / 2.0) / (size / 2.0)
    y, x = np.meshgrid(c, c, indexing="ij")
    hu = np.where(x**2 + y**2 <= radius_fraction**2, 0.0, AIR_HU)
    return hu.astype(np.float32), fov_mm / size


def _mask_circle(hu: np.ndarray) -> np.ndarray:
    """Air outside the inscribed circle: radon(circle=True) only sees inside it."""
    n = hu.shape[0]
    c = np.arange(n) - (n - 1) / 2.0
    outside = c[:, None] ** 2 + c[None, :] ** 2 > (n / 2.0 - 1) ** 2
    hu = hu.copy()
    hu[outside] = AIR_HU
    return hu


# Real slices shipped with pydicom's test data (no download). Compressed ones need a JPEG 2000 decoder
# (Pillow usually has one); they are skipped when it is missing.
_PYDICOM_CT_FILES = ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm")


def real_slices(size: int) -> list[tuple[str, np.ndarray, float]]:
    """Real CT slices that ship inside installed packages (pydicom test files), resampled.

    Only files present in the installed ``pydicom/data/test_files`` folder are used, so nothing is
    downloaded. Each slice is clipped to [−1000, 3071] HU, resized to ``size × size`` and masked to the
    scanned circle.

    Parameters
    ----------
    size : int
        Output size in pixels.

    Returns
    -------
    list of (str, numpy.ndarray, float)
        ``(source name, (size, size) float32 HU, pixel spacing in mm)``; empty if pydicom is missing.
    """
    try:
        import pydicom
        from pydicom.data import DATA_ROOT
    except ImportError:
        return []
    out = []
    for name in _PYDICOM_CT_FILES:
        path = os.path.join(DATA_ROOT, "test_files", name)
        if not os.path.isfile(path):
            continue
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
                raw = ds.pixel_array.astype(np.float64)
            hu = raw * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
            spacing = float(ds.PixelSpacing[0]) if "PixelSpacing" in ds else 0.5
        except Exception:  # noqa: BLE001 - any decoder problem just means "not available here"
            continue
        hu = np.clip(hu, AIR_HU, 3071.0)
        pixel_mm = spacing * hu.shape[0] / size
        hu = resize(hu, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        out.append((f"pydicom:{name}", _mask_circle(hu).astype(np.float32), pixel_mm))
    return out


# --------------------------------------------------------------------------------------------------
# Physics
# --------------------------------------------------------------------------------------------------


def hu_to_mu(hu: np.ndarray, mu_water_per_mm: float) -> np.ndarray:
    """Linear attenuation in 1/mm from HU, ``μ = μ_w (1 + HU/1000)``, floored at 0 (air)."""
    return np.clip(mu_water_per_mm * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def mu_to_hu(mu: np.ndarray, mu_water_per_mm: float) -> np.ndarray:
    """HU from linear attenuation in 1/mm, ``HU = 1000 (μ/μ_w − 1)``."""
    return 1000.0 * (np.asarray(mu, dtype=np.float64) / mu_water_per_mm - 1.0)


def projection_angles(size: int, n_views: int | None = None) -> np.ndarray:
    """View angles in degrees over [0, 180): ``n_views`` or ``ceil(1.4 × size)`` of them."""
    n = int(np.ceil(1.4 * size)) if n_views is None else int(n_views)
    if n < 2:
        raise ValueError(f"need at least 2 views, got {n}")
    return np.linspace(0.0, 180.0, n, endpoint=False)


def forward_project(mu_per_mm: np.ndarray, pixel_mm: float, theta: np.ndarray) -> np.ndarray:
    """Line integrals ``p = ∫ μ dl`` (dimensionless) of a ``(N, N)`` attenuation map.

    Returns
    -------
    numpy.ndarray
        ``(N, n_views)`` float64 sinogram (detector bins × views), detector pitch = pixel size.
    """
    # radon sums pixel values along rays in pixel steps; multiplying by the pixel size gives ∫ μ dl.
    return radon(mu_per_mm, theta=theta, circle=True) * pixel_mm


def add_quantum_noise(
    sinogram: np.ndarray,
    rng: np.random.Generator,
    i0: float,
    electronic_sigma: float = 5.0,
    min_counts: float = 0.5,
) -> np.ndarray:
    """Low-dose measurement: ``−log((Poisson(I0 e^−p) + N(0, σ_e²)) / I0)``.

    Parameters
    ----------
    sinogram : numpy.ndarray
        Noise-free line integrals ``p`` ≥ 0, any shape.
    rng : numpy.random.Generator
        Source of randomness.
    i0 : float
        Incident photons per detector bin and view (> 0).
    electronic_sigma : float
        Electronic noise σ in counts.
    min_counts : float
        Floor on the counts before the logarithm.

    Returns
    -------
    numpy.ndarray
        Noisy line integrals, same shape, float64.
    """
    if i0 <= 0:
        raise ValueError(f"i0 must be > 0, got {i0}")
    counts = rng.poisson(i0 * np.exp(-sinogram)).astype(np.float64)
    if electronic_sigma > 0:
        counts += rng.normal(0.0, electronic_sigma, size=counts.shape)
    return -np.log(np.maximum(counts, min_counts) / i0)


def fbp(sinogram: np.ndarray, theta: np.ndarray, pixel_mm: float, filter_name: str = "hann") -> np.ndarray:
    """Filtered back-projection back to attenuation in 1/mm, ``(N, N)`` for an ``(N, n_views)`` sinogram."""
    n = sinogram.shape[0]
    rec = iradon(sinogram, theta=theta, output_size=n, filter_name=filter_name, circle=True)
    return rec / pixel_mm


def simulate_low_dose(
    hu: np.ndarray,
    pixel_mm: float,
    rng: np.random.Generator,
    scan: CTScanConfig | None = None,
    *,
    strength: float = 1.0,
    need_clean: bool = True,
    need_noisy: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Clean and low-dose reconstructions of one HU slice with the same geometry.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(N, N)`` slice in HU (air outside the inscribed circle).
    pixel_mm : float
        Pixel spacing in millimetres.
    rng : numpy.random.Generator
        Source of the quantum and electronic noise.
    scan : CTScanConfig, optional
        Scanner settings.
    strength : float, default 1.0
        Noise strength ≥ 0: the dose is ``i0 / strength²`` so the noise σ grows linearly (0 = no noise).
    need_clean, need_noisy : bool
        Skip a reconstruction that is not needed (each FBP costs time).

    Returns
    -------
    clean_hu, noisy_hu : numpy.ndarray or None
        ``(N, N)`` float32 reconstructions in HU (None where not requested).
    """
    scan = scan or CTScanConfig()
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise ValueError(f"expected a square 2-D slice, got shape {hu.shape}")
    theta = projection_angles(hu.shape[0], scan.n_views)
    sino = forward_project(hu_to_mu(_mask_circle(hu), scan.mu_water_per_mm), pixel_mm, theta)

    def recon(p):
        return mu_to_hu(fbp(p, theta, pixel_mm, scan.filter_name), scan.mu_water_per_mm).astype(np.float32)

    clean = noisy = None
    if need_clean:
        ref = sino
        if scan.reference_i0 is not None:
            ref = add_quantum_noise(sino, rng, scan.reference_i0, scan.electronic_sigma, scan.min_counts)
        clean = recon(ref)
    if need_noisy:
        if strength == 0:
            noisy = recon(sino)
        else:
            noisy_sino = add_quantum_noise(sino, rng, scan.i0 / strength**2, scan.electronic_sigma, scan.min_counts)
            noisy = recon(noisy_sino)
    return clean, noisy


def window(hu: np.ndarray, window_hu: Range = (-160.0, 240.0)) -> np.ndarray:
    """Map HU to [0, 1] through a display window ``(low, high)`` with clipping; float32 output."""
    lo, hi = window_hu
    if not hi > lo:
        raise ValueError(f"window must have high > low, got {window_hu}")
    return np.clip((np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
