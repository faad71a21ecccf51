"""Tables and figures of benchmark and cross-validation results (Markdown, PNG via matplotlib's Agg)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iscl import atomic
from iscl.training.runlog import read_log

__all__ = ["write_benchmark_report", "results_markdown", "plot_dataset_grid", "plot_losses", "paired_wins",
           "plot_crossval"]


def _fmt(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _overrides(s: dict[str, Any]) -> str:
    items = {**s.get("network", {}), **s.get("train", {})}
    return "; overrides " + ", ".join(f"{k}={v}" for k, v in items.items()) if items else ""


def paired_wins(a: list[float], b: list[float]) -> tuple[float, int, int]:
    """Mean of ``a - b`` and on how many of the images ``a > b`` (same test images, paired)."""
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), int((d > 0).sum()), int(d.size)


def results_markdown(results: dict[str, Any]) -> str:
    """The benchmark's ``results.md``: settings, one table per dataset, ISCL against every other row."""
    s = results["settings"]
    meta = results.get("metadata", {})
    lines = ["# Benchmark results", ""]
    if results.get("command"):
        lines += ["Command:", "", "```", results["command"], "```", ""]
    patches = s["steps"] * s["batch_size"]
    lines += [
        f"Budget: every learned method gets **{s['steps']} steps × batch {s['batch_size']} = {patches:,} training "
        f"patches** (64×64, preset `{s['preset']}` architecture and optimiser{_overrides(s)}), "
        f"training seed {s['seed']}; "
        f"data seed {s['data_seed']}, noise strength {s['strength']:g}.",
        f"Machine: {meta.get('cpu_count', '?')} CPU cores, {meta.get('threads', '?')} torch threads, device "
        f"{meta.get('device', '?')}; iscl {meta.get('iscl', '?')} (commit {meta.get('commit', '?')}), torch "
        f"{meta.get('torch', '?')}.",
        "PSNR (dB) and SSIM on [0, 1] (data_range 1), mean ± std over the test images, every prediction clipped "
        "to [0, 1]. *train s*: training wall time; *s/MPix*: prediction seconds per megapixel (one image at a "
        "time).",
        "",
    ]
    if results.get("skipped"):
        for m, why in results["skipped"].items():
            lines.append(f"- `{m}` skipped: {why}")
        lines.append("")
    for ds in results["datasets"]:
        cells = results["cells"][ds]
        if not cells:
            continue
        first = next(iter(cells.values()))
        p = first.get("dataset_params", {})
        lines += [f"## {ds}", "",
                  f"{p.get('n_train', '?')} clean + {p.get('n_train', '?')} noisy unpaired training images, "
                  f"{first['n_test']} paired test images, {p.get('size', '?')}×{p.get('size', '?')} px.", "",
                  "| method | PSNR | SSIM | train s | s/MPix |", "|---|---|---|---|---|"]
        best = max(c["psnr_mean"] for m, c in cells.items() if m != "supervised")
        for m, c in cells.items():
            ps = _fmt(c["psnr_mean"], c["psnr_std"], 2)
            if c["psnr_mean"] == best:
                ps = f"**{ps}**"
            spm = c.get("predict_seconds_per_megapixel")
            spm_s = f"{spm:.2f}" if spm is not None else "–"
            ss = _fmt(c["ssim_mean"], c["ssim_std"], 3)
            lines.append(f"| {m} | {ps} | {ss} | {c['train_seconds']:.0f} | {spm_s} |")
        if "iscl" in cells:
            lines += ["", "ISCL against each row on the same test images (mean PSNR difference, images where "
                      "ISCL is higher):", ""]
            for m, c in cells.items():
                if m == "iscl":
                    continue
                d, w, n = paired_wins(cells["iscl"]["psnr_per_image"], c["psnr_per_image"])
                lines.append(f"- vs {m}: {d:+.2f} dB, {w}/{n} images")
        lines.append("")
        lines += [f"![{ds}](figures/{ds}.png)", ""]
    return "\n".join(lines) + "\n"


def _load_pred(out: Path, ds: str, name: str) -> np.ndarray | None:
    p = out / "predictions" / ds / f"{name}.npy"
    return np.load(p) if p.exists() else None


