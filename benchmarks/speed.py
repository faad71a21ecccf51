"""Training-step and prediction speed of ISCL (paper architecture, fp32) against the machine's peak.

Usage::

    python benchmarks/speed.py            # a table
    python benchmarks/speed.py --json     # the JSON document below

Each measurement runs in its own subprocess so that its peak RSS is its own. Conv FLOPs (counted for
the paper networks): 201 GFLOP per training step at batch 8 (linear in the batch), 501 GFLOP per
megapixel of prediction (F + H). The fraction of peak is (FLOPs / seconds) / (torch.mm 4096² rate
with the same thread count).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from common import median_seconds, metadata, peak_rss_mib

TRAIN_GFLOP_PER_SAMPLE = 201.0 / 8
PREDICT_GFLOP_PER_MPIX = 501.0


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t, _ = median_seconds(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / t / 1e9


def train_step_seconds(batch: int, repeats: int) -> float:
    from iscl.config import preset
    from iscl.methods.iscl import ISCL

    cfg = preset("paper")
    model = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 1, 64, 64, generator=rng) * 2 - 1
    y = torch.rand(batch, 1, 64, 64, generator=rng) * 2 - 1
    t, _ = median_seconds(lambda: model.train_step(x, y), repeats, warmup=2)
    return t


def predict_seconds(size: int, repeats: int) -> float:
    from iscl.api import Denoiser
    from iscl.config import preset
    from iscl.data.normalize import Normalizer
    from iscl.nn import Generator, NoiseExtractor

    torch.manual_seed(0)
    model = Denoiser(preset("paper"), Normalizer(low=0, high=255), Generator(), Generator(), NoiseExtractor())
    image = np.random.default_rng(0).integers(0, 256, (size, size)).astype(np.uint8)
    t, _ = median_seconds(lambda: model.denoise(image), repeats, warmup=1)
    return t


def _child(args: argparse.Namespace) -> None:
    if not args.no_retain:
        from iscl.runtime import retain_freed_memory

        retain_freed_memory()  # what the iscl CLI does
    if args.child == "train":
        value = train_step_seconds(args.batch, args.repeats)
    elif args.child == "predict":
        value = predict_seconds(args.size, args.repeats)
    else:
        value = matmul_gflops()
    print(json.dumps({"value": value, "peak_rss_mib": peak_rss_mib()}))


def _run_child(*extra: str) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *extra], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (median)")
    p.add_argument("--no-retain", action="store_true",
                   help="measure with glibc's default allocator behaviour (no iscl.runtime.retain_freed_memory)")
    p.add_argument("--child", choices=["train", "predict", "matmul"], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    r = str(args.repeats)
    flag = ["--no-retain"] if args.no_retain else []
    peak = _run_child("--child", "matmul")["value"]
    t8 = _run_child("--child", "train", "--batch", "8", "--repeats", r, *flag)
    t16 = _run_child("--child", "train", "--batch", "16", "--repeats", r, *flag)
    pr = _run_child("--child", "predict", "--size", "1024", "--repeats", str(max(3, args.repeats // 2)), *flag)
    mpix = 1024 * 1024 / 1e6
    result = {
        "train_step_s": {"8": t8["value"], "16": t16["value"]},
        "predict_1024_s": pr["value"],
        "matmul_gflops": peak,
        "train_fraction_of_peak": TRAIN_GFLOP_PER_SAMPLE * 8 / t8["value"] / peak,
        "train_fraction_of_peak_16": TRAIN_GFLOP_PER_SAMPLE * 16 / t16["value"] / peak,
        "predict_fraction_of_peak": PREDICT_GFLOP_PER_MPIX * mpix / pr["value"] / peak,
        "retain_freed_memory": not args.no_retain,
        "peak_rss_mib": {"train_8": t8["peak_rss_mib"], "train_16": t16["peak_rss_mib"],
                         "predict_1024": pr["peak_rss_mib"]},
        **metadata(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['processor']}, {result['threads']} threads, torch {result['torch']}")
    print(f"matmul peak            {peak:8.1f} GFLOP/s")
    for b in ("8", "16"):
        frac = TRAIN_GFLOP_PER_SAMPLE * int(b) / result["train_step_s"][b] / peak
        print(f"train step, batch {b:>2}  {result['train_step_s'][b]:8.3f} s   {frac:6.1%} of peak   "
              f"peak RSS {result['peak_rss_mib']['train_' + b]:.0f} MiB")
    print(f"predict 1024x1024      {pr['value']:8.3f} s   {result['predict_fraction_of_peak']:6.1%} of peak   "
          f"peak RSS {pr['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
