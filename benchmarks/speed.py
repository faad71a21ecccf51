"""Training-step and prediction speed of ISCL (paper architecture) against the machine's peak.

Usage::

    python benchmarks/speed.py            # a table (fp32, CPU)
    python benchmarks/speed.py --json     # the JSON document below
    python benchmarks/speed.py --precision bf16 --channels-last --compile   # the options of iscl train
    python benchmarks/speed.py --device cuda --precision bf16 --batches 64   # a GPU (peak: its matmul)

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


def matmul_gflops(n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """fp32 ``torch.mm`` rate: the machine's practical peak (on a GPU, with its default TF32 setting)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t, _ = median_seconds(_synced(lambda: torch.mm(a, b), device), repeats)
    return 2 * n**3 / t / 1e9


def _synced(fn, device: str):
    """``fn`` followed by a device synchronisation, so GPU timings include the queued kernels."""
    if not device.startswith("cuda"):
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def train_step_seconds(batch: int, repeats: int, device: str = "cpu", precision: str = "fp32",
                       channels_last: bool = False, compile_: bool = False) -> float:
    from iscl.config import preset
    from iscl.engine.iscl import ISCL

    cfg = preset("paper")
    train = cfg.train.model_copy(update={"precision": precision, "channels_last": channels_last, "compile": compile_})
    model = ISCL(cfg.network, train, device=device, generator=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(1)
    x = (torch.rand(batch, 1, 64, 64, generator=rng) * 2 - 1).to(device)
    y = (torch.rand(batch, 1, 64, 64, generator=rng) * 2 - 1).to(device)
    # warm-up: 2 steps (3 with compile: the first compiles, the next may recompile once)
    t, _ = median_seconds(_synced(lambda: model.train_step(x, y), device), repeats, warmup=3 if compile_ else 2)
    return t


def predict_seconds(size: int, repeats: int, device: str = "cpu", precision: str = "fp32", name: str = "paper",
                    gamma: float | None = None, tta: bool | None = None) -> float:
    """Seconds to denoise one ``size``² 8-bit image with the ``name`` preset's networks (random weights); ``gamma``
    and ``tta`` default to the preset's prediction (paper: γ 0.5, one pass; fast: γ 0 with TTA)."""
    from iscl.api import Denoiser
    from iscl.config import preset
    from iscl.data.normalize import Normalizer
    from iscl.nn.build import make_extractor, make_generator

    torch.manual_seed(0)
    cfg = preset(name)
    net = cfg.network
    model = Denoiser(cfg, Normalizer(low=0, high=255), make_generator(net), make_generator(net), make_extractor(net),
                     device=device)
    image = np.random.default_rng(0).integers(0, 256, (size, size)).astype(np.uint8)
    t, _ = median_seconds(_synced(lambda: model.denoise(image, precision=precision, gamma=gamma, tta=tta), device),
                          repeats, warmup=1)
    return t


def _child(args: argparse.Namespace) -> None:
    if not args.no_retain:
        from iscl.runtime import retain_freed_memory

        retain_freed_memory()  # what the iscl CLI does
    if args.child == "train":
        value = train_step_seconds(args.batch, args.repeats, args.device, args.precision, args.channels_last,
                                   args.compile)
    elif args.child == "predict":
        value = predict_seconds(args.size, args.repeats, args.device, args.precision, args.preset,
                                args.gamma, None if args.tta is None else args.tta == "on")
    else:
        value = matmul_gflops(device=args.device)
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
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", help="training in NHWC")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (minutes to compile)")
    p.add_argument("--batches", default="8,16", help="training batch sizes, comma-separated")
    p.add_argument("--child", choices=["train", "predict", "matmul"], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--preset", default="paper", help=argparse.SUPPRESS)
    p.add_argument("--gamma", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tta", choices=["on", "off"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--fast-predict", action="store_true",
                   help="also time prediction with the fast preset's networks: its default (γ 0 + TTA), γ 0 without "
                        "TTA (H alone) and γ 0.5 (F + H, one pass)")
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    r = str(args.repeats)
    flag = ["--no-retain"] if args.no_retain else []
    opts = ["--device", args.device, "--precision", args.precision, *flag]
    train_opts = [*opts, *(["--channels-last"] if args.channels_last else []), *(["--compile"] if args.compile else [])]
    batches = [b.strip() for b in args.batches.split(",")]
    peak = _run_child("--child", "matmul", "--device", args.device)["value"]
    train = {b: _run_child("--child", "train", "--batch", b, "--repeats", r, *train_opts) for b in batches}
    pr_repeats = str(max(3, args.repeats // 2))
    pr = _run_child("--child", "predict", "--size", "1024", "--repeats", pr_repeats, *opts)
    mpix = 1024 * 1024 / 1e6
    fast = {}
    if args.fast_predict:
        for key, extra in (("default_gamma0_tta", []), ("gamma0", ["--gamma", "0", "--tta", "off"]),
                           ("gamma0.5", ["--gamma", "0.5", "--tta", "off"])):
            fast[key] = _run_child("--child", "predict", "--size", "1024", "--repeats", pr_repeats, "--preset", "fast",
                                   *extra, *opts)["value"]
    result = {
        "device": args.device, "precision": args.precision, "channels_last": args.channels_last,
        "compile": args.compile,
        "train_step_s": {b: t["value"] for b, t in train.items()},
        "predict_1024_s": pr["value"],
        "predict_mpix_per_s": mpix / pr["value"],
        "matmul_gflops": peak,
        "train_fraction_of_peak": {b: TRAIN_GFLOP_PER_SAMPLE * int(b) / t["value"] / peak for b, t in train.items()},
        "predict_fraction_of_peak": PREDICT_GFLOP_PER_MPIX * mpix / pr["value"] / peak,
        **({"fast_predict_1024_s": fast} if fast else {}),
        "retain_freed_memory": not args.no_retain,
        "peak_rss_mib": {**{f"train_{b}": t["peak_rss_mib"] for b, t in train.items()},
                         "predict_1024": pr["peak_rss_mib"]},
        **metadata(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['processor']}, {result['threads']} threads, torch {result['torch']}, "
          f"{args.device} {args.precision}{' channels-last' if args.channels_last else ''}"
          f"{' compiled' if args.compile else ''}")
    print(f"matmul peak            {peak:8.1f} GFLOP/s")
    for b in batches:
        frac = result["train_fraction_of_peak"][b]
        print(f"train step, batch {b:>2}  {result['train_step_s'][b]:8.3f} s   {frac:6.1%} of peak   "
              f"peak RSS {result['peak_rss_mib']['train_' + b]:.0f} MiB")
    print(f"predict 1024x1024      {pr['value']:8.3f} s   {result['predict_fraction_of_peak']:6.1%} of peak   "
          f"{result['predict_mpix_per_s']:.2f} MPix/s   peak RSS {pr['peak_rss_mib']:.0f} MiB")
    for key, t in fast.items():
        print(f"predict 1024x1024, fast networks, {key:18s} {t:8.3f} s")


if __name__ == "__main__":
    main()
