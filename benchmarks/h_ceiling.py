"""How good could ISCL's bypass x - H(x) be at this size and budget, if H's targets were perfect?

ISCL predicts with γ = 0 on every dataset we measured (the bypass carries the result), so what limits it is
H: its capacity (width × layers) and its training targets (the pseudo-noise x - F(x) and G's noise, both
only as good as F and G). This script trains H alone, *supervised*, on separately simulated (noisy, clean)
**training** pairs with the true noise x - y as its target (L1, the same patches, batch, optimiser
schedule and number of steps as a lever-study run), and scores the bypass on the family's validation pairs.
The gap between this ceiling and ISCL's bypass is what better targets could buy; the gap between the
ceiling and BM3D is what the network size and the budget cost. Validation pairs only, never test images.

``--target flat`` trains the same H on the family's unpaired training *pools* instead, with no true noise: the
noise is tiled from the flattest 16-px blocks of noisy pool patches (``iscl.engine.flat_noise``, what ISCL's
``train.extractor_flat_noise_weight`` term uses) and laid on clean pool patches, H's target being that noise
(GCBD's noise blocks without its GAN). It says how far the flat-block noise alone takes H, without F, G and
the discriminators, at about a seventh of an ISCL step's cost per update.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/h_ceiling.py --family sim --task ct-ldct --steps 400 \\
        --out runs/levers/ceiling.jsonl [--set network.extractor_layers=20]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from families import FAMILIES, TASKS, _alt, load_family  # noqa: E402
from iscl.config import preset  # noqa: E402
from iscl.data.patches import PatchSampler  # noqa: E402
from iscl.engine.flat_noise import flat_block_noise  # noqa: E402
from iscl.metrics import psnr  # noqa: E402
from iscl.nn.build import make_extractor  # noqa: E402
from iscl.predict import predict_image  # noqa: E402
from iscl.simulate.datasets import load_dataset  # noqa: E402
from lever_study import apply_overrides  # noqa: E402

PAIR_SEED = 3001  # training pairs: a seed neither the pools (0, 2001) nor the validation pairs (1001, 2002) use


def training_pairs(family: str, task: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (noisy, clean) training pairs of the family, (n, H, W) on [0, 1]; never validation or test images."""
    if family == "sim":
        d = load_dataset(task, seed=PAIR_SEED, n_train=1, n_test=n)
        return d.test_noisy, d.test_clean
    # the alt family's paired generator at another seed (its pools are unpaired by construction)
    s = _alt(task, 1, n, 2, val_seed=PAIR_SEED)
    return s.val_noisy, s.val_clean


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=FAMILIES, required=True)
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--preset", default="fast")
    p.add_argument("--set", action="append", default=[], help="config override section.field=value (repeatable)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", choices=("true", "flat"), default="true",
                   help="true: the true noise of simulated training pairs; flat: flat-block noise on the pools")
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file the result is appended to")
    p.add_argument("--save-h", type=Path, default=None,
                   help="write the trained H here (safetensors), e.g. for lever_study.py --init-h")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    torch.manual_seed(args.seed)

    cfg = apply_overrides(preset(args.preset), args.set)
    t = cfg.train
    split = load_family(args.family, args.task)
    if args.target == "true":
        noisy, clean = training_pairs(args.family, args.task, args.pairs)
    else:  # unpaired: the pools ISCL trains on
        noisy, clean = split.train_noisy, split.train_clean
    # data on [0, 1] → the network's [-1, 1], as lever_study's fixed window does
    xs = PatchSampler([2 * a - 1 for a in noisy], t.patch_size, t.augment, seed=args.seed, stream=3)
    ys = PatchSampler([2 * a - 1 for a in clean], t.patch_size, t.augment, seed=args.seed, stream=3)
    H = make_extractor(cfg.network)
    opt = torch.optim.RAdam(H.parameters(), lr=t.lr, betas=t.betas, eps=t.eps)

    def rate(step: int) -> float:  # the fast preset's warm-up + cosine (or linear) decay, as a factor of lr
        warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
        frac = step / max(1, args.steps)
        decay = 0.5 * (1 + math.cos(math.pi * frac)) if t.schedule == "cosine" else 1 - frac
        return warm * (t.min_lr / t.lr + (1 - t.min_lr / t.lr) * decay)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    rng = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    H.train()
    for _ in range(args.steps):
        x = torch.from_numpy(xs.next_batch(t.batch_size))
        y = torch.from_numpy(ys.next_batch(t.batch_size))
        if args.target == "flat":  # the flat-block noise laid on the clean patch, as ISCL's flat-noise term does
            field = flat_block_noise(x, rng, block=t.extractor_flat_noise_block,
                                     width=t.extractor_flat_noise_width or None, turn=t.augment == "dihedral",
                                     levels=t.extractor_flat_noise_levels, clean=y)
            if field is None:
                continue
            x = (y + field).clamp(-1.0, 1.0)
        loss = (H(x) - (x - y)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    if args.save_h is not None:
        args.save_h.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in H.state_dict().items()}, str(args.save_h))
    H.eval()
    scores, scores_tta = [], []
    for c, n in zip(split.val_clean, split.val_noisy):
        for tta, out in ((False, scores), (True, scores_tta)):  # TTA: as the fast preset predicts
            b = predict_image(H, H, 2 * n - 1, gamma=0.0, outputs=("bypass",), tta=tta)["bypass"]
            out.append(psnr(c, np.clip((b + 1) / 2, 0, 1), 1.0))
    noisy_psnr = float(np.mean([psnr(c, n, 1.0) for c, n in zip(split.val_clean, split.val_noisy)]))
    result = {"tag": args.tag, "family": args.family, "task": args.task, "preset": args.preset, "set": args.set,
              "steps": args.steps, "target": args.target, "pairs": args.pairs, "seed": args.seed,
              "bypass": float(np.mean(scores)), "bypass_tta": float(np.mean(scores_tta)),
              "noisy": noisy_psnr, "seconds_per_step": seconds / args.steps, "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(f"{args.tag:20s} {args.family}/{args.task:9s} {args.target}-noise H bypass {result['bypass']:.2f} "
          f"(TTA {result['bypass_tta']:.2f}) "
          f"(noisy {noisy_psnr:.2f}) {result['seconds_per_step']:.3f} s/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
