"""The paper's k-fold protocol (method.md §5, official ``scripts/demo_EM.py``), and scoring a trained model.

The protocol, exactly as the official script runs it on ``n`` paired images (``clean[i]`` and
``noisy[i]`` show the same scene):

1. ``np.random.seed(2019); perm = np.random.permutation(n)``; ``perm.reshape(k, -1)`` gives k equal
   test folds (the official reshape fails unless k divides n; so does :func:`kfold_splits` by default).
2. For test fold j, the remaining indices **in ascending order** (``np.setdiff1d``) are cut at
   ``half = int(len/2)``: the first half gives the clean training images, the second half the noisy
   ones — training is unpaired, and no training image shows a test scene.
3. ISCL trains on them (8-fold dihedral augmentation, non-overlapping 64×64 patches: the config's
   defaults) and predicts each full noisy test image alone.
4. PSNR and SSIM (scikit-image) of each prediction against its clean pair, on the clean images' scale
   (8-bit: [0, 255], ``data_range=255``; predictions are floats, not rounded, as the official
   ``predict`` returns them); mean per fold, then mean over the k folds (the official ``demo_EM.py``
   prints ``sum(cv_psnr)/4`` and ``sum(cv_ssim)/4``, a literal 4 whatever ``--kfold`` is, so its
   number is the mean only for k = 4; here the sum is divided by k).

Example
-------
>>> [f.test.tolist() for f in kfold_splits(8, k=4)]
[[1, 4], [3, 6], [7, 5], [2, 0]]
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iscl import atomic
from iscl.metrics import psnr, ssim

__all__ = ["Fold", "official_permutation", "kfold_splits", "run_crossval", "evaluate_model", "read_paired",
           "default_data_range", "PAPER_SEED"]

PAPER_SEED = 2019  # np.random.seed(2019) in the official demo_EM.py


@dataclass(frozen=True)
class Fold:
    """One fold of the protocol: 0-based ``index``, and index arrays into the paired image lists.

    ``test`` is in permutation order (the order the official script predicts them); ``train_clean``
    and ``train_noisy`` are the first and second halves of the sorted remaining indices.
    """

    index: int
    test: np.ndarray
    train_clean: np.ndarray
    train_noisy: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {"fold": self.index + 1, "test": self.test.tolist(), "train_clean": self.train_clean.tolist(),
                "train_noisy": self.train_noisy.tolist()}


def official_permutation(n: int, seed: int = PAPER_SEED) -> np.ndarray:
    """``np.random.seed(seed); np.random.permutation(n)`` without touching NumPy's global state.

    ``RandomState(seed)`` is the legacy generator behind ``np.random.seed``, so the permutation is the
    same bit for bit.
    """
    return np.random.RandomState(seed).permutation(int(n))


def kfold_splits(n: int, k: int = 4, seed: int = PAPER_SEED, *, strict: bool = True) -> list[Fold]:
    """The k folds of the official protocol for ``n`` paired images.

    Parameters
    ----------
    n : int
        Number of image pairs.
    k : int
        Number of folds (paper: 4).
    seed : int
        Seed of the legacy global-state permutation (paper: 2019).
    strict : bool
        True (default): k must divide n, as the official ``reshape(k, -1)`` requires. False: folds of
        sizes differing by one (``np.array_split``), an extension of the protocol.

    Returns
    -------
    list of Fold
        Test folds cover every index exactly once; each fold's two training halves are disjoint from
        each other and from its test fold.

    Raises
    ------
    ValueError
        ``k < 2``, too few images for two non-empty training halves, or (strict) ``n % k != 0``.
    """
    n, k = int(n), int(k)
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if n < k or n - (n + k - 1) // k < 2:
        raise ValueError(f"{n} image pairs are too few for {k} folds: each fold needs at least 2 training "
                         "images (one clean, one noisy)")
    perm = official_permutation(n, seed)
    if n % k:
        if strict:
            raise ValueError(f"the paper's protocol splits the {n} images into {k} equal folds, but {k} does not "
                             f"divide {n}; use a number of images divisible by {k}, another k, or strict=False")
        tests = np.array_split(perm, k)
    else:
        tests = list(perm.reshape(k, -1))
    folds = []
    for j, test in enumerate(tests):
        rest = np.setdiff1d(np.arange(n), test)  # sorted, as in the official script
        half = int(len(rest) / 2)
        folds.append(Fold(j, np.asarray(test), rest[:half], rest[half:]))
    return folds


def default_data_range(clean: Sequence[np.ndarray]) -> float:
    """The data range to score with: the dtype's range for integer images (uint8 → 255, as the paper),
    1.0 for float images on [0, 1], else the clean images' peak-to-peak range."""
    first = np.asarray(clean[0])
    if first.dtype.kind in "ui" and all(np.asarray(c).dtype == first.dtype for c in clean):
        info = np.iinfo(first.dtype)
        return float(info.max) - float(info.min)
    lo = min(float(np.min(c)) for c in clean)
    hi = max(float(np.max(c)) for c in clean)
    if lo >= 0.0 and hi <= 1.0:
        return 1.0
    if not hi > lo:
        raise ValueError("clean images are constant; pass data_range explicitly")
    return hi - lo


