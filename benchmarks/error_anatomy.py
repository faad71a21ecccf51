"""Where a trained ISCL model's error comes from, on the validation pairs of one (family, task).

Trains one setting for ``--steps`` steps (like ``lever_study.py``), then reports, on the 8 validation pairs:

* per clean-intensity bin: the mean of F(x), x - H(x), the noisy input and the clean image, and each
  one's RMS error (does a generator shift the tone, e.g. darken bright structures?);
* the noise statistics (std and lag-1 correlation along x and y, inside the window) of the true noise
  x - y, of G's noise G(y) - y on the clean validation images, and of H's answers H(x) and H(G(y)),
  with the correlation of H(x) with the true noise and of H(G(y)) with G's noise (does H find the noise,
  and is G's noise one that H can learn from?).

Validation pairs only, never test images. Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/error_anatomy.py --family sim --task ct-ldct --steps 400
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from families import FAMILIES, TASKS, load_family  # noqa: E402
from iscl.config import preset  # noqa: E402
from iscl.metrics import psnr  # noqa: E402
from iscl.predict import predict_image  # noqa: E402
from lever_study import apply_overrides, make_trainer  # noqa: E402

BINS = (0.0, 0.001, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.999, 1.01)


def noise_stats(d: np.ndarray, inside: np.ndarray) -> tuple[float, float, float]:
    """(std, lag-1 correlation along x, along y) of ``d`` (N, H, W) over the pixels in ``inside``."""
    d = d - d[inside].mean()
    var = d[inside].var()
    cx = (d[:, :, 1:] * d[:, :, :-1])[inside[:, :, 1:] & inside[:, :, :-1]].mean() / var
    cy = (d[:, 1:, :] * d[:, :-1, :])[inside[:, 1:, :] & inside[:, :-1, :]].mean() / var
    return float(np.sqrt(var)), float(cx), float(cy)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=FAMILIES, default="sim")
    p.add_argument("--task", choices=TASKS, default="ct-ldct")
    p.add_argument("--preset", default="fast")
    p.add_argument("--set", action="append", default=[], help="config override section.field=value (repeatable)")
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args(argv)

    split = load_family(args.family, args.task)
    cfg = apply_overrides(preset(args.preset), args.set)
    cfg.train.steps = args.steps
    trainer, norm = make_trainer(cfg, split)
    trainer.run()
    m = trainer.model
    c, n = split.val_clean, split.val_noisy
    F, bypass, gy, hx, hgy = [], [], [], [], []
    for clean, noisy in zip(c, n):
        r = predict_image(m.prediction_F("swa"), m.nets.H, norm.forward(noisy),
                          outputs=("generator", "bypass", "noise"))
        F.append(norm.inverse(r["generator"]))
        bypass.append(norm.inverse(r["bypass"]))
        hx.append(r["noise"] * (norm.high - norm.low) / 2)  # a difference: scaled, not shifted
        with torch.no_grad():
            g = m.nets.G(torch.from_numpy(norm.forward(clean))[None, None])
            gy.append(norm.inverse(g[0, 0].numpy()))
            hgy.append(m.nets.H(g)[0, 0].numpy() * (norm.high - norm.low) / 2)
    F, bypass, gy, hx, hgy = map(np.stack, (F, bypass, gy, hx, hgy))

    print(f"{args.family}/{args.task}, preset {args.preset} {' '.join(args.set)}, {m.step} steps; validation PSNR: "
          + ", ".join(f"{k} {np.mean([psnr(a, np.clip(b, 0, 1), 1.0) for a, b in zip(c, v)]):.2f}"
                      for k, v in (("noisy", n), ("F", F), ("bypass", bypass))))
    print("clean bin       frac | mean: F  bypass noisy clean | RMS error: F  bypass noisy")
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (c >= lo) & (c < hi)
        if sel.any():
            rms = [np.sqrt(((v - c)[sel] ** 2).mean()) for v in (F, bypass, n)]
            print(f"[{lo:.3f}, {hi:.3f}) {sel.mean():.3f} | {F[sel].mean():.3f} {bypass[sel].mean():.3f} "
                  f"{n[sel].mean():.3f} {c[sel].mean():.3f} | {rms[0]:.3f} {rms[1]:.3f} {rms[2]:.3f}")
    inside = (c > 0.05) & (c < 0.95)
    for name, d in (("true noise x - y", n - c), ("G's noise G(y) - y", gy - c), ("H(x)", hx), ("H(G(y))", hgy)):
        std, cx, cy = noise_stats(d, inside)
        print(f"{name:20s} std {std:.4f}  lag-1 correlation x {cx:.3f} y {cy:.3f}")
    print(f"correlation of H(x) with the true noise {np.corrcoef(hx[inside], (n - c)[inside])[0, 1]:.3f}; "
          f"of H(G(y)) with G's noise {np.corrcoef(hgy[inside], (gy - c)[inside])[0, 1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
