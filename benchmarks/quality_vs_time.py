"""Validation PSNR against minutes of CPU training: ISCL (fast and paper presets), Noise2Void, supervised, BM3D.

For each dataset and method, one run with a wall-clock budget (``--budget``, default 30 minutes) keeps a
snapshot of the predicting networks at every mark (``--marks`` minutes); after training, every snapshot
is scored on the **validation pairs** (separately simulated, seed 1001; never the test images) and the
final model on the validation pairs and then, once, on the benchmark's **test split** (seed 0). A mark
is a point in one run whose learning-rate decay was planned for the whole budget, not a shorter run.

Writes ``OUT/cells/<dataset>__<method>.json`` (one finished cell each; an interrupted run resumes at
the first missing cell), ``OUT/results.json``, ``OUT/results.md`` (the tables of docs/benchmark.md)
and ``OUT/figures/quality_vs_time_<dataset>.png``.

Usage (the documented run; run it on an otherwise idle machine, it measures time)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/quality_vs_time.py --out runs/qvt
    .venv/bin/python benchmarks/quality_vs_time.py --out runs/qvt --report-only   # tables and figures again
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run_benchmark.py: sleeping OpenMP threads

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from iscl.config import parse_duration, preset  # noqa: E402
from iscl.methods.registry import ISCLMethod, get_method  # noqa: E402
from iscl.metrics import psnr, ssim  # noqa: E402
from iscl.simulate.datasets import load_dataset  # noqa: E402
from iscl.training.trainer import GAMMAS  # noqa: E402

VALIDATION_SEED = 1001
N_VALIDATION = 8
MARKS = (1, 2, 5, 10, 20, 30)
DATASETS = ("em-film", "em-charge", "ct-ldct")


def _fast_bf16():
    """``fast`` with bf16 autocast and torch.compile: the speed lever for CPUs with AVX-512 BF16."""
    cfg = preset("fast")
    cfg.train.precision, cfg.train.compile = "bf16", True
    return cfg


def _fast_flat():
    """``fast`` with H also learning from flat-block noise laid on clean images (screen 11's candidate)."""
    cfg = preset("fast")
    cfg.train.extractor_flat_noise_weight = 1.0
    return cfg


# name -> (registry family, constructor arguments, batch size)
METHODS = {
    "iscl-fast": ("iscl", {"config": "fast"}, None),
    "iscl-fast-bf16": ("iscl", {"config": _fast_bf16()}, None),
    "iscl-fast-flat": ("iscl", {"config": _fast_flat()}, None),
    "iscl-paper": ("iscl", {"config": "paper"}, None),
    # n2v's example notebooks train with batches of 128 patches; the budget is time, so its own choice
    "blindspot": ("blindspot", {}, 128),
    "supervised": ("supervised", {"config": "fast"}, None),
}


def _batch(method: str) -> int:
    family, kwargs, batch = METHODS[method]
    config = kwargs.get("config", "fast")
    return batch or (preset(config) if isinstance(config, str) else config).train.batch_size


def _score(method, noisy: np.ndarray, clean: np.ndarray, tta: bool = False, gamma: float | None = None) -> dict:
    """Mean PSNR/SSIM on [0, 1] (after clipping); ISCL rows say whether to use test-time augmentation (never
    the preset's default, so that the rows with and without it are what they say) and may set gamma (None:
    the preset's)."""
    p, s = [], []
    for x, y in zip(noisy, clean):
        if isinstance(method, ISCLMethod):
            est = method.model.denoise(x, tta=tta, gamma=gamma, weights=method.weights)
        else:
            est = method.denoise(x)
        est = np.clip(est, 0.0, 1.0)
        p.append(psnr(y, est, 1.0))
        s.append(ssim(y, est, 1.0))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "psnr_per_image": [float(v) for v in p]}


