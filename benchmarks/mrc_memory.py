"""Peak memory of denoising an MRC volume far larger than what the process may hold (issue 13: a 4 GiB
volume with less than 1 GiB of memory growth).

Writes a (Z, S, S) MRC volume of random pixels with mrcfile (slice by slice through its memory map,
never whole in memory), denoises it with ``iscl.jobs.denoise_files`` (as ``iscl denoise`` does:
slices read from a memory map of the input, written in place into a hidden temporary MRC that is
renamed at the end) and reports the process's memory growth during the run against the volume's size.

Memory is the peak of *anonymous* resident memory (``RssAnon``: what the process allocated), sampled
every 2 ms, minus its value just before the run; the process first denoises a 2-slice volume of the same
slice size (``first_job_*``: one-off costs of torch's pools and caches). The memory-mapped input and the
written output count as file-backed RSS (clean or written-back page cache the kernel can drop), so
``VmHWM`` growth is reported beside it but is not the measure of what the process holds.
``stats_seconds`` is the pass that reads the output back to put dmin/dmax/dmean/rms in its header.
``--check N`` compares N evenly spaced output slices with ``Denoiser.predict`` on the input slice.

Usage::

    .venv/bin/python benchmarks/mrc_memory.py --gib 0.5 --size 1024 --tiny --check 3 --json
    .venv/bin/python benchmarks/mrc_memory.py --gib 4 --size 2048 --json      # the issue's 4 GiB volume
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from volume_memory import AnonPeak, _model, _status_kib

_MODES = {1: np.int16, 2: np.float32, 6: np.uint16}


def _write_volume(path: Path, slices: int, size: int, mode: int) -> int:
    """Random pixels (float32 on [0, 1]; integers on [0, 1000]), written section by section."""
    import mrcfile

    rng = np.random.default_rng(0)
    with mrcfile.new_mmap(path, (slices, size, size), mrc_mode=mode, overwrite=True) as m:
        for z in range(slices):
            plane = rng.random((size, size), dtype=np.float32)
            m.data[z] = plane if mode == 2 else (plane * 1000).astype(_MODES[mode])
        m.voxel_size = 2.5
    return slices * size * size * np.dtype(_MODES[mode]).itemsize


def _tiny_model(preset_name: str):
    from iscl.api import Denoiser
    from iscl.config import NetworkConfig, preset
    from iscl.data.normalize import Normalizer

    cfg = preset(preset_name)
    cfg.network = NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4, extractor_layers=3,
                                discriminator_width=4)
    F, F_raw, H = Denoiser._networks(cfg.network)
    return Denoiser(cfg, Normalizer(low=0, high=1), F, F_raw, H)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=0.5, help="volume size in GiB (the issue asks for 4)")
    p.add_argument("--size", type=int, default=2048, help="slice side S in pixels")
    p.add_argument("--mode", type=int, choices=sorted(_MODES), default=2, help="MRC mode of the volume")
    p.add_argument("--model", default=None, help="run/checkpoint; default: random networks of --preset")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--tiny", action="store_true",
                   help="narrow random networks (the tests' sizes): fast, to show how memory scales with the volume; "
                        "a real model adds its per-slice activations, the same for any number of slices")
    p.add_argument("--check", type=int, default=0, metavar="N", help="compare N slices with Denoiser.predict")
    p.add_argument("--workdir", default=None, help="where the volume is written (needs 2x its size free)")
    p.add_argument("--no-retain", action="store_true", help="leave glibc's malloc settings alone")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import mrcfile
    import torch

    from iscl.data.formats import mrc as mrc_format
    from iscl.jobs import denoise_files
    from iscl.runtime import retain_freed_memory

    if not args.no_retain:
        retain_freed_memory()  # as the iscl command line does
    torch.manual_seed(0)
    model = _tiny_model(args.preset) if args.tiny else _model(args.model, args.preset)
    itemsize = np.dtype(_MODES[args.mode]).itemsize
    slices = max(1, round(args.gib * 2**30 / (args.size * args.size * itemsize)))

    stats_seconds = [0.0]
    finish = mrc_format._finish_stack

    def timed_finish(*a: object) -> None:  # time the statistics pass of the streamed output
        t0 = time.perf_counter()
        finish(*a)
        stats_seconds[0] += time.perf_counter() - t0

    mrc_format._finish_stack = timed_finish
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src, dst = Path(tmp) / "volume.mrc", Path(tmp) / "denoised.mrc"
        small, small_dst = Path(tmp) / "small.mrc", Path(tmp) / "small-out.mrc"
        t0 = time.perf_counter()
        nbytes = _write_volume(src, slices, args.size, args.mode)
        write_seconds = time.perf_counter() - t0
        _write_volume(small, 2, args.size, args.mode)

        def job(source: Path, target: Path) -> tuple[float, float, float]:
            stats_seconds[0] = 0.0
            before_anon = _status_kib("RssAnon")
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            before_rss = _status_kib("VmRSS")
            t0 = time.perf_counter()
            with AnonPeak() as peak:
                denoise_files(model, [source], target, progress=False)
            return (time.perf_counter() - t0, (peak.peak - before_anon) / 1024,
                    (_status_kib("VmHWM") - before_rss) / 1024)

        _, warm_anon, _ = job(small, small_dst)
        seconds, anon, rss = job(src, dst)
        with mrcfile.mmap(dst, mode="r") as out, mrcfile.mmap(src, mode="r") as inp:
            h = out.header
            result = {
                "shape": [slices, args.size, args.size], "mode": args.mode, "volume_mib": round(nbytes / 2**20, 1),
                "write_input_seconds": round(write_seconds, 1), "seconds": round(seconds, 1),
                "stats_seconds": round(stats_seconds[0], 1),
                "first_job_anon_growth_mib": round(warm_anon, 1),
                "anon_growth_mib": round(anon, 1), "rss_growth_mib": round(rss, 1),
                "output_mode": int(h.mode), "output_voxel_size": float(out.voxel_size.x),
                "output_stats": [round(float(v), 4) for v in (h.dmin, h.dmax, h.dmean, h.rms)],
                "networks": "tiny" if args.tiny else (args.model or args.preset),
                "torch_threads": torch.get_num_threads(),
            }
            if args.check:
                worst = 0.0
                for z in np.linspace(0, slices - 1, args.check).round().astype(int):
                    ref = model.predict(np.array(inp.data[z]))["denoised"]
                    worst = max(worst, float(np.abs(out.data[z].astype(np.float64) - ref).max()))
                result["max_abs_diff_vs_slice_alone"] = worst
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
