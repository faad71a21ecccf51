"""Loss curves from a run's ``log.jsonl`` (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from iscl import atomic
from iscl.training.runlog import read_log

__all__ = ["plot_losses"]

_PANELS = (
    ("Discriminators", ("d_noisy", "d_clean", "d_boosting")),
    ("Generators F, G", ("g_adv_noisy", "g_adv_clean", "g_cycle", "g_bypass")),
    ("Noise extractor H", ("h_pseudo_noise", "h_noise_consistency")),
)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_losses(log_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Write a PNG with one panel per network group (+ validation PSNR when logged); returns its path."""
    # the object-oriented API: no pyplot, no global backend switch (a caller's backend stays as it is)
    from matplotlib.figure import Figure

    records = read_log(log_path)
    records = [r for r in records if "d_total" in r]  # step records (a time budget adds a line of its own)
    if not records:
        raise ValueError(f"{log_path}: the loss log is empty")
    steps = np.array([r["step"] for r in records])
    has_val = any("val_psnr" in r for r in records)
    fig = Figure(figsize=(4.2 * (3 + has_val), 3.4))
    axes = fig.subplots(1, 3 + has_val)
    window = max(1, len(records) // 50)
    for ax, (title, keys) in zip(axes, _PANELS):
        for k in keys:
            y = _smooth(np.array([r[k] for r in records]), window)
            ax.plot(steps[len(steps) - len(y):], y, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    if has_val:
        vs = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
        axes[-1].plot(*zip(*vs), marker="o")
        axes[-1].set_title("validation PSNR (dB)")
        axes[-1].set_xlabel("step")
    fig.tight_layout()
    out = Path(png_path)
    with atomic.atomic_file(out) as f:
        fig.savefig(f, format="png", dpi=90)
    return out
