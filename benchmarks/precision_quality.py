"""Quality of mixed precision against fp32: the same ISCL run trained and/or predicted in bf16 or fp16.

Trains the ``cpu`` preset on the simulated ``em-film`` set (seed 0) once per training precision with
the same seed and budget, then scores the test split in every prediction precision. Prints PSNR/SSIM
per (training, prediction) precision pair, the PSNR of each output against the fp32/fp32 output
(how far the numbers move), and seconds per training step.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/precision_quality.py --steps 300 --out runs/precision
    .venv/bin/python benchmarks/precision_quality.py --device cuda --train fp32,bf16,fp16 --predict fp32,bf16,fp16
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import iscl  # noqa: E402
from iscl.config import preset  # noqa: E402
from iscl.metrics import psnr, ssim  # noqa: E402
from iscl.simulate.datasets import load_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=8)
    p.add_argument("--train", default="fp32,bf16", help="training precisions")
    p.add_argument("--predict", default="fp32,bf16", help="prediction precisions")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    ds = load_dataset("em-film", seed=0, n_train=args.n_train, n_test=args.n_test)
    rows, reference = [], {}
    for train_precision in args.train.split(","):
        cfg = preset("cpu").model_copy(deep=True)
        cfg.train.steps, cfg.train.batch_size = args.steps, args.batch_size
        cfg.train.precision = train_precision
        cfg.normalization.mode, cfg.normalization.low, cfg.normalization.high = "fixed", 0.0, 1.0
        t0 = time.perf_counter()
        model = iscl.train(list(ds.train_clean), list(ds.train_noisy), cfg, run_dir=args.out / train_precision,
                           device=args.device, progress=False)
        step_s = (time.perf_counter() - t0) / args.steps
        for predict_precision in args.predict.split(","):
            outs = [model.denoise(x, precision=predict_precision) for x in ds.test_noisy]
            key = (train_precision, predict_precision)
            if key == ("fp32", "fp32"):
                reference = {i: o for i, o in enumerate(outs)}
            rows.append({
                "train": train_precision, "predict": predict_precision, "train_step_s": round(step_s, 3),
                "psnr": float(np.mean([psnr(c, o, 1.0) for c, o in zip(ds.test_clean, outs)])),
                "ssim": float(np.mean([ssim(c, o, 1.0) for c, o in zip(ds.test_clean, outs)])),
                "psnr_vs_fp32": (float(np.mean([psnr(reference[i], o, 1.0) for i, o in enumerate(outs)]))
                                 if reference and key != ("fp32", "fp32") else None),
            })
            print(json.dumps(rows[-1]), flush=True)
    noisy = float(np.mean([psnr(c, n, 1.0) for c, n in zip(ds.test_clean, ds.test_noisy)]))
    result = {"dataset": "em-film", "steps": args.steps, "batch_size": args.batch_size, "device": args.device,
              "noisy_psnr": noisy, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(result, indent=1))
    print(f"noisy input {noisy:.2f} dB")
    for r in rows:
        vs = f"{r['psnr_vs_fp32']:.1f} dB" if r["psnr_vs_fp32"] is not None else "(reference)"
        print(f"train {r['train']:>4} predict {r['predict']:>4}: PSNR {r['psnr']:.2f} dB SSIM {r['ssim']:.3f}, "
              f"vs fp32 output {vs}, {r['train_step_s']:.2f} s/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
