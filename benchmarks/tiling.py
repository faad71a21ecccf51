"""Tiled vs whole-image prediction, and peak memory of denoising a very large 16-bit TIFF.

Usage::

    python benchmarks/tiling.py --model demo-output/run             # agreement on a 1024² EM image
    python benchmarks/tiling.py --model demo-output/run --big 8192  # + peak RSS of `iscl denoise` on 8192²
    python benchmarks/tiling.py --json ...

Without ``--model`` the paper architecture with its initial weights is used. The agreement is PSNR
between whole-image and tiled outputs on the [-1, 1] scale (data range 2). The large-image run goes
through the same code as ``iscl denoise`` (``iscl.jobs.denoise_files``) in a child process, whose
peak RSS is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import metadata, peak_rss_mib


def _model(path: str | None):
    from iscl.api import Denoiser, load
    from iscl.config import preset
    from iscl.data.normalize import Normalizer
    from iscl.nn import Generator, NoiseExtractor

    if path:
        return load(path)
    torch.manual_seed(0)
    return Denoiser(preset("paper"), Normalizer(low=0, high=1), Generator(), Generator(), NoiseExtractor())


def _em_image(size: int, seed: int = 0) -> np.ndarray:
    from iscl.simulate.em import em_tissue
    from iscl.simulate.noise import film_noise

    rng = np.random.default_rng(seed)
    clean = em_tissue((size, size), rng)
    noisy = film_noise(clean, rng)
    return np.asarray(noisy[0] if isinstance(noisy, tuple) else noisy, dtype=np.float32)


def agreement(model, size: int, tile: int, overlap: int) -> dict:
    from iscl.predict import predict_image

    x = model.normalizer.forward(_em_image(size))
    outs = ("denoised", "generator", "noise")
    F = model.F_swa
    t0 = time.perf_counter()
    whole = predict_image(F, model.H, x, outputs=outs)
    t_whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    tiled = predict_image(F, model.H, x, outputs=outs, tile=tile, overlap=overlap)
    t_tiled = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = predict_image(F, model.H, x, outputs=outs, tile=tile, overlap=overlap, stats_tiles=1)
    res = {"size": size, "tile": tile, "overlap": overlap, "seconds_whole": t_whole, "seconds_tiled": t_tiled}
    for k in outs:
        mse = float(np.mean((whole[k] - tiled[k]) ** 2))
        res[f"psnr_tiled_vs_whole_{k}"] = 10 * np.log10(4.0 / mse) if mse > 0 else float("inf")
        res[f"max_abs_diff_{k}"] = float(np.abs(whole[k] - tiled[k]).max())
        mse1 = float(np.mean((whole[k] - naive[k]) ** 2))
        res[f"psnr_one_stats_tile_vs_whole_{k}"] = 10 * np.log10(4.0 / mse1) if mse1 > 0 else float("inf")
    return res


def _child_big(model_path: str | None, size: int, workdir: str) -> None:
    import tifffile

    from iscl.jobs import denoise_files
    from iscl.runtime import retain_freed_memory

    retain_freed_memory()
    src = Path(workdir) / "big.tif"
    # a large 16-bit image written plane by plane from one simulated 1024² tile (no full float copy)
    base = (np.clip(_em_image(1024), 0, 1) * 60000).astype(np.uint16)
    reps = -(-size // 1024)
    with tifffile.TiffWriter(src, bigtiff=True) as tw:
        tw.write(np.tile(base, (reps, reps))[:size, :size], photometric="minisblack")
    del base
    rss_before = peak_rss_mib()
    t0 = time.perf_counter()
    model = _model(model_path)
    denoise_files(model, [src], Path(workdir) / "out", progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(),
                      "peak_rss_before_mib": rss_before, "size": size,
                      "input_mib": src.stat().st_size / 2**20}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="run or checkpoint folder (default: paper architecture, initial weights)")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--big", type=int, default=0, help="also denoise a BIG x BIG uint16 TIFF and report peak RSS")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-big", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_big:
        _child_big(args.model, args.big, args.child_big)
        return
    from iscl.runtime import retain_freed_memory

    retain_freed_memory()
    result = {"agreement": agreement(_model(args.model), args.size, args.tile, args.overlap), **metadata(),
              "model": args.model or "paper architecture, initial weights"}
    if args.big:
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--big", str(args.big), "--child-big", d]
            if args.model:
                cmd += ["--model", args.model]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result["big"] = json.loads(out.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(result, indent=2))
        return
    a = result["agreement"]
    print(f"{a['size']}² image, tiles {a['tile']} overlap {a['overlap']}: tiled vs whole PSNR "
          f"denoised {a['psnr_tiled_vs_whole_denoised']:.1f} dB, F {a['psnr_tiled_vs_whole_generator']:.1f} dB, "
          f"H {a['psnr_tiled_vs_whole_noise']:.1f} dB  (max |diff| {a['max_abs_diff_denoised']:.2e}); "
          f"statistics from one tile only: {a['psnr_one_stats_tile_vs_whole_denoised']:.1f} dB; "
          f"{a['seconds_whole']:.1f} s whole, {a['seconds_tiled']:.1f} s tiled")
    if "big" in result:
        b = result["big"]
        print(f"iscl denoise on a {b['size']}x{b['size']} uint16 TIFF ({b['input_mib']:.0f} MiB): "
              f"{b['seconds']:.0f} s, peak RSS {b['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
