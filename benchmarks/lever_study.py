"""Compare training settings ("levers") of ISCL on validation pairs of both data families, at fixed steps.

One call trains one setting on one (family, task) and appends one JSON line to ``--out``: the validation
PSNR curve of the blend (every ``--eval-every`` steps), the final PSNR of the blend, F(x), x - H(x) and
the raw F, the noisy input's and BM3D's validation PSNR, and the seconds per step. Settings are compared
at equal steps (the quality of a step does not depend on how busy the machine is); their cost per
step is measured separately on an idle machine (``benchmarks/speed.py``), and the winners are confirmed
with wall-clock budgets (``benchmarks/quality_vs_time.py``). Validation pairs only (see families.py).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/lever_study.py --family sim --task em-charge --steps 600 \\
        --set network.residual_generators=true --tag residual --out runs/levers.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from families import FAMILIES, TASKS, Split, load_family  # noqa: E402
from iscl.config import Config, preset  # noqa: E402
from iscl.data.normalize import Normalizer, fit_normalizer  # noqa: E402
from iscl.engine.iscl import blend  # noqa: E402
from iscl.metrics import psnr  # noqa: E402
from iscl.predict import predict_image  # noqa: E402
from iscl.training.trainer import Trainer  # noqa: E402


def apply_overrides(config: Config, items: list[str]) -> Config:
    """``section.field=value`` (JSON values; bare words are strings) applied to a copy of ``config``."""
    d = config.model_dump()
    for item in items:
        key, _, raw = item.partition("=")
        section, _, field = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        d[section][field] = value
    return Config.model_validate(d)


def bm3d_psnr(family: str, task: str, clean: np.ndarray, noisy: np.ndarray, cache: Path) -> float:
    """BM3D (the benchmark's blind set-up) on the validation pairs, cached in ``cache``."""
    key = f"{family}/{task}/{len(clean)}"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        from iscl.methods.registry import get_method

        bm3d = get_method("bm3d")
        known[key] = float(np.mean([psnr(c, np.clip(bm3d.denoise(n), 0, 1), 1.0) for c, n in zip(clean, noisy)]))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1))
    return known[key]


def make_trainer(cfg: Config, split: Split) -> tuple[Trainer, Normalizer]:
    """A Trainer on ``split``'s training pools; the data are on [0, 1], so the window is fixed to it (with the
    setting's headroom). ``cfg.normalization`` is set to that window."""
    cfg.normalization = type(cfg.normalization)(mode="fixed", low=0.0, high=1.0, headroom=cfg.normalization.headroom)
    norm = fit_normalizer([split.train_clean[:1]], cfg.normalization)
    trainer = Trainer(cfg, [norm.forward(a) for a in split.train_clean], [norm.forward(a) for a in split.train_noisy],
                      norm, progress=False)
    return trainer, norm


def score(trainer: Trainer, clean: np.ndarray, noisy: np.ndarray, gamma: float, norm: Normalizer,
          tta: bool = False) -> dict[str, float]:
    """Validation PSNR (on [0, 1]) of the blend (SWA F), F alone, the bypass and the blend with the raw F; with
    ``tta`` also the bypass and the blend under test-time augmentation (the 8 dihedral transforms)."""
    m = trainer.model
    out: dict[str, list[float]] = {"blend": [], "F": [], "bypass": [], "blend_raw": [], "gamma0.25": [],
                                   "gamma0.75": []}
    if tta:
        out.update({"bypass_tta": [], "blend_tta": []})
    for c, n in zip(clean, noisy):
        x = norm.forward(n)
        r = predict_image(m.prediction_F("swa"), m.nets.H, x, gamma=gamma, outputs=("denoised", "generator", "bypass"))
        raw = predict_image(m.nets.F, m.nets.H, x, gamma=gamma)["denoised"]
        f, b = torch.from_numpy(r["generator"]), torch.from_numpy(r["bypass"])
        g25, g75 = (blend(f, b, g).numpy() for g in (0.25, 0.75))  # the production formula, not a copy
        for k, v in (("blend", r["denoised"]), ("F", r["generator"]), ("bypass", r["bypass"]), ("blend_raw", raw),
                     ("gamma0.25", g25), ("gamma0.75", g75)):
            out[k].append(psnr(c, np.clip(norm.inverse(v), 0, 1), 1.0))
        if tta:
            t = predict_image(m.prediction_F("swa"), m.nets.H, x, gamma=gamma, outputs=("denoised", "bypass"), tta=True)
            for k, v in (("blend_tta", t["denoised"]), ("bypass_tta", t["bypass"])):
                out[k].append(psnr(c, np.clip(norm.inverse(v), 0, 1), 1.0))
    return {k: float(np.mean(v)) for k, v in out.items()}