def plot_dataset_grid(results: dict[str, Any], out: Path, ds: str, path: Path, crop: int | None = None) -> Path | None:
    """noisy | each method | clean for the figure's test image, full view on top, a zoomed crop below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    noisy, clean = _load_pred(out, ds, "_noisy"), _load_pred(out, ds, "_clean")
    if noisy is None or clean is None:
        return None
    cells = results["cells"][ds]
    panels = [("noisy", noisy, cells.get("noisy"))]
    panels += [(m, _load_pred(out, ds, m), c) for m, c in cells.items() if m != "noisy"]
    panels = [p for p in panels if p[1] is not None] + [("clean", clean, None)]
    h, w = clean.shape
    c = crop or max(h // 4, 16)
    y0, x0 = (h - c) // 2, (w - c) // 2  # centre crop: fixed in advance, not chosen by the results
    n = len(panels)
    fig = Figure(figsize=(1.9 * n, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False)
    idx = results["settings"].get("figure_index", 0)
    for j, (label, img, cell) in enumerate(panels):
        title = label
        if cell is not None:
            title += f"\n{cell['psnr_per_image'][min(idx, len(cell['psnr_per_image']) - 1)]:.2f} dB"
        elif label == "clean":
            title += "\n(reference)"
        for row, view in enumerate((img, img[y0:y0 + c, x0:x0 + c])):
            ax = axes[row, j]
            ax.imshow(view, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), c, c, fill=False, edgecolor="yellow", linewidth=0.8))
    fig.suptitle(f"{ds}: test image {idx} (bottom: {c}×{c} centre crop)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(path) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    return path


_LOSS_KEYS = {
    "iscl": ("g_cycle", "g_bypass", "d_total", "h_total", "g_adv_clean"),
    "cyclegan": ("g_cycle", "d_total", "g_adv_clean"),
    "blindspot": ("loss",),
    "supervised": ("loss",),
}


def plot_losses(out: Path, ds: str, path: Path, smooth: int = 20) -> Path | None:
    """Training curves of each learned family on one dataset (moving average over ``smooth`` steps)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    logs = {}
    for fam in _LOSS_KEYS:
        p = out / "runs" / ds / fam / "log.jsonl"
        if p.exists():
            # step records only (ISCL's log also holds a time-budget line)
            logs[fam] = [r for r in read_log(p) if _LOSS_KEYS[fam][0] in r]
    if not logs:
        return None
    fig = Figure(figsize=(3.2 * len(logs), 2.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(logs), squeeze=False)[0]
    for ax, (fam, recs) in zip(axes, logs.items()):
        steps = np.array([r["step"] for r in recs])
        for k in _LOSS_KEYS[fam]:
            if k not in recs[0]:
                continue
            v = np.array([r[k] for r in recs], dtype=float)
            m = max(1, min(smooth, len(v)))
            sm = np.convolve(v, np.ones(m) / m, mode="valid")
            ax.plot(steps[m - 1:], sm, label=k, linewidth=1)
        ax.set_title(fam, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"{ds}: training losses (moving average, {smooth} steps)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(path) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    return path


def write_benchmark_report(results: dict[str, Any], out: Path, say: Callable[[str], None] | None = None) -> dict:
    """Write ``results.md`` and the figures of a benchmark run; returns their paths."""
    out = Path(out)
    md = out / "results.md"
    atomic.write_text(md, results_markdown(results))
    figures = {}
    for ds in results["datasets"]:
        g = plot_dataset_grid(results, out, ds, out / "figures" / f"{ds}.png")
        losses = plot_losses(out, ds, out / "figures" / f"{ds}_losses.png")
        figures[ds] = {"grid": str(g) if g else None, "losses": str(losses) if losses else None}
    if say:
        say(f"wrote {md}")
    return {"results_md": str(md), "results_json": str(out / "results.json"), "figures": figures}


def plot_crossval(report: dict[str, Any], path: Path) -> Path:
    """Per-image PSNR of the noisy input and of ISCL, grouped by fold, with each fold's mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 1.4 * len(report["folds"]), 3.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for j, f in enumerate(report["folds"]):
        p = [r["psnr"] for r in f["images"]]
        q = [r["noisy_psnr"] for r in f["images"]]
        jitter = np.linspace(-0.15, 0.15, len(p)) if len(p) > 1 else np.zeros(1)
        ax.scatter(j + 1 + jitter, q, s=8, color="0.6", label="noisy input" if j == 0 else None)
        ax.scatter(j + 1 + jitter, p, s=8, color="C0", label="ISCL" if j == 0 else None)
        ax.hlines(f["psnr_mean"], j + 0.7, j + 1.3, color="C0")
        ax.hlines(f["noisy_psnr_mean"], j + 0.7, j + 1.3, color="0.6")
    ax.set_xticks(range(1, len(report["folds"]) + 1))
    ax.set_xlabel("fold", fontsize=8)
    ax.set_ylabel(f"PSNR (dB, data range {report['data_range']:g})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title(f"{report['k']}-fold cross-validation: mean PSNR {report['psnr']:.2f} dB "
                 f"(noisy {report['noisy_psnr']:.2f} dB)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(path) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    return path
