"""``iscl demo``: the whole job on built-in data, end to end, in minutes on a CPU.

Simulates the ``em-film`` dataset (EM tissue under multiplicative support-film noise), trains ISCL with
the ``fast`` preset (600 steps) on the unpaired pools, denoises the paired test images from their TIFF files, and
reports PSNR/SSIM of the noisy input and of ISCL against the clean test images.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from iscl import atomic
from iscl.errors import IsclError

__all__ = ["run_demo", "DEMO_DATA"]

# small enough that simulate + train + denoise fit in ~10 minutes on 2 cores
DEMO_DATA = {"name": "em-film", "n_train": 48, "n_test": 8, "size": 256}
# the CPU default of `iscl train`; a fixed step count (not a time budget) keeps the demo's numbers the
# same on every machine
DEMO_PRESET = "fast"
DEMO_STEPS = 600
MARKER = "demo.json"


def _figure(noisy: list[np.ndarray], denoised: list[np.ndarray], clean: list[np.ndarray],
            scores: list[tuple[float, float]], path: Path) -> None:
    # the object-oriented API: no pyplot, no global backend switch (a caller's backend stays as it is)
    from matplotlib.figure import Figure

    rows = min(3, len(noisy))
    fig = Figure(figsize=(9, 3 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        for c, (img, title) in enumerate(((noisy[r], f"noisy  {scores[r][0]:.2f} dB"),
                                          (denoised[r], f"ISCL  {scores[r][1]:.2f} dB"), (clean[r], "clean"))):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    with atomic.atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)


def run_demo(out: str | os.PathLike = "demo-output", *, steps: int | None = None, seed: int = 0,
             progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out`` and return its summary (also written to ``out/demo.json``).

    ``out`` must be empty, absent, or a previous demo's folder (which is replaced).
    """
    from iscl.api import load
    from iscl.config import preset
    from iscl.data.io import find_images, read_image
    from iscl.jobs import denoise_files, train_files
    from iscl.metrics import psnr, ssim
    from iscl.simulate.datasets import write_dataset

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise IsclError(out, "exists and is not a previous demo's folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    d = DEMO_DATA
    echo(f"[1/3] simulating {d['name']}: {d['n_train']} clean + {d['n_train']} noisy training images "
         f"(different scenes), {d['n_test']} test pairs, {d['size']}x{d['size']} ...")
    data = out / "data"
    write_dataset(d["name"], data, n_train=d["n_train"], n_test=d["n_test"], size=d["size"], seed=seed)
    t_sim = time.perf_counter() - t0

    config = preset(DEMO_PRESET)
    config.train.seed = seed
    config.train.steps = DEMO_STEPS if steps is None else steps
    config.normalization = type(config.normalization)(mode="fixed", low=0.0, high=1.0)
    echo(f"[2/3] training ISCL, preset '{DEMO_PRESET}' ({config.train.steps} steps, "
         f"batch {config.train.batch_size}) ...")
    t1 = time.perf_counter()
    train_files([str(data / "train" / "clean")], [str(data / "train" / "noisy")], config, out / "run",
                progress=progress)
    t_train = time.perf_counter() - t1

    echo("[3/3] denoising the test images ...")
    model = load(out / "run")
    denoise_files(model, [str(data / "test" / "noisy")], out / "denoised", progress=progress)

    clean, noisy, denoised, scores = [], [], [], []
    for path in find_images([str(data / "test" / "clean")]):
        c = read_image(path)[0]
        n = read_image(data / "test" / "noisy" / path.name)[0]
        dn = read_image(out / "denoised" / path.name)[0]
        clean.append(c)
        noisy.append(n)
        denoised.append(dn)
        scores.append((psnr(c, n, data_range=1.0), psnr(c, dn, data_range=1.0), ssim(c, n, data_range=1.0),
                       ssim(c, dn, data_range=1.0)))
    s = np.asarray(scores)
    _figure(noisy, denoised, clean, [(a, b) for a, b, _, _ in scores], out / "figure.png")
    summary = {
        "dataset": d, "seed": seed, "steps": config.train.steps, "preset": DEMO_PRESET,
        "noisy": {"psnr": float(s[:, 0].mean()), "ssim": float(s[:, 2].mean())},
        "iscl": {"psnr": float(s[:, 1].mean()), "ssim": float(s[:, 3].mean())},
        "seconds": {"simulate": t_sim, "train": t_train, "total": time.perf_counter() - t0},
        "outputs": {"denoised": str(out / "denoised"), "figure": str(out / "figure.png"), "run": str(out / "run"),
                    "loss_curve": str(out / "run" / "loss.png"), "data": str(data)},
    }
    atomic.write_text(out / MARKER, json.dumps(summary, indent=2) + "\n")
    gain = summary["iscl"]["psnr"] - summary["noisy"]["psnr"]
    echo("")
    echo(f"test images ({len(scores)}), against the clean ground truth:")
    echo(f"  noisy input : PSNR {summary['noisy']['psnr']:6.2f} dB   SSIM {summary['noisy']['ssim']:.3f}")
    echo(f"  ISCL        : PSNR {summary['iscl']['psnr']:6.2f} dB   SSIM {summary['iscl']['ssim']:.3f}   "
         f"({gain:+.2f} dB)")
    echo(f"denoised TIFFs : {out / 'denoised'}")
    echo(f"figure         : {out / 'figure.png'}")
    echo(f"model and logs : {out / 'run'} (loss curve: {out / 'run' / 'loss.png'})")
    echo(f"total time     : {summary['seconds']['total']:.0f} s")
    return summary