EMA_DECAY = 0.99


def average_h(trainer: Trainer) -> dict[str, torch.optim.swa_utils.AveragedModel]:
    """Weight averages of the trainer's H, updated after every step by an ``on_step`` hook: ``swa`` (equal
    weights over the steps after ``swa_start``·T, F's SWA rule) and ``ema`` (decay :data:`EMA_DECAY`)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from iscl.engine.optim import swa_should_update

    H, t = trainer.model.nets.H, trainer.config.train
    avgs = {"swa": AveragedModel(H), "ema": AveragedModel(H, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))}

    def update(tr: Trainer, record: dict) -> None:
        if swa_should_update(tr.model.step, t.steps, t.swa_start):
            avgs["swa"].update_parameters(H)
        avgs["ema"].update_parameters(H)

    trainer.on_step = update
    return avgs


def bypass_tta(H: torch.nn.Module, clean: np.ndarray, noisy: np.ndarray, norm: Normalizer) -> float:
    """Validation PSNR (on [0, 1]) of the bypass x - H(x) under test-time augmentation."""
    out = []
    for c, n in zip(clean, noisy):
        b = predict_image(H, H, norm.forward(n), gamma=0.0, outputs=("bypass",), tta=True)["bypass"]
        out.append(psnr(c, np.clip(norm.inverse(b), 0, 1), 1.0))
    return float(np.mean(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=FAMILIES, required=True)
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", action="append", default=[], help="config override section.field=value (repeatable)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file the result is appended to")
    p.add_argument("--average-h", action="store_true",
                   help="also keep weight averages of H (SWA over the steps F's SWA covers, and an EMA with decay "
                        f"{EMA_DECAY}) and score the bypass with TTA for each, beside the trained H")
    p.add_argument("--init-h", type=Path, default=None,
                   help="start H from these weights (safetensors, e.g. from h_ceiling.py --save-h) instead of its "
                        "initialization: H pretrained alone, then the ISCL game")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    split = load_family(args.family, args.task)
    cfg = apply_overrides(preset(args.preset), args.set)
    cfg.train.steps, cfg.train.seed = args.steps, args.seed
    trainer, norm = make_trainer(cfg, split)
    if args.init_h is not None:
        m = trainer.model
        m.nets.H.load_state_dict(load_file(str(args.init_h)))
        with torch.no_grad():  # Lookahead's slow weights start as the weights before the first update
            for slow, w in zip(m.opt_h.slow, m.nets.H.parameters()):
                slow.copy_(w)
    averages = average_h(trainer) if args.average_h else {}
    curve, seconds, stopped = [], 0.0, None
    gamma = cfg.predict.gamma
    for stop in range(args.eval_every, args.steps + args.eval_every, args.eval_every):
        t0 = time.perf_counter()
        try:
            trainer.run(stop_at=min(stop, args.steps))
        except Exception as exc:  # noqa: BLE001 - a diverged setting is a result, not a crash
            stopped = f"{type(exc).__name__}: {exc}"
            break
        seconds += time.perf_counter() - t0
        s = score(trainer, split.val_clean, split.val_noisy, gamma, norm)
        curve.append((trainer.model.step, s["blend"], s["F"], s["bypass"]))
    final = score(trainer, split.val_clean, split.val_noisy, gamma, norm, tta=True)
    for name, avg in averages.items():  # the same final model, its H replaced by a weight average
        final[f"bypass_tta_h{name}"] = bypass_tta(avg.module, split.val_clean, split.val_noisy, norm)
    noisy = float(np.mean([psnr(c, n, 1.0) for c, n in zip(split.val_clean, split.val_noisy)]))
    result = {"tag": args.tag, "family": args.family, "task": args.task, "preset": args.preset, "set": args.set,
              "steps": trainer.model.step, "seed": args.seed, "stopped": stopped, "final": final,
              "best_blend": max((c[1] for c in curve), default=float("nan")), "curve": curve,
              "noisy": noisy, "bm3d": bm3d_psnr(args.family, args.task, split.val_clean, split.val_noisy,
                                                args.out.parent / "bm3d_validation.json"),
              "seconds_per_step": seconds / max(1, trainer.model.step), "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(f"{args.tag:24s} {args.family}/{args.task:9s} final blend {final['blend']:.2f} F {final['F']:.2f} "
          f"bypass {final['bypass']:.2f} g.25 {final['gamma0.25']:.2f} g.75 {final['gamma0.75']:.2f} | "
          f"noisy {noisy:.2f} bm3d {result['bm3d']:.2f} | "
          f"{result['seconds_per_step']:.2f} s/step {stopped or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