def run_cell(out: Path, dataset: str, method: str, budget: float, marks: list[float], seed: int) -> dict:
    from iscl.evaluate.benchmark import training_pairs

    ds = load_dataset(dataset, seed=0)
    val = load_dataset(dataset, seed=VALIDATION_SEED, n_train=1, n_test=N_VALIDATION)
    family, kwargs, _ = METHODS[method]
    m = get_method(family, **kwargs)
    pairs = None
    if "pairs" in m.needs:
        noisy, clean = training_pairs(dataset, len(ds.train_clean), ds.test_clean.shape[-1], seed=0)
        pairs = (list(noisy), list(clean))
    t0 = time.perf_counter()
    m.fit(clean=list(ds.train_clean), noisy=list(ds.train_noisy), pairs=pairs, steps=1, batch_size=_batch(method),
          seed=seed, time_budget=budget, marks=[60.0 * k for k in marks])
    wall = time.perf_counter() - t0
    steps = len([r for r in m.history if "step" in r and r.get("step", 0) > 0])
    final = {"validation": _score(m, val.test_noisy, val.test_clean), "test": _score(m, ds.test_noisy, ds.test_clean)}
    if family == "iscl":
        final["validation_tta"] = _score(m, val.test_noisy, val.test_clean, tta=True)
        final["test_tta"] = _score(m, ds.test_noisy, ds.test_clean, tta=True)
        # what select_prediction does for a user with validation pairs: gamma and SWA/raw F chosen on the
        # validation pairs, then the test split scored once with that choice
        grid = {(g, w): _score(m.view("denoised", w), val.test_noisy, val.test_clean, gamma=g)["psnr"]
                for g in GAMMAS for w in ("swa", "raw")}
        (g, w), best = max(grid.items(), key=lambda kv: kv[1])
        final["validation_choice"] = {"gamma": g, "weights": w, "psnr": best,
                                      "grid": {f"{gg}/{ww}": v for (gg, ww), v in grid.items()}}
        final["test_chosen"] = _score(m.view("denoised", w), ds.test_noisy, ds.test_clean, gamma=g)
        final["test_chosen_tta"] = _score(m.view("denoised", w), ds.test_noisy, ds.test_clean, tta=True, gamma=g)
    settings = json.loads(json.dumps(m.describe(), default=str))  # before the snapshots replace the final model
    curve = []
    for mark, state in sorted(m.snapshots.items()):
        m.use_snapshot(state)
        curve.append({"minutes": mark / 60.0, **_score(m, val.test_noisy, val.test_clean)})
    cell = {"dataset": dataset, "method": method, "budget_seconds": budget, "train_seconds": m.train_seconds,
            "wall_seconds": wall, "steps": steps, "batch_size": _batch(method), "seed": seed,
            "plan": getattr(m, "budget_plan", None) or (m.history[0].get("time_budget") if m.history else None),
            "curve": curve, "final": final, "settings": settings}
    path = out / "cells" / f"{dataset}__{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cell, indent=1))
    os.replace(tmp, path)
    return cell


def reference_rows(out: Path, dataset: str) -> dict:
    """Noisy input and BM3D on the validation pairs and the test split (cached in OUT/reference)."""
    path = out / "reference" / f"{dataset}.json"
    if path.exists():
        return json.loads(path.read_text())
    ds = load_dataset(dataset, seed=0)
    val = load_dataset(dataset, seed=VALIDATION_SEED, n_train=1, n_test=N_VALIDATION)
    bm3d = get_method("bm3d")
    ref = {}
    for split, (noisy, clean) in {"validation": (val.test_noisy, val.test_clean),
                                  "test": (ds.test_noisy, ds.test_clean)}.items():
        t0 = time.perf_counter()
        b = [np.clip(bm3d.denoise(x), 0, 1) for x in noisy]
        ref[split] = {"noisy": float(np.mean([psnr(c, x, 1.0) for c, x in zip(clean, noisy)])),
                      "noisy_ssim": float(np.mean([ssim(c, x, 1.0) for c, x in zip(clean, noisy)])),
                      "bm3d": float(np.mean([psnr(c, e, 1.0) for c, e in zip(clean, b)])),
                      "bm3d_ssim": float(np.mean([ssim(c, e, 1.0) for c, e in zip(clean, b)])),
                      "bm3d_per_image": [float(psnr(c, e, 1.0)) for c, e in zip(clean, b)],
                      "bm3d_seconds": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ref, indent=1))
    return ref