def read_paired(clean: str | os.PathLike | Sequence[Any], noisy: str | os.PathLike | Sequence[Any]
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Read paired images from two folders (or lists of files), matched by file name.

    Stacks ``(Z, H, W)`` contribute one pair per slice. When both folders hold the same file names,
    those are paired; otherwise the two sorted (natural-order) lists are paired position by position,
    which needs equal counts.

    Returns
    -------
    clean, noisy : lists of 2-D arrays in the files' dtypes.
    names : one label per pair (``file`` or ``file[z]``).

    Raises
    ------
    ValueError
        Different numbers of images, or a pair of different shapes.
    """
    from iscl.data.io import find_images, read_image

    cf, nf = find_images(clean), find_images(noisy)
    cnames, nnames = [p.name for p in cf], [p.name for p in nf]
    if set(cnames) == set(nnames) and len(set(cnames)) == len(cnames):
        by_name = dict(zip(nnames, nf))
        nf = [by_name[c] for c in cnames]
    elif len(cf) != len(nf):
        raise ValueError(f"got {len(cf)} clean and {len(nf)} noisy files; the protocol needs pairs (same scene "
                         "in both folders), matched by file name or by sorted order")
    out_c, out_n, names = [], [], []
    for c_path, n_path in zip(cf, nf):
        c, _ = read_image(c_path)
        x, _ = read_image(n_path)
        if c.shape != x.shape:
            raise ValueError(f"{c_path.name} is {c.shape} but its noisy pair {n_path.name} is {x.shape}")
        if c.ndim == 3:
            for z in range(c.shape[0]):
                out_c.append(c[z])
                out_n.append(x[z])
                names.append(f"{c_path.name}[{z}]")
        else:
            out_c.append(c)
            out_n.append(x)
            names.append(c_path.name)
    return out_c, out_n, names


def _load_images(images: Any, what: str) -> tuple[list[np.ndarray], list[str] | None]:
    """Arrays from arrays, a stack, a folder or a list of files."""
    if isinstance(images, np.ndarray):
        return ([images] if images.ndim == 2 else list(images)), None
    if isinstance(images, (str, os.PathLike)) or (images and isinstance(images[0], (str, os.PathLike))):
        from iscl.data.io import find_images, read_image

        arrays, names = [], []
        for p in find_images(images):
            a, _ = read_image(p)
            if a.ndim == 3:
                arrays += list(a)
                names += [f"{p.name}[{z}]" for z in range(a.shape[0])]
            else:
                arrays.append(a)
                names.append(p.name)
        return arrays, names
    items = list(images)
    if not items:
        raise ValueError(f"{what}: no images given")
    return [np.asarray(a) for a in items], None


def _score_pairs(predict: Callable[[np.ndarray], np.ndarray], clean: Sequence[np.ndarray],
                 noisy: Sequence[np.ndarray], indices: Sequence[int], names: Sequence[str] | None,
                 data_range: float) -> list[dict[str, Any]]:
    rows = []
    for i in indices:
        ref = np.asarray(clean[i], dtype=np.float64)
        x = np.asarray(noisy[i])
        t0 = time.perf_counter()
        est = np.asarray(predict(x), dtype=np.float64)
        seconds = time.perf_counter() - t0
        rows.append({"index": int(i), "name": names[i] if names else str(i),
                     "psnr": psnr(ref, est, data_range), "ssim": ssim(ref, est, data_range),
                     "noisy_psnr": psnr(ref, x.astype(np.float64), data_range),
                     "noisy_ssim": ssim(ref, x.astype(np.float64), data_range), "seconds": seconds})
    return rows


def _float_predict(model: Any, output: str = "denoised", weights: str | None = None
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """Predictions as floats in the image's units, not rounded (the official ``predict`` returns
    ``(ŷ + 1)·0.5·255`` unrounded for 8-bit data): the input is cast to float32 first."""
    def predict(x: np.ndarray) -> np.ndarray:
        return model.denoise(np.asarray(x, dtype=np.float32), output=output, weights=weights)

    return predict


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for key in ("psnr", "ssim", "noisy_psnr", "noisy_ssim"):
        v = np.array([r[key] for r in rows], dtype=float)
        out[f"{key}_mean"] = float(v.mean())
        out[f"{key}_std"] = float(v.std())
    return out


def _write_report(out: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, str]:
    """report.json (everything) and report.csv (one line per image, per fold, and the overall mean)."""
    atomic.write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    fields = ["level", "fold", "index", "name", "psnr", "ssim", "noisy_psnr", "noisy_ssim"]
    fh = io.StringIO(newline="")  # small: built in memory, then published atomically like report.json
    w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({"level": "image", **r})
    for f in report.get("folds", []):
        w.writerow({"level": "fold", "fold": f["fold"], "psnr": f["psnr_mean"], "ssim": f["ssim_mean"],
                    "noisy_psnr": f["noisy_psnr_mean"], "noisy_ssim": f["noisy_ssim_mean"]})
    w.writerow({"level": "mean", "psnr": report["psnr"], "ssim": report["ssim"],
                "noisy_psnr": report["noisy_psnr"], "noisy_ssim": report["noisy_ssim"]})
    atomic.write_text(out / "report.csv", fh.getvalue())
    return {"report_json": str(out / "report.json"), "report_csv": str(out / "report.csv")}


def run_crossval(clean_images: Any, noisy_images: Any, *, k: int = 4, config: Any = None,
                 out_dir: str | os.PathLike, progress: bool = True, seed: int = PAPER_SEED,
                 data_range: float | None = None, device: str = "cpu", names: Sequence[str] | None = None,
                 strict: bool = True, save_predictions: bool = False,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the paper's k-fold protocol with ISCL and write ``report.json`` / ``report.csv``.

    Parameters
    ----------
    clean_images, noisy_images : paired images
        Equal-length sequences of 2-D arrays (or (N, H, W) stacks, folders, lists of files):
        ``clean_images[i]`` and ``noisy_images[i]`` are the same scene. Any real dtype (8-bit as in the
        paper); the config's normalization maps them (``auto``: 8-bit → ``x/255*2-1``).
    k : number of folds (paper 4).
    config : ISCL Config or preset name (None: ``"paper"``, the official hyper-parameters).
    out_dir : where ``fold<j>/`` (training log, checkpoint, ``result.json``), ``report.json``,
        ``report.csv`` and ``report.png`` go. Finished folds (``fold<j>/result.json``) are not rerun.
    progress : training progress bars.
    seed : permutation seed (paper 2019).
    data_range : PSNR/SSIM data range (None: :func:`default_data_range` of the clean images, 255 for
        8-bit).
    device : torch device.
    names : one label per pair for the report (default: index, or file names when folders are given).
    strict : require k to divide n (the official protocol); see :func:`kfold_splits`.
    save_predictions : also write each prediction as float32 ``fold<j>/pred_<index>.npy``.
    log : progress lines (None: silent).

    Returns
    -------
    dict
        The report: ``psnr``, ``ssim`` (mean over folds of the per-fold means), ``psnr_std_folds``,
        ``noisy_psnr``/``noisy_ssim`` (the input's scores, same averaging), ``folds`` (indices, per-fold
        means, per-image rows), ``data_range``, ``config``, ``permutation``, and the written paths.
    """
    from iscl.api import train
    from iscl.config import Config, preset

    say = log or (lambda _m: None)
    clean, clean_names = _load_images(clean_images, "clean_images")
    noisy, _ = _load_images(noisy_images, "noisy_images")
    names = list(names) if names is not None else clean_names
    if len(clean) != len(noisy):
        raise ValueError(f"got {len(clean)} clean and {len(noisy)} noisy images; the protocol needs pairs")
    for i, (c, x) in enumerate(zip(clean, noisy)):
        if np.shape(c) != np.shape(x) or np.ndim(c) != 2:
            raise ValueError(f"pair {i}: clean {np.shape(c)} and noisy {np.shape(x)} must be 2-D of the same shape")
    cfg = preset(config or "paper") if config is None or isinstance(config, str) else config
    if not isinstance(cfg, Config):
        raise TypeError(f"config must be a preset name or an iscl.config.Config, got {type(cfg).__name__}")
    dr = float(data_range) if data_range is not None else default_data_range(clean)
    folds = kfold_splits(len(clean), k, seed, strict=strict)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fold_reports, all_rows = [], []
    for fold in folds:
        fdir = out / f"fold{fold.index + 1}"
        result_path = fdir / "result.json"
        if result_path.exists():
            fr = json.loads(result_path.read_text())
            say(f"fold {fold.index + 1}/{k}: finished earlier, PSNR {fr['psnr_mean']:.3f}")
        else:
            say(f"fold {fold.index + 1}/{k}: training on {len(fold.train_clean)} clean + {len(fold.train_noisy)} "
                f"noisy images (unpaired), testing on {len(fold.test)}")
            t0 = time.perf_counter()
            model = train([clean[i] for i in fold.train_clean], [noisy[i] for i in fold.train_noisy], cfg,
                          run_dir=fdir, device=device, progress=progress, tensorboard=False)
            train_s = time.perf_counter() - t0
            predict = _float_predict(model)
            rows = _score_pairs(predict, clean, noisy, fold.test, names, dr)
            if save_predictions:
                for i in fold.test:
                    with atomic.atomic_file(fdir / f"pred_{int(i)}.npy") as f:
                        np.save(f, predict(noisy[i]).astype(np.float32))
            fr = {**fold.as_dict(), **_summary(rows), "train_seconds": train_s, "images": rows}
            atomic.write_text(result_path, json.dumps(fr, indent=1) + "\n")
            say(f"fold {fold.index + 1}/{k}: PSNR {fr['psnr_mean']:.3f} (noisy {fr['noisy_psnr_mean']:.3f}), "
                f"SSIM {fr['ssim_mean']:.4f}")
        fold_reports.append(fr)
        all_rows += [{"fold": fr["fold"], **r} for r in fr["images"]]
    fold_psnr = np.array([f["psnr_mean"] for f in fold_reports])
    report = {
        "protocol": f"ISCL k-fold (method.md §5): seed {seed} permutation, {k} folds, first half of the remaining "
                    "sorted indices clean, second half noisy (unpaired), per-image PSNR/SSIM, mean per fold, "
                    "mean over folds",
        "k": k, "n": len(clean), "seed": seed, "data_range": dr,
        "permutation": official_permutation(len(clean), seed).tolist(),
        "psnr": float(fold_psnr.mean()), "psnr_std_folds": float(fold_psnr.std()),
        "ssim": float(np.mean([f["ssim_mean"] for f in fold_reports])),
        "noisy_psnr": float(np.mean([f["noisy_psnr_mean"] for f in fold_reports])),
        "noisy_ssim": float(np.mean([f["noisy_ssim_mean"] for f in fold_reports])),
        "config": cfg.model_dump(mode="json"), "folds": fold_reports,
    }
    paths = _write_report(out, report, all_rows)
    from iscl.evaluate.report import plot_crossval

    fig = plot_crossval(report, out / "report.png")
    report.update(paths, report_png=str(fig))
    say(f"{k}-fold cross-validation: PSNR {report['psnr']:.3f} dB, SSIM {report['ssim']:.4f} "
        f"(noisy input {report['noisy_psnr']:.3f} dB) -> {paths['report_json']}")
    return report


