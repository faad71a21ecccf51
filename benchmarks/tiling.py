"""Tiled vs whole-image prediction: agreement and time, and peak memory of denoising a very large 16-bit TIFF.

Usage::

    python benchmarks/tiling.py --model demo-output/run             # agreement and time on a 1024² EM image
    python benchmarks/tiling.py --layerwise                         # + the layer-by-layer statistics pass
    python benchmarks/tiling.py --model demo-output/run --big 8192  # + peak RSS of `iscl denoise` on 8192²
    python benchmarks/tiling.py --json ...

Without ``--model`` the paper architecture with its initial weights is used. The agreement is PSNR
between whole-image and tiled outputs on the [-1, 1] scale (data range 2). Times are reported per
megapixel of the image; tiles overlap, so tiled prediction runs the networks on more pixels than the
image has (``tiled_pixels_ratio``: 2.25 for 1024² in 512² tiles with overlap 32), which bounds how close
its time can come to the whole image's. ``--layerwise`` also times ``stats_memory=0``: every statistics
tile re-run from its input for each BIN layer (the method before statistics passes were paused and
continued; the same result). The large-image run goes through the same code as ``iscl denoise``
(``iscl.jobs.denoise_files``) in a child process, whose peak RSS is reported.
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


def agreement(model, size: int, tile: int, overlap: int, layerwise: bool = False) -> dict:
    from iscl.data.tiling import plan_tiles
    from iscl.predict import predict_image

    x = model.normalizer.forward(_em_image(size))
    outs = ("denoised", "generator", "noise")
    F = model.F_swa
    predict_image(F, model.H, x[:256, :256], outputs=outs, tile=128, overlap=overlap)  # warm-up (lazy init)

    def timed(**kw) -> tuple[dict, float]:
        t0 = time.perf_counter()
        out = predict_image(F, model.H, x, outputs=outs, **kw)
        return out, time.perf_counter() - t0

    whole, t_whole = timed()
    tiled, t_tiled = timed(tile=tile, overlap=overlap)
    naive, _ = timed(tile=tile, overlap=overlap, stats_tiles=1)
    mpix = size * size / 1e6
    tiles = plan_tiles(size, size, tile, overlap)
    res = {"size": size, "tile": tile, "overlap": overlap, "tiles": len(tiles),
           "tiled_pixels_ratio": sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles) / size**2,
           "seconds_whole": t_whole, "seconds_tiled": t_tiled,
           "seconds_per_mpix_whole": t_whole / mpix, "seconds_per_mpix_tiled": t_tiled / mpix,
           "tiled_over_whole": t_tiled / t_whole}
    res["tiled_over_whole_per_processed_pixel"] = res["tiled_over_whole"] / res["tiled_pixels_ratio"]
    if layerwise:
        old, t_old = timed(tile=tile, overlap=overlap, stats_memory=0)
        res.update(seconds_tiled_layerwise=t_old, seconds_per_mpix_tiled_layerwise=t_old / mpix,
                   tiled_layerwise_over_whole=t_old / t_whole,
                   max_abs_diff_tiled_vs_layerwise=max(float(np.abs(old[k] - tiled[k]).max()) for k in outs))
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
    p.add_argument("--layerwise", action="store_true",
                   help="also time the layer-by-layer statistics pass (stats_memory=0; slow)")
    p.add_argument("--big", type=int, default=0, help="also denoise a BIG x BIG uint16 TIFF and report peak RSS")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-big", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_big:
        _child_big(args.model, args.big, args.child_big)
        return
    from iscl.runtime import retain_freed_memory

    retain_freed_memory()
    result = {"agreement": agreement(_model(args.model), args.size, args.tile, args.overlap, args.layerwise),
              **metadata(), "model": args.model or "paper architecture, initial weights"}
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
    print(f"{a['size']}² image, {a['tiles']} tiles {a['tile']} overlap {a['overlap']}: tiled vs whole PSNR "
          f"denoised {a['psnr_tiled_vs_whole_denoised']:.1f} dB, F {a['psnr_tiled_vs_whole_generator']:.1f} dB, "
          f"H {a['psnr_tiled_vs_whole_noise']:.1f} dB  (max |diff| {a['max_abs_diff_denoised']:.2e}); "
          f"statistics from one tile only: {a['psnr_one_stats_tile_vs_whole_denoised']:.1f} dB")
    print(f"time per megapixel ({result['threads']} threads): whole {a['seconds_per_mpix_whole']:.2f} s, tiled "
          f"{a['seconds_per_mpix_tiled']:.2f} s ({a['tiled_over_whole']:.2f}x; tiles cover "
          f"{a['tiled_pixels_ratio']:.2f}x the image's pixels: {a['tiled_over_whole_per_processed_pixel']:.2f}x "
          f"per pixel the networks process)")
    if "seconds_tiled_layerwise" in a:
        print(f"layer-by-layer statistics (stats_memory=0): {a['seconds_per_mpix_tiled_layerwise']:.2f} s per "
              f"megapixel ({a['tiled_layerwise_over_whole']:.2f}x whole); max |diff| to the default "
              f"{a['max_abs_diff_tiled_vs_layerwise']:.1e}")
    if "big" in result:
        b = result["big"]
        print(f"iscl denoise on a {b['size']}x{b['size']} uint16 TIFF ({b['input_mib']:.0f} MiB): "
              f"{b['seconds']:.0f} s, peak RSS {b['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