def report(out: Path, datasets: list[str], methods: list[str], meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(d, m): json.loads((out / "cells" / f"{d}__{m}.json").read_text()) for d in datasets for m in methods
             if (out / "cells" / f"{d}__{m}.json").exists()}
    refs = {d: reference_rows(out, d) for d in datasets}
    lines = [f"Machine: {meta['cpu_count']} cores, fp32 `torch.mm` peak {meta['matmul_gflops']:.0f} GFLOP/s "
             f"(measured at the start of the run), torch {meta['torch']}, {meta['threads']} threads; commit "
             f"{meta['commit']}.", ""]
    lines += ["Validation PSNR (dB) at each mark of one run per method (8 separately simulated pairs):", ""]
    for d in datasets:
        marks = sorted({round(c["minutes"], 3) for (dd, _), cell in cells.items() if dd == d for c in cell["curve"]})
        v = refs[d]["validation"]
        lines += [f"**{d}** (noisy {v['noisy']:.2f} dB, BM3D {v['bm3d']:.2f} dB)", "",
                  "| method | " + " | ".join(f"{k:g} min" for k in marks) + " | final | final + TTA | steps | s/step |",
                  "|---|" + "---|" * (len(marks) + 4)]
        for m in methods:
            cell = cells.get((d, m))
            if cell is None:
                continue
            by = {round(c["minutes"], 3): c["psnr"] for c in cell["curve"]}
            sps = cell["train_seconds"] / max(1, cell["steps"])
            fin, fin_tta = cell["final"]["validation"], cell["final"].get("validation_tta")
            lines.append(f"| {m} | " + " | ".join(f"{by[k]:.2f}" if k in by else "–" for k in marks)
                         + f" | {fin['psnr']:.2f} | " + (f"{fin_tta['psnr']:.2f}" if fin_tta else "–")
                         + f" | {cell['steps']} | {sps:.2f} |")
        lines.append("")
    lines += ["Final models on the **test split** (scored once), PSNR dB / SSIM; ISCL also with test-time "
              "augmentation (8 flips/rotations):", "",
              "| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    row = ["noisy input"] + [f"{refs[d]['test']['noisy']:.2f} / {refs[d]['test']['noisy_ssim']:.3f}" for d in datasets]
    lines.append("| " + " | ".join(row) + " |")
    row = ["BM3D"] + [f"{refs[d]['test']['bm3d']:.2f} / {refs[d]['test']['bm3d_ssim']:.3f}" for d in datasets]
    lines.append("| " + " | ".join(row) + " |")
    for m in methods:
        for key, label in (("test", m), ("test_tta", f"{m} + TTA"), ("test_chosen", f"{m}, γ/F chosen on validation"),
                           ("test_chosen_tta", f"{m}, γ/F chosen on validation + TTA")):
            vals = [cells[(d, m)]["final"].get(key) if (d, m) in cells else None for d in datasets]
            if all(v is None for v in vals):
                continue
            lines.append(f"| {label} | " + " | ".join(f"{v['psnr']:.2f} / {v['ssim']:.3f}" if v else "–"
                                                      for v in vals) + " |")
    chosen = [f"{d} {m}: γ {c['final']['validation_choice']['gamma']:g}, {c['final']['validation_choice']['weights']} F"
              for (d, m), c in cells.items() if "validation_choice" in c["final"]]
    if chosen:
        lines += ["", "Chosen on the validation pairs: " + "; ".join(chosen) + "."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"meta": meta, "references": refs,
                                                  "cells": {f"{d}__{m}": c for (d, m), c in cells.items()}}, indent=1))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for d in datasets:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for m in methods:
            cell = cells.get((d, m))
            if cell is None:
                continue
            # the marks, then the final model at the end of training (a budget that planned its steps from the
            # first ones can end just before the last mark, which then has no snapshot)
            end = cell["train_seconds"] / 60.0
            pts = [(c["minutes"], c["psnr"]) for c in cell["curve"] if c["minutes"] < end] + [
                (end, cell["final"]["validation"]["psnr"])]
            (line,) = ax.plot(*zip(*pts), "o-", label=m, ms=3)
            if "validation_tta" in cell["final"]:
                ax.plot([end], [cell["final"]["validation_tta"]["psnr"]], "*", ms=8, color=line.get_color(),
                        label=f"{m}, final + TTA")
        ax.axhline(refs[d]["validation"]["bm3d"], color="k", lw=1, label="BM3D")
        ax.axhline(refs[d]["validation"]["noisy"], color="grey", lw=1, ls="--", label="noisy input")
        ax.set_xscale("log")
        ax.set_xlabel("training minutes (2-core CPU, log scale)")
        ax.set_ylabel("validation PSNR (dB)")
        ax.set_title(f"{d}: quality vs CPU time ({meta['matmul_gflops']:.0f} GFLOP/s fp32 peak)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "figures" / f"quality_vs_time_{d}.png", dpi=110)
        plt.close(fig)


def machine(out: Path) -> dict:
    path = out / "machine.json"
    if path.exists():
        return json.loads(path.read_text())
    from common import metadata
    from speed import matmul_gflops

    meta = {**metadata(), "matmul_gflops": matmul_gflops()}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budget", default="30m", help="training time per method, e.g. 30m")
    p.add_argument("--marks", default=",".join(str(m) for m in MARKS), help="minutes at which to keep snapshots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    # what the iscl command line does: without it glibc re-maps every large activation and the first steps,
    # from which a time budget plans, run slower than the rest (measured here: N2V trained 1,201 s of 1,800)
    from iscl.runtime import retain_freed_memory

    retain_freed_memory()
    datasets = [d.strip() for d in args.datasets.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    meta = machine(args.out)
    budget = parse_duration(args.budget)
    marks = [float(k) for k in args.marks.split(",") if float(k) * 60 <= budget]
    if not args.report_only:
        for d in datasets:
            reference_rows(args.out, d)
            for m in methods:
                if (args.out / "cells" / f"{d}__{m}.json").exists():
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {d} / {m}: training for {budget:g} s", flush=True)
                try:
                    cell = run_cell(args.out, d, m, budget, marks, args.seed)
                except (ValueError, RuntimeError, FloatingPointError) as exc:  # e.g. a collapse: a result
                    print(f"    failed: {exc}", flush=True)
                    failed = args.out / "cells" / f"{d}__{m}.failed.txt"
                    failed.parent.mkdir(parents=True, exist_ok=True)
                    failed.write_text(f"{type(exc).__name__}: {exc}\n")
                    continue
                print(f"    {cell['steps']} steps; validation {cell['final']['validation']['psnr']:.2f} dB, "
                      f"test {cell['final']['test']['psnr']:.2f} dB", flush=True)
    report(args.out, datasets, methods, meta)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
