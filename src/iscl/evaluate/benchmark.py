"""Every method on every simulated dataset, with the same data, budget, seeds and test images.

:func:`run_benchmark` writes, under ``out_dir``:

* ``benchmark.json`` — the settings (budget, sizes, seeds, preset); a later call with other settings
  refuses to mix its results into this directory;
* ``cells/<dataset>__<method>.json`` — one finished (dataset, method) cell: PSNR/SSIM per test image,
  mean ± std, training seconds, prediction seconds per megapixel, the method's settings. A cell that
  exists is never recomputed, so an interrupted run resumes where it stopped;
* ``runs/<dataset>/<family>/`` — training logs (``log.jsonl``: every loss term per step) and, for
  ISCL, the checkpoint (its four rows are predicted from it without retraining);
* ``predictions/<dataset>/<method>.npy`` — the prediction for the figure's test image;
* ``results.json``, ``results.md`` and ``figures/<dataset>.png`` (noisy | methods | clean with a
  zoomed crop) and ``figures/<dataset>_losses.png``.

Fairness rules, enforced here: every learned method gets ``steps`` updates of ``batch_size`` 64×64
patches (the preset's patch size), the same seed, the same architecture (the preset's generator), the
same optimiser; the unpaired methods see the same clean and noisy pools; the supervised upper bound
sees ``n_train`` separately simulated training pairs (never a test image); BM3D estimates its noise
from each noisy test image alone. Every prediction is clipped to the data range [0, 1] before
scoring, for every method alike.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iscl import atomic
from iscl.methods import registry
from iscl.metrics import psnr, ssim

__all__ = ["run_benchmark", "training_pairs", "BENCHMARK_FORMAT", "cell_path", "load_results"]

BENCHMARK_FORMAT = 1
DATA_RANGE = 1.0
# a spawn-key pool code for the supervised method's training pairs: distinct from the dataset's
# pools (0 train clean, 1 train noisy, 2 test), so the pairs share no scene and no noise with them
PAIRS_POOL_CODE = 7


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def training_pairs(name: str, n: int, size: int, seed: int = 0, strength: float = 1.0,
                   dataset_code: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paired (noisy, clean) *training* images for the supervised upper bound.

    :mod:`iscl.simulate.datasets` gives unpaired training pools (ISCL's setting) and a paired test split,
    but no paired training split. These pairs are drawn with the dataset's own simulators and default
    parameters, seeded ``SeedSequence(seed, spawn_key=(dataset_code, 7, i))`` — a pool code the dataset
    does not use, so no pair shares a scene or a noise draw with the training pools or the test images.

    Parameters
    ----------
    name : ``"em-film"``, ``"em-charge"`` or ``"ct-ldct"``
    n, size : number of pairs and their side in pixels.
    seed, strength : as in :func:`iscl.simulate.datasets.load_dataset`.
    dataset_code : the dataset's spawn-key code (``params["dataset_code"]``; looked up when None).

    Returns
    -------
    noisy, clean : (n, size, size) float32 on [0, 1]
    """
    from iscl.simulate import datasets as sim

    if name not in sim.DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sim.DATASETS)}")
    if dataset_code is None:
        dataset_code = sim._DATASET_CODE[name]  # noqa: SLF001 - the same code the dataset's own seeds use
    noisy = np.empty((n, size, size), np.float32)
    clean = np.empty((n, size, size), np.float32)
    for i in range(n):
        scene_ss, noise_ss = np.random.SeedSequence(seed, spawn_key=(dataset_code, PAIRS_POOL_CODE, i)).spawn(2)
        scene_rng, noise_rng = np.random.default_rng(scene_ss), np.random.default_rng(noise_ss)
        if name.startswith("em-"):
            from iscl.simulate.em import em_tissue
            from iscl.simulate.noise import charge_noise, film_noise

            c = em_tissue(size, scene_rng)
            model = film_noise if name == "em-film" else charge_noise
            clean[i], noisy[i] = c, model(c, noise_rng, strength=strength).noisy
        else:
            from iscl.simulate.ct import CTScanConfig, phantom_hu, simulate_low_dose, window

            hu, pixel_mm = phantom_hu(size, scene_rng)
            c_hu, n_hu = simulate_low_dose(hu, pixel_mm, noise_rng, strength=strength)
            win = tuple(CTScanConfig().window_hu)
            clean[i], noisy[i] = window(c_hu, win), window(n_hu, win)
    return noisy, clean


