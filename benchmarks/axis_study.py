"""Denoising a volume along z, y, x or all three: PSNR on a simulated EM volume with slice-wise streaks.

Simulates (``iscl.simulate.volume``) an isotropic clean EM-like volume and, from another scene, a noisy
one with per-slice gain, offset and shading plus pixel noise (streaks across slices), trains ISCL on
the two (unpaired; patches from the orientations of ``--train-axis``), then denoises a third,
separately simulated noisy test volume with ``Denoiser.denoise_volume(axis=...)`` for z, y, x and all,
and reports PSNR/SSIM against its clean volume (SSIM: the mean over z slices).

Time-boxed for a 2-core machine: ``fast`` preset networks, 64x128x128 volumes (the Z side is 64 so that
the (Z, W) and (Z, H) planes hold a 64x64 training patch), and ``--time-budget 7m`` (or ``--steps N``) keep
the whole run under 10 minutes on one thread.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/axis_study.py --time-budget 7m --json runs/axis/axis.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

import iscl  # noqa: E402
from common import metadata  # noqa: E402
from iscl.config import parse_duration, preset  # noqa: E402
from iscl.metrics import psnr, ssim  # noqa: E402
from iscl.simulate.volume import em_volume, slice_streak_noise  # noqa: E402

AXES = ("z", "y", "x", "all")


def simulate(shape: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    """Training pools (clean and noisy of different scenes) and a paired test volume, each its own seed."""
    rng = np.random.default_rng([seed, 0])
    clean_train = em_volume(shape, rng)
    noisy_train = slice_streak_noise(em_volume(shape, rng), rng)
    test_rng = np.random.default_rng([seed, 1])  # separately simulated: another scene, other noise draws
    test_clean = em_volume(shape, test_rng)
    return {"clean_train": clean_train, "noisy_train": noisy_train, "test_clean": test_clean,
            "test_noisy": slice_streak_noise(test_clean, test_rng)}


def score(clean: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    # PSNR of the whole volume (one MSE over every voxel: metrics.psnr takes 2-D arrays, so stack the slices)
    flat = (-1, clean.shape[-1])
    return {"psnr": round(psnr(clean.reshape(flat), estimate.reshape(flat), 1.0), 2),
            "ssim": round(float(np.mean([ssim(c, e, 1.0) for c, e in zip(clean, estimate)])), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--time-budget", default=None, help="train for this long instead of --steps (e.g. 7m): T is "
                   "fixed from the measured speed of the first steps")
    p.add_argument("--preset", default="fast")
    p.add_argument("--train-axis", default="all", choices=AXES, help="orientations of the training patches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = simulate((args.slices, args.size, args.size), args.seed)
    config = preset(args.preset)
    config.train.steps = args.steps
    if args.time_budget:
        config.train.time_budget = parse_duration(args.time_budget)
    config.train.seed = args.seed
    config.train.axis = args.train_axis
    # the simulated intensities are on [0, 1] (noise reaches a little beyond): one fixed window for all
    config.normalization = type(config.normalization).model_validate({"mode": "fixed", "low": 0.0, "high": 1.0})
    t1 = time.perf_counter()
    model = iscl.train(data["clean_train"], data["noisy_train"], config, progress=False, tensorboard=False)
    t2 = time.perf_counter()
    steps = int(model.info.get("step", args.steps))
    rows = {"noisy input": score(data["test_clean"], data["test_noisy"])}
    seconds = {}
    for axis in AXES:
        s0 = time.perf_counter()
        out = model.denoise_volume(data["test_noisy"], axis=axis)
        seconds[axis] = round(time.perf_counter() - s0, 1)
        rows[f"--axis {axis}"] = score(data["test_clean"], out)
    result = {
        "command": "benchmarks/axis_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": [args.slices, args.size, args.size], "preset": args.preset, "steps": steps,
        "time_budget": args.time_budget,
        "train_axis": args.train_axis, "seed": args.seed, "scores": rows, "denoise_seconds": seconds,
        "simulate_seconds": round(t1 - t0, 1), "train_seconds": round(t2 - t1, 1),
        "total_seconds": round(time.perf_counter() - t0, 1), **metadata(),
    }
    print(f"test volume {args.slices}x{args.size}x{args.size}, trained {steps} steps ({args.preset}, "
          f"patches along {args.train_axis}) in {result['train_seconds']} s")
    print("| denoised along | PSNR (dB) | SSIM | seconds |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        sec = seconds.get(name.removeprefix("--axis "), "")
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {sec} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
