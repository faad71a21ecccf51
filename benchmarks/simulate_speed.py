"""Speed of the simulators, noisy-input quality of the named datasets, and the documentation figures.

Usage::

    python benchmarks/simulate_speed.py                      # per-image times on one core
    python benchmarks/simulate_speed.py --metrics            # + generate each named dataset (defaults)
    python benchmarks/simulate_speed.py --figures docs/figures   # + one PNG per dataset

Per-image times are measured in this process with every math library limited to one thread, as
wall-clock and as process CPU time (CPU time is the fairer number on a busy machine). ``--metrics``
generates each dataset with its default sizes into a fresh temporary cache, using all cores, and
prints the wall time and the test split's noisy-vs-clean PSNR/SSIM (data range 1).
"""

from __future__ import annotations

import os

# One thread per math library, before numpy is imported: the target is "per image on one core".
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from iscl.simulate.ct import phantom_hu, simulate_low_dose  # noqa: E402
from iscl.simulate.datasets import DATASETS, load_dataset  # noqa: E402
from iscl.simulate.em import em_tissue  # noqa: E402
from iscl.simulate.noise import charge_noise, film_noise  # noqa: E402


def _time(fn, n: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn(i)`` over ``n`` calls (after one warm-up call)."""
    fn(10_000)
    wall, cpu = [], []
    for i in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def speed(size: int, n_em: int, n_ct: int) -> None:
    tissue = em_tissue(size, np.random.default_rng(0))
    hu, px = phantom_hu(size, np.random.default_rng(0))
    rows = [
        ("EM tissue (clean)", lambda i: em_tissue(size, np.random.default_rng(i)), n_em),
        ("film noise", lambda i: film_noise(tissue, np.random.default_rng(i)), n_em),
        ("charge noise", lambda i: charge_noise(tissue, np.random.default_rng(i)), n_em),
        ("CT phantom (HU)", lambda i: phantom_hu(size, np.random.default_rng(i)), n_ct),
        (
            "CT radon + noisy FBP",
            lambda i: simulate_low_dose(hu, px, np.random.default_rng(i), need_clean=False),
            n_ct,
        ),
        (
            "CT radon + clean & noisy FBP",
            lambda i: simulate_low_dose(hu, px, np.random.default_rng(i)),
            n_ct,
        ),
    ]
    print(f"per-image time, {size}x{size}, one thread (median)")
    print(f"{'stage':32s} {'n':>4s} {'wall ms':>9s} {'cpu ms':>9s}")
    for label, fn, n in rows:
        wall, cpu = _time(fn, n)
        print(f"{label:32s} {n:4d} {1e3 * wall:9.1f} {1e3 * cpu:9.1f}")


def metrics(workers: int | None) -> None:
    print(f"\nnamed datasets, default sizes, fresh cache, workers={workers or 'all cores'} ({os.cpu_count()} CPUs)")
    print(f"{'dataset':10s} {'n_train':>7s} {'n_test':>6s} {'size':>4s} {'gen s':>7s} {'PSNR dB':>8s} {'SSIM':>6s}")
    with tempfile.TemporaryDirectory() as cache:
        for name in DATASETS:
            t0 = time.perf_counter()
            ds = load_dataset(name, cache_dir=cache, workers=workers)
            gen = time.perf_counter() - t0
            m = ds.test_metrics()
            p = ds.params
            print(
                f"{name:10s} {p['n_train']:7d} {p['n_test']:6d} {p['size']:4d} {gen:7.1f} "
                f"{m['psnr']:8.2f} {m['ssim']:6.3f}"
            )


def figures(out_dir: Path, size: int) -> None:
    """One figure per dataset: two test scenes as clean | noisy | noisy − clean."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from iscl.metrics import psnr

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in DATASETS:
        # Seed 1 with 4 test images: for CT the last one is a real pydicom slice when one is available.
        ds = load_dataset(name, n_train=0, n_test=4, size=size, seed=1, cache_dir=False)
        picks = [0, 3] if name == "ct-ldct" else [0, 1]
        fig = Figure(figsize=(10.5, 7.0), dpi=80)
        axes = fig.subplots(len(picks), 3, squeeze=False)
        for r, i in enumerate(picks):
            clean, noisy = ds.test_clean[i], ds.test_noisy[i]
            if name == "ct-ldct":
                diff, span, unit = ds.test_noisy_hu[i] - ds.test_clean_hu[i], 150.0, " HU"
            else:
                diff, span, unit = noisy - clean, 0.4, ""
            src = ds.params.get("test_sources", ["procedural"] * 4)[i]
            panels = [
                (clean, f"clean ({src})", dict(cmap="gray", vmin=0, vmax=1)),
                (noisy, f"noisy, PSNR {psnr(clean, noisy, 1.0):.1f} dB", dict(cmap="gray", vmin=0, vmax=1)),
                (diff, f"noisy − clean (±{span:g}{unit})", dict(cmap="RdBu_r", vmin=-span, vmax=span)),
            ]
            for c, (img, title, kw) in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(img, interpolation="nearest", **kw)
                ax.set_title(title, fontsize=9)
                ax.set_axis_off()
        window = " (CT window L40/W400)" if name == "ct-ldct" else ""
        fig.suptitle(f"{name}: test split, seed 1, strength 1{window}", fontsize=11)
        fig.tight_layout()
        path = out_dir / f"simulation_{name}.png"
        fig.savefig(path)
        print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="image side for the timings and figures")
    ap.add_argument("--n-em", type=int, default=20, help="EM images timed per stage")
    ap.add_argument("--n-ct", type=int, default=5, help="CT slices timed per stage")
    ap.add_argument("--metrics", action="store_true", help="generate the named datasets and print PSNR/SSIM")
    ap.add_argument("--workers", type=int, default=None, help="worker count for --metrics (default all)")
    ap.add_argument("--figures", type=Path, default=None, metavar="DIR", help="write simulation_*.png to DIR")
    args = ap.parse_args()
    speed(args.size, args.n_em, args.n_ct)
    if args.metrics:
        metrics(args.workers)
    if args.figures is not None:
        figures(args.figures, args.size)


if __name__ == "__main__":
    main()
