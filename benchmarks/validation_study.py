"""ISCL on a simulated benchmark set, scored on *validation* pairs only (never the benchmark's test images).

docs/benchmark.md uses it to separate budget, learning rate and data effects: it trains ISCL on the
benchmark's training pools (seed 0) of ``--dataset`` with a given rate and budget and logs the PSNR of
separately simulated validation pairs (seed 1001) every steps/20 steps, plus the collapse signals
(std F(x) / std x and corr(F(x), x) on the validation inputs) at the end.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/validation_study.py --dataset ct-ldct --lr 2e-4 --steps 1200 \\
        --out runs/ct-study/lr2e-4
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import iscl  # noqa: E402
from iscl.config import preset  # noqa: E402
from iscl.simulate.datasets import load_dataset  # noqa: E402

VALIDATION_SEED = 1001


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", default="ct-ldct", help="em-film, em-charge or ct-ldct")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-val", type=int, default=8, help="validation pairs (seed 1001)")
    p.add_argument("--min-patch-std", type=float, default=0.0,
                   help="leave out flat training patches (std on [-1, 1] below this), e.g. clipped air")
    p.add_argument("--bm3d", action="store_true", help="also score the benchmark's BM3D row on the validation pairs")
    p.add_argument("--window", choices=["soft-tissue", "wide"], default="soft-tissue",
                   help="training window: the dataset's [-160, 240] HU display window or HU -1000..1000")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    train = load_dataset(args.dataset, seed=0)
    val = load_dataset(args.dataset, seed=VALIDATION_SEED, n_train=1, n_test=args.n_val)
    if args.window == "wide" and args.dataset != "ct-ldct":
        p.error("--window wide is for ct-ldct")
    if args.window == "wide":
        def pick(ds, key):
            return np.clip((getattr(ds, key + "_hu") + 1000.0) / 2000.0, 0, 1).astype(np.float32)
    else:
        def pick(ds, key):
            return getattr(ds, key)
    cfg = preset("cpu").model_copy(deep=True)
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed = (
        args.steps, args.batch_size, args.lr, args.seed)
    cfg.train.min_patch_std = args.min_patch_std
    cfg.normalization.mode, cfg.normalization.low, cfg.normalization.high = "fixed", 0.0, 1.0

    t0 = time.perf_counter()
    model = iscl.train(list(pick(train, "train_clean")), list(pick(train, "train_noisy")), cfg,
                       run_dir=args.out, progress=False,
                       validation=(list(pick(val, "test_clean")), list(pick(val, "test_noisy"))))
    seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["val_psnr"]) for r in log if "val_psnr" in r]
    noisy_psnr = float(np.mean([_psnr(c, n) for c, n in zip(pick(val, "test_clean"), pick(val, "test_noisy"))]))
    ratios, corrs = [], []
    for x in pick(val, "test_noisy"):
        f = model.predict(x, outputs=("generator",))["generator"]
        ratios.append(float(f.std() / x.std()))
        corrs.append(float(np.corrcoef(f.ravel(), x.ravel())[0, 1]))
    summary = {
        "dataset": args.dataset, "lr": args.lr, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "window": args.window, "min_patch_std": args.min_patch_std, "train_seconds": seconds,
        "val_noisy_psnr": noisy_psnr,
        "val_psnr_curve": curve, "best_val_psnr": max(v for _, v in curve),
        "final_val_psnr": curve[-1][1], "F_std_ratio": float(np.mean(ratios)), "F_input_corr": float(np.mean(corrs)),
    }
    if args.bm3d:
        from iscl.methods.registry import get_method

        bm3d = get_method("bm3d")
        summary["val_bm3d_psnr"] = float(np.mean([_psnr(c, bm3d.denoise(n)) for c, n in
                                                  zip(pick(val, "test_clean"), pick(val, "test_noisy"))]))
    (args.out / "study.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "val_psnr_curve"}))
    print("curve:", " ".join(f"{s}:{v:.2f}" for s, v in curve))
    return 0


def _psnr(clean: np.ndarray, noisy: np.ndarray) -> float:
    mse = float(np.mean((clean.astype(np.float64) - noisy) ** 2))
    return 10 * np.log10(1.0 / mse)


if __name__ == "__main__":
    raise SystemExit(main())
