"""Data families for choosing settings without fitting our own simulator or touching test images.

A *family* gives, for each of the three tasks (``em-film``, ``em-charge``, ``ct-ldct``), unpaired
training pools (clean, noisy; different scenes) and paired **validation** pairs, all float32 on [0, 1]:

* ``sim`` — the project's simulator as the benchmark uses it: the benchmark's training pools (seed 0)
  and separately simulated validation pairs (seed 1001). Never the benchmark's test images.
* ``alt`` — data our simulator does not make with its defaults: other tissue statistics (larger cells,
  thicker membranes, more texture, fewer organelles), other noise strengths and spectra (rougher, stronger
  film with more shot noise; weaker, longer-correlated charging lines with more streaks), and a different
  CT scanner (4x the dose, so a cleaner input as on many real scanners; fewer views; the sharp ramp filter
  instead of Hann; another field of view and display window). Seeds 2001 (pools) and 2002 (validation).

A setting is kept only if it helps on both families (docs/benchmark.md). Arrays are cached in
``$ISCL_CACHE_DIR``/``~/.cache/iscl`` like the datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from iscl.simulate.ct import CTPhantomConfig, CTScanConfig, phantom_hu, simulate_low_dose, window
from iscl.simulate.datasets import default_cache_dir, load_dataset
from iscl.simulate.em import EMTissueConfig, em_tissue
from iscl.simulate.noise import ChargeNoiseConfig, FilmNoiseConfig, ShotNoiseConfig, charge_noise, film_noise

TASKS = ("em-film", "em-charge", "ct-ldct")
FAMILIES = ("sim", "alt")
SIM_VALIDATION_SEED = 1001
ALT_POOL_SEED, ALT_VALIDATION_SEED = 2001, 2002

# ---- the alt family's parameters (each differs from the simulator's defaults)
ALT_TISSUE = replace(EMTissueConfig(), cell_diameter_px=(40.0, 90.0), membrane_width_px=(1.6, 3.0),
                     membrane_darkness=(0.4, 0.7), texture_std=(0.05, 0.1), texture_scale_px=(1.2, 2.5),
                     mito_density=(0.5, 3.0), vesicle_cluster_density=(0.0, 1.5), blur_sigma_px=(0.8, 1.6))
ALT_FILM = replace(FilmNoiseConfig(), k=(0.6, 0.9), mottle_beta=(1.6, 2.2), grain_scale_px=(1.0, 2.0),
                   grain_std=(0.12, 0.22), dust_mean=(0.0, 3.0))
ALT_FILM_SHOT = replace(ShotNoiseConfig(), electrons_at_white=(35.0, 70.0))
ALT_CHARGE = replace(ChargeNoiseConfig(), line_sigma=(0.025, 0.05), line_ar=(0.5, 0.9), drift_sigma=(0.04, 0.08),
                     centres_mean=(0.0, 3.0), streaks_mean=(20.0, 50.0), streak_amplitude=(0.05, 0.2))
ALT_CHARGE_SHOT = replace(ShotNoiseConfig(), electrons_at_white=(150.0, 300.0), read_sigma=(0.02, 0.04))
ALT_PHANTOM = replace(CTPhantomConfig(), fov_mm=(260.0, 360.0), texture_hu=(8.0, 20.0), lesions=(2.0, 8.0))
ALT_SCAN = replace(CTScanConfig(), i0=1e5, filter_name="ramp", window_hu=(-250.0, 350.0))
ALT_SIZE = 192
ALT_VIEWS_PER_PIXEL = 1.0  # the simulator uses ceil(1.4 x size) views


@dataclass
class Split:
    """One task of one family: unpaired training pools and paired validation pairs, (N, H, W) on [0, 1]."""

    train_clean: np.ndarray
    train_noisy: np.ndarray
    val_clean: np.ndarray
    val_noisy: np.ndarray


def _alt_image(task: str, seed: int, pool: int, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    scene_ss, noise_ss = np.random.SeedSequence(seed, spawn_key=(TASKS.index(task), pool, index)).spawn(2)
    scene, noise = np.random.default_rng(scene_ss), np.random.default_rng(noise_ss)
    want_clean, want_noisy = pool in (0, 2), pool in (1, 2)
    if task.startswith("em-"):
        clean = em_tissue(ALT_SIZE, scene, ALT_TISSUE)
        if task == "em-film":
            noisy = film_noise(clean, noise, config=ALT_FILM, shot=ALT_FILM_SHOT).noisy
        else:
            noisy = charge_noise(clean, noise, strength=1.2, config=ALT_CHARGE, shot=ALT_CHARGE_SHOT).noisy
        return clean, noisy
    hu, pixel_mm = phantom_hu(ALT_SIZE, scene, ALT_PHANTOM)
    scan = replace(ALT_SCAN, n_views=int(ALT_VIEWS_PER_PIXEL * ALT_SIZE))
    c_hu, n_hu = simulate_low_dose(hu, pixel_mm, noise, scan, need_clean=want_clean, need_noisy=want_noisy)
    return (window(c_hu, scan.window_hu) if c_hu is not None else None,
            window(n_hu, scan.window_hu) if n_hu is not None else None)


def _alt_task(args: tuple) -> tuple[np.ndarray | None, np.ndarray | None]:
    return _alt_image(*args)


def _alt(task: str, n_train: int, n_val: int, workers: int, val_seed: int = ALT_VALIDATION_SEED) -> Split:
    """The alt family's pools and ``n_val`` pairs drawn with ``val_seed`` (another seed: other paired images)."""
    spec = {"task": task, "n_train": n_train, "n_val": n_val, "size": ALT_SIZE, "v": 1,
            "params": [asdict(c) for c in (ALT_TISSUE, ALT_FILM, ALT_FILM_SHOT, ALT_CHARGE, ALT_CHARGE_SHOT,
                                           ALT_PHANTOM, ALT_SCAN)]}
    if val_seed != ALT_VALIDATION_SEED:  # (the default stays out of the key: existing caches keep their names)
        spec["val_seed"] = val_seed
    key = json.dumps(spec, sort_keys=True, default=str)
    path = Path(os.environ.get("ISCL_CACHE_DIR") or default_cache_dir()) / "families" / (
        f"alt-{task}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz")
    if path.exists():
        with np.load(path) as z:
            return Split(*(z[k] for k in ("train_clean", "train_noisy", "val_clean", "val_noisy")))
    jobs = ([(task, ALT_POOL_SEED, pool, i) for pool in (0, 1) for i in range(n_train)]
            + [(task, val_seed, 2, i) for i in range(n_val)])
    with ProcessPoolExecutor(workers) as pool:
        out = list(pool.map(_alt_task, jobs, chunksize=4))
    tc = np.stack([c for c, _ in out[:n_train]])
    tn = np.stack([n for _, n in out[n_train : 2 * n_train]])
    vc = np.stack([c for c, _ in out[2 * n_train :]])
    vn = np.stack([n for _, n in out[2 * n_train :]])
    split = Split(*(a.astype(np.float32) for a in (tc, tn, vc, vn)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # per process: two runs may fill one cache at once
    np.savez(tmp, **asdict(split))
    os.replace(tmp, path)
    return split


def load_family(family: str, task: str, n_val: int = 8, workers: int = 2) -> Split:
    """Training pools and validation pairs of ``task`` in ``family`` (see the module docstring)."""
    if family not in FAMILIES or task not in TASKS:
        raise ValueError(f"unknown family/task {family}/{task}; expected {FAMILIES} x {TASKS}")
    if family == "sim":
        train = load_dataset(task, seed=0)
        val = load_dataset(task, seed=SIM_VALIDATION_SEED, n_train=1, n_test=n_val)
        return Split(train.train_clean, train.train_noisy, val.test_clean, val.test_noisy)
    n_train = 64 if task == "ct-ldct" else 192
    return _alt(task, n_train, n_val, workers)


if __name__ == "__main__":  # generate (and cache) everything, and print the noisy-input PSNR of each split
    from iscl.metrics import psnr

    for fam in FAMILIES:
        for t in TASKS:
            s = load_family(fam, t)
            p = np.mean([psnr(c, n, 1.0) for c, n in zip(s.val_clean, s.val_noisy)])
            print(f"{fam:4s} {t:10s} train {s.train_clean.shape} val {s.val_clean.shape} noisy val PSNR {p:.2f} dB")