def _pairs_cached(out: Path, name: str, n: int, size: int, seed: int, strength: float, code: int | None,
                  log: Callable[[str], None]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    path = out / "data" / f"{name}-pairs-n{n}-s{size}-seed{seed}-x{strength:g}.npz"
    if path.exists():
        with np.load(path) as z:
            return list(z["noisy"]), list(z["clean"])
    t0 = time.perf_counter()
    noisy, clean = training_pairs(name, n, size, seed, strength, code)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(path) as f:
        np.savez(f, noisy=noisy, clean=clean)
    log(f"[{name}] simulated {n} training pairs for the supervised bound in {time.perf_counter() - t0:.0f} s")
    return list(noisy), list(clean)


# --------------------------------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------------------------------


def cell_path(out_dir: str | os.PathLike, dataset: str, method: str) -> Path:
    """Where the finished (dataset, method) cell is stored."""
    return Path(out_dir) / "cells" / f"{dataset}__{method}.json"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_file(path) as f:
        np.save(f, array)


def _write_json(path: Path, obj: Any) -> None:
    # atomic: a crash never leaves a half cell that looks finished
    atomic.write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def _score(method: Any, test_noisy: np.ndarray, test_clean: np.ndarray, figure_index: int) -> dict[str, Any]:
    """Predict every test image one at a time; PSNR/SSIM on [0, 1] after clipping to the data range."""
    p, s, seconds, pixels = [], [], 0.0, 0
    figure_pred = None
    for i, (x, y) in enumerate(zip(test_noisy, test_clean)):
        t0 = time.perf_counter()
        est = method.denoise(x)
        seconds += time.perf_counter() - t0
        pixels += x.size
        est = np.clip(est, 0.0, DATA_RANGE)
        p.append(psnr(y, est, DATA_RANGE))
        s.append(ssim(y, est, DATA_RANGE))
        if i == figure_index:
            figure_pred = est.astype(np.float32)
    return {
        "psnr_mean": float(np.mean(p)), "psnr_std": float(np.std(p)),
        "ssim_mean": float(np.mean(s)), "ssim_std": float(np.std(s)),
        "psnr_per_image": [float(v) for v in p], "ssim_per_image": [float(v) for v in s],
        "predict_seconds": seconds, "predict_megapixels": pixels / 1e6,
        "predict_seconds_per_megapixel": seconds / (pixels / 1e6) if pixels else None,
        "_figure": figure_pred,
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def _metadata() -> dict[str, Any]:
    import torch

    from iscl._version import __version__

    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"iscl": __version__, "commit": commit, "torch": torch.__version__, "numpy": np.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def run_benchmark(
    datasets: Sequence[str] = ("em-film", "em-charge", "ct-ldct"),
    methods: Sequence[str] = registry.DEFAULT_METHODS,
    *,
    steps: int = 300,
    batch_size: int = 8,
    seed: int = 0,
    time_budget: float | None = None,
    out_dir: str | os.PathLike,
    n_train: int | None = None,
    n_test: int | None = None,
    size: int | None = None,
    strength: float = 1.0,
    data_seed: int = 0,
    preset: str = "cpu",
    network: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    cache_dir: str | os.PathLike | None | bool = None,
    figure_index: int = 0,
    command: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run (or resume) the benchmark and write its tables and figures.

    Parameters
    ----------
    datasets : names from :data:`iscl.simulate.datasets.DATASETS`.
    methods : row names from :data:`iscl.methods.registry.METHODS` (table order). BM3D rows are skipped,
        with a note in the results, when the optional ``bm3d`` package is missing.
    steps, batch_size : the training budget of every learned method (``steps`` updates of
        ``batch_size`` patches of the preset's patch size).
    time_budget : seconds of training per learned method instead of ``steps``: each times its first
        steps and trains as many as fit (see :meth:`~iscl.methods.base.MethodBase.fit`).
    seed : training seed of every learned method (initialisation, patch order, masks).
    out_dir : results directory (created; reused to resume when its settings match).
    n_train, n_test, size, strength, data_seed, cache_dir : passed to
        :func:`iscl.simulate.datasets.load_dataset` (None: the dataset's defaults).
    preset : ISCL preset giving every learned method's architecture and optimiser (``"cpu"``, ``"paper"``).
    network : overrides of the preset's network widths (tests use width 4).
    train : overrides of the preset's optimiser settings for every learned method alike, e.g.
        ``{"lr": 1e-3}`` (``steps``, ``batch_size`` and ``seed`` come from the arguments above).
    device : torch device for training and prediction.
    progress : progress bars while training.
    figure_index : the test image shown in the figures (fixed in advance, not picked by results).
    command : the command line that produced the run, written above the tables.
    log : where progress lines go (None: silent).

    Returns
    -------
    dict
        ``settings``, ``cells`` (``{dataset: {method: cell}}``), ``skipped`` (``{method: reason}``) and
        the paths of ``results.md``, ``results.json`` and the figures.

    Raises
    ------
    ValueError
        Unknown dataset or method names, or ``out_dir`` holds a run with other settings.
    """
    from iscl.simulate.datasets import DATASETS

    say = log or (lambda _msg: None)
    datasets, methods = list(datasets), list(dict.fromkeys(methods))
    reserved = {"steps", "batch_size", "seed"} & set(train or {})
    if reserved:
        raise ValueError(f"pass {sorted(reserved)} as arguments, not in train overrides")
    bad = [d for d in datasets if d not in DATASETS]
    if bad:
        raise ValueError(f"unknown dataset(s) {bad}; valid names: {', '.join(DATASETS)}")
    for m in methods:
        registry.family(m)  # raises on unknown names with the valid list
    if int(steps) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    out = Path(out_dir)
    settings = {"format": BENCHMARK_FORMAT, "steps": int(steps), "batch_size": int(batch_size), "seed": int(seed),
                **({"time_budget": float(time_budget)} if time_budget is not None else {}),
                "n_train": n_train, "n_test": n_test, "size": size, "strength": float(strength),
                "data_seed": int(data_seed), "preset": preset, "network": dict(network or {}),
                "train": dict(train or {}), "figure_index": int(figure_index)}
    _check_settings(out, settings)
    meta = _metadata()
    _write_json(out / "benchmark.json", {"settings": settings, "datasets": datasets, "methods": methods,
                                         "command": command, "metadata": meta})
    skipped: dict[str, str] = {}
    usable = []
    for m in methods:
        try:
            if registry.family(m).startswith("bm3d"):
                registry.get_method(m)  # import check only
            usable.append(m)
        except ImportError as exc:
            skipped[m] = str(exc)
            say(f"skipping {m}: {exc}")

    cells: dict[str, dict[str, Any]] = {}
    for name in datasets:
        cells[name] = {}
        todo = [m for m in usable if not cell_path(out, name, m).exists()]
        if todo:
            _run_dataset(name, todo, out, settings, device, progress, cache_dir, say)
        for m in usable:
            cells[name][m] = json.loads(cell_path(out, name, m).read_text())
    from iscl.evaluate import report

    results = {"settings": settings, "datasets": datasets, "methods": usable, "skipped": skipped,
               "command": command, "metadata": meta, "cells": cells}
    _write_json(out / "results.json", results)
    paths = report.write_benchmark_report(results, out, say)
    results.update(paths)
    return results


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "benchmark.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text()).get("settings", {})
    if saved != settings:
        diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise ValueError(f"{out} holds a benchmark run with other settings ({', '.join(diff)}); its cells would not "
                         "be comparable — use a new output directory or the same settings")


def _run_dataset(name: str, todo: list[str], out: Path, settings: dict[str, Any], device: str, progress: bool,
                 cache_dir: Any, say: Callable[[str], None]) -> None:
    from iscl.simulate.datasets import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(name, n_train=settings["n_train"], n_test=settings["n_test"], size=settings["size"],
                      seed=settings["data_seed"], strength=settings["strength"], cache_dir=cache_dir)
    say(f"[{name}] {len(ds.train_clean)} clean + {len(ds.train_noisy)} noisy training images (unpaired), "
        f"{len(ds.test_clean)} test pairs, {ds.test_clean.shape[-1]} px ({time.perf_counter() - t0:.0f} s)")
    fig_i = min(settings["figure_index"], len(ds.test_clean) - 1)
    preds = out / "predictions" / name
    preds.mkdir(parents=True, exist_ok=True)
    if not (preds / "_noisy.npy").exists():
        _save_npy(preds / "_noisy.npy", ds.test_noisy[fig_i])
        _save_npy(preds / "_clean.npy", ds.test_clean[fig_i])
    families: dict[str, list[str]] = {}
    for m in todo:
        families.setdefault(registry.family(m), []).append(m)
    from iscl.methods.base import resolve_config

    # one Config for every learned method: the preset, the network and optimiser overrides
    config = resolve_config(settings["preset"], settings["network"], **settings.get("train", {}))
    learned_kwargs = {"config": config}
    for fam, rows in families.items():
        spec = registry.METHODS[fam]
        run_dir = out / "runs" / name / fam
        trained = None
        train_json = run_dir / "train.json"
        if fam == "iscl" and train_json.exists() and (run_dir / "checkpoint").exists():
            # some ISCL rows are finished: predict the others from the saved model, no retraining
            trained = registry.ISCLMethod.load(run_dir, name=fam, device=device)
            trained.train_seconds = json.loads(train_json.read_text())["train_seconds"]
            say(f"[{name}] {fam}: reloaded the trained model from {run_dir}")
        if trained is None:
            kwargs = dict(learned_kwargs) if spec.trained else {}
            if fam == "iscl":
                kwargs["run_dir"] = run_dir
                # ISCL's trainer appends to its log: drop what an interrupted earlier attempt left
                (run_dir / "log.jsonl").unlink(missing_ok=True)
            trained = registry.get_method(fam, **kwargs)
            pairs = None
            if "pairs" in spec.needs:
                pairs = _pairs_cached(out, name, len(ds.train_clean), ds.test_clean.shape[-1], settings["data_seed"],
                                      settings["strength"], ds.params.get("dataset_code"), say)
            budget = settings.get("time_budget")
            if spec.trained:
                say(f"[{name}] training {fam}: " + (f"{budget:g} s" if budget else f"{settings['steps']} steps")
                    + f" x batch {settings['batch_size']}")
            trained.fit(clean=list(ds.train_clean), noisy=list(ds.train_noisy), pairs=pairs, steps=settings["steps"],
                        batch_size=settings["batch_size"], seed=settings["seed"], device=device, progress=progress,
                        time_budget=budget)
            run_dir.mkdir(parents=True, exist_ok=True)
            if trained.history and fam != "iscl":  # ISCL's trainer writes its own log.jsonl
                atomic.write_text(run_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in trained.history))
            done = sum(1 for r in trained.history if r.get("step", 0) > 0)
            _write_json(train_json, {"train_seconds": trained.train_seconds, "steps": done or settings["steps"],
                                     "batch_size": settings["batch_size"], "time_budget": budget})
            if spec.trained:
                say(f"[{name}] {fam} trained in {trained.train_seconds:.0f} s")
        for row in rows:
            method = registry.view(trained, row)
            scores = _score(method, ds.test_noisy, ds.test_clean, fig_i)
            fig = scores.pop("_figure")
            if fig is not None:
                _save_npy(preds / f"{row}.npy", fig)
            cell = {"dataset": name, "method": row, "family": fam,
                    "description": registry.METHODS[row].description,
                    "needs": sorted(registry.METHODS[row].needs),
                    "budget": {"steps": settings["steps"], "batch_size": settings["batch_size"],
                               "seed": settings["seed"]} if spec.trained else None,
                    "train_seconds": trained.train_seconds if spec.trained else 0.0,
                    **scores,
                    "n_test": int(len(ds.test_clean)), "dataset_params": ds.params,
                    "settings": _jsonable(method.describe())}
            _write_json(cell_path(out, name, row), cell)
            say(f"[{name}] {row:12s} PSNR {scores['psnr_mean']:.2f} ± {scores['psnr_std']:.2f} dB  "
                f"SSIM {scores['ssim_mean']:.3f}  ({scores['predict_seconds_per_megapixel']:.2f} s/MPix)")


def load_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``results.json`` of a finished run."""
    return json.loads((Path(out_dir) / "results.json").read_text())
