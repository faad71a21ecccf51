"""Named, seeded, cached simulated datasets for unpaired denoising: ``em-film``, ``em-charge``, ``ct-ldct``.

Each dataset has

* an **unpaired training split**: a pool of clean images and a pool of noisy images drawn from
  *different* scenes (the setting ISCL is trained in), and
* a **paired test split**: clean and noisy versions of the same scenes, for PSNR/SSIM.

Seeding: every image has its own :class:`numpy.random.SeedSequence`
``SeedSequence(seed, spawn_key=(dataset_code, pool_code, index))`` with pool codes 0 = train clean,
1 = train noisy, 2 = test; its two children seed the scene and the noise. Distinct spawn keys give
independent streams, so the clean and noisy pools never share a scene, and an image does not depend on
how many others are generated (or on the number of worker processes).

Generated arrays are cached in ``cache_dir`` (argument), else ``$ISCL_CACHE_DIR``, else the user cache
directory (``~/.cache/iscl`` on Linux), under ``datasets/<name>-<hash of all parameters>.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from iscl import atomic
from iscl.simulate.ct import (
    CTPhantomConfig,
    CTScanConfig,
    phantom_hu,
    projection_angles,
    real_slices,
    simulate_low_dose,
    window,
)
from iscl.simulate.em import EMTissueConfig, em_tissue
from iscl.simulate.noise import ChargeNoiseConfig, FilmNoiseConfig, ShotNoiseConfig, charge_noise, film_noise

__all__ = [
    "DATASETS",
    "SimulatedDataset",
    "load_dataset",
    "write_dataset",
    "default_cache_dir",
    "scene_seed",
]

DATASETS: tuple[str, ...] = ("em-film", "em-charge", "ct-ldct")

#: Bump when a generator changes its output, so stale cache entries are not reused.
SIMULATOR_VERSION = 1

# Defaults chosen to generate in about a minute on 2 cores (see docs/simulation.md for timings).
_DEFAULT_SIZES = {
    "em-film": {"n_train": 256, "n_test": 32, "size": 256},
    "em-charge": {"n_train": 256, "n_test": 32, "size": 256},
    "ct-ldct": {"n_train": 64, "n_test": 16, "size": 256},
}
_DATASET_CODE = {"em-film": 1, "em-charge": 2, "ct-ldct": 3}
_POOL_CODE = {"train_clean": 0, "train_noisy": 1, "test": 2}


@dataclass
class SimulatedDataset:
    """A generated dataset; all image arrays are float32 ``(N, H, W)``.

    Attributes
    ----------
    name : str
        One of :data:`DATASETS`.
    train_clean, train_noisy : numpy.ndarray
        Unpaired training pools on [0, 1], ``(n_train, size, size)`` each, from disjoint scenes.
    test_clean, test_noisy : numpy.ndarray
        Paired test split on [0, 1], ``(n_test, size, size)``: image ``i`` of both is the same scene.
    params : dict
        Every parameter (sizes, seed, strength, model ranges, seeding scheme), JSON-serialisable.
    train_clean_hu, train_noisy_hu, test_clean_hu, test_noisy_hu : numpy.ndarray or None
        CT only: the same images in Hounsfield units (the [0, 1] arrays are these through the window
        ``params["scan"]["window_hu"]``). None for EM.
    cache_path : str or None
        The cache file the arrays were stored in or read from (None when caching was disabled).
    """

    name: str
    train_clean: np.ndarray
    train_noisy: np.ndarray
    test_clean: np.ndarray
    test_noisy: np.ndarray
    params: dict
    train_clean_hu: np.ndarray | None = None
    train_noisy_hu: np.ndarray | None = None
    test_clean_hu: np.ndarray | None = None
    test_noisy_hu: np.ndarray | None = None
    cache_path: str | None = None

    def test_metrics(self) -> dict:
        """Noisy-input PSNR/SSIM of the test split on [0, 1] (see :func:`iscl.metrics.mean_metrics`)."""
        from iscl.metrics import mean_metrics

        return mean_metrics(self.test_clean, self.test_noisy, data_range=1.0)


# --------------------------------------------------------------------------------------------------
# Seeds and parameters
# --------------------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def scene_seed(name: str, seed: int, pool: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of image ``index`` of ``pool`` ('train_clean', 'train_noisy' or 'test')."""
    _check_name(name)
    if pool not in _POOL_CODE:
        raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(_POOL_CODE)}")
    return np.random.SeedSequence(seed, spawn_key=(_DATASET_CODE[name], _POOL_CODE[pool], int(index)))


def _resolve_sizes(name, n_train, n_test, size) -> tuple[int, int, int]:
    d = _DEFAULT_SIZES[name]
    n_train = d["n_train"] if n_train is None else int(n_train)
    n_test = d["n_test"] if n_test is None else int(n_test)
    size = d["size"] if size is None else int(size)
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    return n_train, n_test, size