def evaluate_model(model: Any, clean: Any, noisy: Any, *, data_range: float | None = None,
                   output: str = "denoised", weights: str | None = None, out_dir: str | os.PathLike | None = None,
                   names: Sequence[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Score a trained ISCL model on a paired test set.

    Parameters
    ----------
    model : :class:`iscl.api.Denoiser`, or a run / checkpoint directory.
    clean, noisy : paired images: sequences of 2-D arrays, (N, H, W) stacks, folders or file lists
        (folders are paired by file name, see :func:`read_paired`).
    data_range : None: :func:`default_data_range` of the clean images (255 for 8-bit).
    output : ``denoised`` (default), ``generator`` (F(x)) or ``bypass`` (x - H(x)).
    weights : ``swa`` or ``raw`` F (None: the model's configured default).
    out_dir : if given, ``report.json`` and ``report.csv`` are written there.
    names : labels of the pairs.
    device : torch device when ``model`` is a path.

    Returns
    -------
    dict
        ``psnr``, ``ssim`` (means), their ``_std``, the noisy input's scores, ``images`` (per image),
        ``data_range``, and the written paths.
    """
    from iscl.api import Denoiser, load

    if not isinstance(model, Denoiser):
        model = load(model, device=device)
    if isinstance(clean, (str, os.PathLike)) and isinstance(noisy, (str, os.PathLike)):
        c_list, n_list, file_names = read_paired(clean, noisy)
    else:
        c_list, file_names = _load_images(clean, "clean")
        n_list, _ = _load_images(noisy, "noisy")
    names = list(names) if names is not None else file_names
    if len(c_list) != len(n_list):
        raise ValueError(f"got {len(c_list)} clean and {len(n_list)} noisy images; expected pairs")
    dr = float(data_range) if data_range is not None else default_data_range(c_list)
    rows = _score_pairs(_float_predict(model, output, weights), c_list, n_list, range(len(c_list)), names, dr)
    s = _summary(rows)
    report = {"n": len(rows), "data_range": dr, "output": output, "weights": weights or model.config.predict.weights,
              "psnr": s["psnr_mean"], "ssim": s["ssim_mean"], "psnr_std": s["psnr_std"], "ssim_std": s["ssim_std"],
              "noisy_psnr": s["noisy_psnr_mean"], "noisy_ssim": s["noisy_ssim_mean"], "images": rows,
              "model": {k: v for k, v in model.info.items() if k != "patches_per_epoch"}}
    if out_dir is not None:
        report.update(_write_report(Path(out_dir), report, rows))
    return report
