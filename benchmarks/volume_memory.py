"""Peak memory of denoising a stack larger than the memory budget, chunk by chunk (TIFF or Zarr).

Writes a (Z, S, S) float32 stack, denoises it with ``iscl.jobs.denoise_files`` and reports the
process's memory growth during the run against the stack's size, and (``--check``) whether the
output equals denoising every slice on its own with ``Denoiser.predict``.

Memory is the peak of *anonymous* resident memory (``RssAnon``: what the process allocated),
sampled every 2 ms, minus its value just before the run. The process first denoises a two-block stack
of the same slices (``first_job_*``: one-off costs of torch's and the reader's pools and caches, paid
once per process whatever the volume), then the big stack (``anon_growth_mib``).
A TIFF stack is read through a memory map
whose pages count as file-backed RSS; those are clean page cache that the kernel drops under pressure,
so the total (``VmHWM``) is reported beside it but is not the measure of what the process holds.

Usage::

    .venv/bin/python benchmarks/volume_memory.py --format zarr --slices 64 --size 1024 --budget 64M --json
    .venv/bin/python benchmarks/volume_memory.py --format tiff --slices 64 --size 1024 --model RUN --json
    .venv/bin/python benchmarks/volume_memory.py --format zarr --slices 64 --size 256 --budget 4M --axis all --check

``--axis y|x|all`` denoises the (Z, W) / (Z, H) planes or all three orientations
(``Denoiser.denoise_volume``); ``--check`` then compares with ``denoise_volume`` on the whole stack in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class AnonPeak:
    """Samples RssAnon in a thread; ``peak`` is the largest value seen (KiB)."""

    def __init__(self, every: float = 0.002):
        self.every, self.peak, self._stop = every, _status_kib("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon"))
            time.sleep(self.every)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("RssAnon"))


def _model(path: str | None, preset_name: str):
    from iscl.api import Denoiser, load
    from iscl.config import preset
    from iscl.data.normalize import Normalizer

    if path:
        return load(path)
    cfg = preset(preset_name)
    F, F_raw, H = Denoiser._networks(cfg.network)
    return Denoiser(cfg, Normalizer(low=0, high=1), F, F_raw, H)


def _write_stack(path: Path, fmt: str, slices: int, size: int, chunk: int, chunk_yx: int | None = None) -> int:
    """A smooth random stack on [0, 1], written slice by slice (never whole in memory)."""
    rng = np.random.default_rng(0)
    if fmt == "zarr":
        import zarr

        side = chunk_yx or size
        arr = zarr.open_array(str(path), mode="w", shape=(slices, size, size), chunks=(chunk, side, side),
                              dtype="float32")
        for z0 in range(0, slices, chunk):
            arr[z0 : z0 + chunk] = rng.random((min(chunk, slices - z0), size, size), dtype=np.float32)
    else:
        import tifffile

        with tifffile.TiffWriter(path) as tw:
            for _ in range(slices):
                tw.write(rng.random((size, size), dtype=np.float32), contiguous=True)
    return slices * size * size * 4


def _read_slice(path: Path, fmt: str, z: int) -> np.ndarray:
    if fmt == "zarr":
        import zarr

        return np.asarray(zarr.open_array(str(path), mode="r")[z])
    import tifffile

    return tifffile.imread(path, key=z)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", choices=["tiff", "zarr"], default="zarr")
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=4, help="Zarr chunk depth along Z")
    p.add_argument("--chunk-yx", type=int, default=None, help="Zarr chunk side in y and x (default: whole slices)")
    p.add_argument("--budget", default="64M", help="memory budget (Zarr block planning)")
    p.add_argument("--model", default=None, help="run/checkpoint; default: random networks of --preset")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--scheduler", default=None, help="Dask: N local workers or an address")
    p.add_argument("--check", action="store_true", help="compare with slice-by-slice Denoiser.predict (--axis z) "
                   "or Denoiser.denoise_volume on the whole stack in memory")
    p.add_argument("--axis", default="z", choices=["z", "y", "x", "all"], help="orientation(s) of the planes")
    p.add_argument("--workdir", default=None)
    p.add_argument("--no-retain", action="store_true", help="leave glibc's malloc settings alone")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from iscl.jobs import denoise_files
    from iscl.runtime import retain_freed_memory
    from iscl.volumes import parse_bytes, plan_blocks

    if not args.no_retain:
        retain_freed_memory()  # as the iscl command line does
    torch.manual_seed(0)
    model = _model(args.model, args.preset)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        suffix = ".zarr" if args.format == "zarr" else ".tif"
        src, dst = Path(tmp) / f"stack{suffix}", Path(tmp) / f"out{suffix}"
        small, small_dst = Path(tmp) / f"small{suffix}", Path(tmp) / f"small-out{suffix}"
        nbytes = _write_stack(src, args.format, args.slices, args.size, args.chunk, args.chunk_yx)
        # the warm-up stack: two blocks of the big job's depth (TIFF: two chunks' worth of slices)
        depth = args.chunk
        if args.format == "zarr":
            depth = plan_blocks((args.slices,), args.chunk, args.size * args.size * 12, parse_bytes(args.budget))[0][1]
        small_bytes = _write_stack(small, args.format, min(max(2 * depth, 4), args.slices), args.size, args.chunk,
                                   args.chunk_yx)

        def job(source: Path, target: Path) -> tuple[float, float, float]:
            before_anon = _status_kib("RssAnon")
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            before_rss = _status_kib("VmRSS")
            t0 = time.perf_counter()
            with AnonPeak() as peak:
                denoise_files(model, [source], target, progress=False, memory_budget=parse_bytes(args.budget),
                              scheduler=args.scheduler, axis=args.axis)
            return (time.perf_counter() - t0, (peak.peak - before_anon) / 1024,
                    (_status_kib("VmHWM") - before_rss) / 1024)

        # the first job in a process pays one-off costs (torch's and the reader's pools and caches, the
        # allocator's heap reaching its working size); a two-block stack of the same slices measures
        # them, then the big stack runs in the warm process
        _, warm_anon, _ = job(small, small_dst)
        seconds, anon, rss = job(src, dst)
        result = {
            "format": args.format, "axis": args.axis, "shape": [args.slices, args.size, args.size],
            "stack_mib": nbytes / 2**20,
            "chunks": [args.chunk, args.chunk_yx or args.size, args.chunk_yx or args.size] if args.format == "zarr"
            else None,
            "budget": args.budget, "scheduler": args.scheduler, "seconds": round(seconds, 2),
            "first_job_mib": round(small_bytes / 2**20, 1), "first_job_anon_growth_mib": round(warm_anon, 1),
            "anon_growth_mib": round(anon, 1), "rss_growth_mib": round(rss, 1),
        }
        if args.check and args.axis != "z":
            whole = np.stack([_read_slice(src, args.format, z) for z in range(args.slices)])
            ref = model.denoise_volume(whole, axis=args.axis)
            got = np.stack([_read_slice(dst, args.format, z) for z in range(args.slices)])
            result["max_abs_diff_vs_in_memory"] = float(np.abs(got - ref).max())
        elif args.check:
            worst = 0.0
            for z in range(args.slices):
                ref = model.predict(_read_slice(src, args.format, z))["denoised"]
                worst = max(worst, float(np.abs(_read_slice(dst, args.format, z) - ref).max()))
            result["max_abs_diff_vs_slice_by_slice"] = worst
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