@lru_cache(maxsize=4)
def _real_ct(size: int) -> tuple[tuple[str, np.ndarray, float], ...]:
    return tuple(real_slices(size))


def _n_real_test(n_test: int, available: int) -> int:
    """Real slices take at most a quarter of the test split, so the procedural scenes still dominate."""
    return min(available, n_test // 4)


def _build_params(name, n_train, n_test, size, seed, strength) -> dict:
    params: dict = {
        "name": name,
        "seed": int(seed),
        "strength": float(strength),
        "n_train": n_train,
        "n_test": n_test,
        "size": size,
        "simulator_version": SIMULATOR_VERSION,
        "dataset_code": _DATASET_CODE[name],
        "seeding": (
            "numpy SeedSequence(seed, spawn_key=(dataset_code, pool, index)), pool 0 = train clean, "
            "1 = train noisy, 2 = test; child 0 seeds the scene, child 1 the noise"
        ),
        "value_range": [0.0, 1.0],
    }
    if name.startswith("em-"):
        params["tissue"] = asdict(EMTissueConfig())
        params["noise_model"] = "film" if name == "em-film" else "charge"
        params["noise"] = asdict(FilmNoiseConfig() if name == "em-film" else ChargeNoiseConfig())
        params["shot"] = asdict(ShotNoiseConfig())
    else:
        scan = CTScanConfig()
        params["phantom"] = asdict(CTPhantomConfig())
        params["scan"] = asdict(scan)
        params["n_views"] = len(projection_angles(size, scan.n_views))
        params["effective_i0"] = None if strength == 0 else scan.i0 / strength**2
        real = [s for s, _, _ in _real_ct(size)][: _n_real_test(n_test, len(_real_ct(size)))]
        params["test_sources"] = ["procedural"] * (n_test - len(real)) + real
    return json.loads(json.dumps(params))  # tuples → lists: what is cached is what is returned


# --------------------------------------------------------------------------------------------------
# Rendering one image (module level so that worker processes can run it)
# --------------------------------------------------------------------------------------------------


def _render(task: tuple) -> dict:
    """Render one image of one pool; returns the arrays that pool keeps."""
    name, seed, pool, index, size, strength, source = task
    scene_ss, noise_ss = scene_seed(name, seed, pool, index).spawn(2)
    scene_rng, noise_rng = np.random.default_rng(scene_ss), np.random.default_rng(noise_ss)
    want_clean = pool in ("train_clean", "test")
    want_noisy = pool in ("train_noisy", "test")
    out = {}
    if name.startswith("em-"):
        clean = em_tissue(size, scene_rng)
        if want_clean:
            out["clean"] = clean
        if want_noisy:
            model = film_noise if name == "em-film" else charge_noise
            out["noisy"] = model(clean, noise_rng, strength=strength).noisy
        return out
    if source == "procedural":
        hu, pixel_mm = phantom_hu(size, scene_rng)
    else:
        _, hu, pixel_mm = next(s for s in _real_ct(size) if s[0] == source)
    clean_hu, noisy_hu = simulate_low_dose(
        hu, pixel_mm, noise_rng, strength=strength, need_clean=want_clean, need_noisy=want_noisy
    )
    if want_clean:
        out["clean"] = clean_hu
    if want_noisy:
        out["noisy"] = noisy_hu
    return out


def _default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _estimated_seconds(name: str, n_images: int, size: int) -> float:
    # Rough single-core costs measured on a 2-core machine (see benchmarks/simulate_speed.py).
    per_pixel = 1.6e-6 if name.startswith("em-") else 1.0e-5 * size / 256.0
    return n_images * size * size * per_pixel


def _render_all(tasks: list[tuple], workers: int | None, name: str, size: int) -> list[dict]:
    """Render all tasks, in order; the result does not depend on ``workers``."""
    workers = _default_workers() if workers is None else max(int(workers), 1)
    workers = min(workers, len(tasks))
    if workers <= 1 or _estimated_seconds(name, len(tasks), size) < 2.0:
        return [_render(t) for t in tasks]  # small jobs (the tests): pool start-up would dominate
    # The EM generators spend their time in numpy/scipy kernels that release the GIL, so threads
    # scale. skimage's radon/iradon hold it, so CT needs processes; "fork" is used because "spawn"
    # would re-import the caller's __main__ (breaking unguarded scripts). Where fork is not the
    # platform's safe default (macOS, Windows) CT falls back to threads, which is correct but slower.
    use_fork = name == "ct-ldct" and sys.platform.startswith("linux")
    if not use_fork:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(_render, tasks))
    import multiprocessing
    import warnings

    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        # Python ≥ 3.12 warns when forking a process that has threads (e.g. torch is loaded); the
        # children only run numpy/scipy/skimage code and never touch those threads' state.
        warnings.simplefilter("ignore", DeprecationWarning)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            return list(pool.map(_render, tasks, chunksize=max(1, len(tasks) // (8 * workers))))


def _generate(name, n_train, n_test, size, seed, strength, params, workers) -> dict[str, np.ndarray]:
    sources = params.get("test_sources", ["procedural"] * n_test)
    tasks = [(name, seed, "train_clean", i, size, strength, "procedural") for i in range(n_train)]
    tasks += [(name, seed, "train_noisy", i, size, strength, "procedural") for i in range(n_train)]
    tasks += [(name, seed, "test", i, size, strength, sources[i]) for i in range(n_test)]
    results = _render_all(tasks, workers, name, size)

    def stack(rs, key):
        if not rs:
            return np.zeros((0, size, size), np.float32)
        return np.stack([r[key] for r in rs]).astype(np.float32, copy=False)

    tc, tn, te = results[:n_train], results[n_train : 2 * n_train], results[2 * n_train :]
    return {
        "train_clean": stack(tc, "clean"),
        "train_noisy": stack(tn, "noisy"),
        "test_clean": stack(te, "clean"),
        "test_noisy": stack(te, "noisy"),
    }


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$ISCL_CACHE_DIR`` if set, else the platform's user cache directory + ``/iscl``."""
    env = os.environ.get("ISCL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "iscl"


def _cache_file(cache_dir, params: dict) -> Path | None:
    if cache_dir is False:
        return None
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return root / "datasets" / f"{params['name']}-{key}.npz"


def _read_cache(path: Path | None, params: dict) -> dict[str, np.ndarray] | None:
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["params_json"])) != params:
                return None  # hash collision or a hand-edited file: regenerate
            return {k: z[k] for k in ("train_clean", "train_noisy", "test_clean", "test_noisy")}
    except Exception:  # noqa: BLE001 - a truncated or corrupt cache file is simply regenerated
        return None


def _write_cache(path: Path | None, params: dict, arrays: dict[str, np.ndarray]) -> None:
    if path is None:
        return
    try:  # atomic: readers never see a half-written file
        with atomic.atomic_file(path) as f:
            np.savez(f, params_json=np.array(json.dumps(params, sort_keys=True)), **arrays)
    except OSError:
        return  # a read-only or full cache location must not stop the user from getting the data


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    size: int | None = None,
    seed: int = 0,
    strength: float = 1.0,
    cache_dir: str | os.PathLike | None | bool = None,
    workers: int | None = None,
) -> SimulatedDataset:
    """Generate (or read from the cache) a named simulated dataset.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``'em-film'``, ``'em-charge'``, ``'ct-ldct'``.
    n_train : int, optional
        Images per training pool (clean and noisy each). Default 256 (EM) or 64 (CT).
    n_test : int, optional
        Paired test images. Default 32 (EM) or 16 (CT).
    size : int, optional
        Image side in pixels (≥ 16). Default 256.
    seed : int, default 0
        Non-negative master seed.
    strength : float, default 1.0
        Noise strength ≥ 0; every noise standard deviation scales linearly with it (for CT the dose is
        ``I0 / strength²``).
    cache_dir : path, None or False
        Cache location; None uses ``$ISCL_CACHE_DIR`` or the user cache directory; False disables it.
    workers : int, optional
        Worker processes for large jobs (default: all available cores; 1 = in-process).

    Returns
    -------
    SimulatedDataset
        float32 arrays on [0, 1] (CT: the soft-tissue window, plus HU arrays) and ``params``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or invalid sizes/seed/strength.
    """
    _check_name(name)
    n_train, n_test, size = _resolve_sizes(name, n_train, n_test, size)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    seed, strength = int(seed), float(strength)
    params = _build_params(name, n_train, n_test, size, seed, strength)
    path = _cache_file(cache_dir, params)
    arrays = _read_cache(path, params)
    if arrays is None:
        arrays = _generate(name, n_train, n_test, size, seed, strength, params, workers)
        _write_cache(path, params, arrays)
    cache_path = str(path) if path is not None else None
    if name.startswith("em-"):
        return SimulatedDataset(name=name, params=params, cache_path=cache_path, **arrays)
    win = tuple(params["scan"]["window_hu"])
    unit = {k: window(v, win) for k, v in arrays.items()}
    hu = {f"{k}_hu": v for k, v in arrays.items()}
    return SimulatedDataset(name=name, params=params, cache_path=cache_path, **unit, **hu)


def _write_preview(ds: SimulatedDataset, path: Path) -> None:
    """A 2-row figure of clean (top) and noisy (bottom) test images."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paired = len(ds.test_clean) > 0
    clean = ds.test_clean if paired else ds.train_clean
    noisy = ds.test_noisy if paired else ds.train_noisy
    k = max(min(4, len(clean), len(noisy)), 1)
    fig = Figure(figsize=(2.6 * k, 5.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, k, squeeze=False)
    for j in range(k):
        for row, (stack, label) in enumerate(((clean, "clean"), (noisy, "noisy"))):
            ax = axes[row, j]
            ax.set_axis_off()
            if j < len(stack):
                ax.imshow(stack[j], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_title(f"{label} {j}" if paired else f"{label} (unpaired) {j}", fontsize=9)
    fig.suptitle(f"{ds.name} (seed {ds.params['seed']}, strength {ds.params['strength']:g})", fontsize=10)
    fig.tight_layout()
    with atomic.atomic_file(path) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")


def write_dataset(
    name: str,
    out_dir: str | os.PathLike,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    size: int | None = None,
    seed: int = 0,
    strength: float = 1.0,
    preview: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike | None | bool = None,
    workers: int | None = None,
) -> dict:
    """Generate a named dataset and write it as float32 TIFFs on [0, 1].

    Layout: ``out_dir/train/clean/*.tif``, ``out_dir/train/noisy/*.tif`` (unpaired: the same file
    name in both pools is *not* the same scene), ``out_dir/test/clean/*.tif`` and
    ``out_dir/test/noisy/*.tif`` (paired by file name), ``dataset.json`` (every parameter, the seed and
    the test metrics) and, with ``preview=True``, ``preview.png``.

    The files are written into a temporary sibling directory that is renamed to ``out_dir`` at the end,
    so an interrupted run never leaves a half dataset that looks complete.

    Parameters
    ----------
    name, n_train, n_test, size, seed, strength, cache_dir, workers
        As in :func:`load_dataset`.
    out_dir : path
        Destination directory; it must not exist or be empty, unless ``overwrite``.
    preview : bool, default False
        Also write ``preview.png`` (clean/noisy test examples).
    overwrite : bool, default False
        Replace an existing non-empty ``out_dir``.

    Returns
    -------
    dict
        Summary: ``name``, ``out_dir``, ``n_train``, ``n_test``, ``size``, ``seed``, ``strength``,
        ``psnr`` and ``ssim`` (test split noisy vs clean, mean, data_range 1; None without test
        images), ``files`` (counts per folder), ``preview`` (path or None), ``seconds``.

    Raises
    ------
    ValueError
        Unknown name, or ``out_dir`` is non-empty and ``overwrite`` is False.
    """
    import tifffile

    _check_name(name)
    out = Path(out_dir).expanduser().resolve()  # absolute: "." must become a real name to rename
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output directory {out} is not empty; pass overwrite=True to replace it")
    t0 = time.perf_counter()
    ds = load_dataset(
        name, n_train=n_train, n_test=n_test, size=size, seed=seed, strength=strength,
        cache_dir=cache_dir, workers=workers,
    )
    metrics = ds.test_metrics() if len(ds.test_clean) else None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        folders = {
            "train/clean": ds.train_clean,
            "train/noisy": ds.train_noisy,
            "test/clean": ds.test_clean,
            "test/noisy": ds.test_noisy,
        }
        for folder, stack in folders.items():
            (tmp / folder).mkdir(parents=True)
            for i, img in enumerate(stack):
                tifffile.imwrite(tmp / folder / f"{i:05d}.tif", np.ascontiguousarray(img, dtype=np.float32))
        info = {
            "params": ds.params,
            "format": "float32 TIFF, one 2-D image per file, values on [0, 1]",
            "pairing": "test/clean/X.tif and test/noisy/X.tif are the same scene; train pools are unpaired",
            "files": {k: len(v) for k, v in folders.items()},
            "test_metrics": metrics,
        }
        if name == "ct-ldct":
            lo, hi = ds.params["scan"]["window_hu"]
            info["to_hu"] = f"HU = {lo} + x * {hi - lo} (values at 0 or 1 are clipped by the window)"
        if preview:
            _write_preview(ds, tmp / "preview.png")
        info["generation_seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        # Swap the finished directory in; an existing one is moved aside first (rename cannot replace
        # a non-empty directory) and deleted only after the new one is in place.
        atomic.publish_dir(tmp, out, overwrite=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "name": name,
        "out_dir": str(out),
        "n_train": ds.params["n_train"],
        "n_test": ds.params["n_test"],
        "size": ds.params["size"],
        "seed": ds.params["seed"],
        "strength": ds.params["strength"],
        "psnr": None if metrics is None else metrics["psnr"],
        "ssim": None if metrics is None else metrics["ssim"],
        "files": info["files"],
        "preview": str(out / "preview.png") if preview else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
