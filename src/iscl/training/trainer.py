"""The ISCL training loop: unpaired patch streams, logging, checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from iscl.config import Config
from iscl.data.normalize import Normalizer
from iscl.data.patches import PatchSampler
from iscl.methods.iscl import ISCL
from iscl.training import checkpoint as ckpt
from iscl.training import distributed

__all__ = ["Trainer", "LOG_FILE", "CHECKPOINT_DIR", "BEST_DIR"]

LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"

# GAN collapse watch: warn after this many consecutive steps of a constant F or an all-winning D
COLLAPSE_PATIENCE = 50
CONSTANT_STD = 1e-3  # std of F(x) on [-1, 1] below which the generator output counts as constant
D_WINS = 1e-3  # both hinge losses below this: the discriminators separate real and fake perfectly

# the loss terms shown on the progress bar (all terms go to the log)
_BAR_TERMS = {"d_total": "D", "g_cycle": "cyc", "g_bypass": "byp", "h_total": "H"}


class Trainer:
    """Trains ISCL on two unrelated image collections.

    Parameters
    ----------
    config : the run's configuration (``config.train.steps`` is T).
    clean, noisy : sequences of 2-D float32 arrays (H_i, W_i) **already normalized** to [-1, 1] with
        ``normalizer``; the two pools are unpaired (no image of one is the scene of the other).
    normalizer : the mapping used, stored in every checkpoint.
    run_dir : where ``log.jsonl`` (one JSON object per step: every loss term, learning rates,
        seconds) and ``checkpoint/`` go; ``None`` keeps everything in memory.
    device : torch device.
    resume : continue from ``run_dir/checkpoint`` (its config must match).
    progress : show a progress bar.
    validation : optional paired (clean, noisy) lists of 2-D arrays normalized like the training
        data; every ``validate_every`` steps their mean PSNR (on the normalized [-1, 1] scale, which
        equals PSNR in image units with data range high - low) is logged as ``val_psnr``, and the best
        model is kept in ``run_dir/best``.
    """

    def __init__(self, config: Config, clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray],
                 normalizer: Normalizer, *, run_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", resume: bool = False, progress: bool = True,
                 validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
                 validate_every: int | None = None):
        self.config = config
        self.validation = validation
        self.validate_every = validate_every or max(1, config.train.steps // 20)
        self.best_psnr = -np.inf
        self._streaks = {"constant_generator": 0, "discriminator_wins": 0}
        self.normalizer = normalizer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        t = config.train
        self.dist = distributed.info()
        r, w = self.dist.rank, self.dist.world_size
        self.clean = PatchSampler(clean, t.patch_size, t.augment, seed=t.seed, stream=0, rank=r, world_size=w,
                                  min_std=t.min_patch_std)
        self.noisy = PatchSampler(noisy, t.patch_size, t.augment, seed=t.seed, stream=1, rank=r, world_size=w,
                                  min_std=t.min_patch_std)
        init_rng = torch.Generator().manual_seed(t.seed)
        self.model = ISCL(config.network, t, device=device, generator=init_rng, distributed=self.dist.enabled)
        self.device = self.model.device
        if resume:
            self._resume()

    # ------------------------------------------------------------------ resume
    def _resume(self) -> None:
        if self.run_dir is None:
            raise ValueError("resume=True needs a run_dir")
        saved_config, _, _ = ckpt.read_checkpoint_config(self.run_dir / CHECKPOINT_DIR)
        mine = self.config.model_dump(mode="json")
        theirs = saved_config.model_dump(mode="json")
        for section in ("network", "train"):
            # how often to save, what to do on NaN and how the same arithmetic is executed (memory format,
            # compilation) may change between runs; the rest (precision included) shapes the trajectory
            free = {"checkpoint_every", "nonfinite", "channels_last", "compile"}
            a = {k: v for k, v in mine[section].items() if k not in free}
            b = {k: v for k, v in theirs[section].items() if k not in free}
            if a != b:
                diff = sorted(k for k in a if a[k] != b.get(k))
                raise ckpt.CheckpointError(
                    f"{self.run_dir}: cannot resume, the {section} settings differ from the saved run "
                    f"({', '.join(diff)})"
                )
        state = ckpt.load_train_state(self.run_dir / CHECKPOINT_DIR, map_location=self.device)
        self.model.load_state_dict(state["iscl"])
        self.best_psnr = float(state.get("best_psnr", -np.inf))
        self.clean.load_state_dict(state["sampler_clean"])
        self.noisy.load_state_dict(state["sampler_noisy"])
        if self.dist.is_main:
            self._truncate_log(self.model.step)

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be recomputed)."""
        log = self.run_dir / LOG_FILE  # type: ignore[operator]
        if not log.exists():
            return
        kept = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        log.write_text("".join(ln + "\n" for ln in kept))

    # ------------------------------------------------------------------ checkpoints
    def prediction_weights(self) -> dict[str, torch.Tensor]:
        """``F.*`` (SWA average if it has snapshots, else raw), ``F_raw.*`` and ``H.*``."""
        m = self.model
        return ckpt.prediction_weights(m.prediction_F("swa"), m.nets.F, m.nets.H)

    def info(self) -> dict[str, Any]:
        m = self.model
        return {"step": m.step, "total_steps": self.config.train.steps, "swa_snapshots": m.swa_snapshots,
                "F_weights": "swa" if m.swa_snapshots > 0 else "raw (no SWA snapshot yet)",
                "patches_per_epoch": {"clean": len(self.clean), "noisy": len(self.noisy)}}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write a resumable checkpoint (default ``run_dir/checkpoint``)."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("save() needs a path when the trainer has no run_dir")
            path = self.run_dir / CHECKPOINT_DIR
        state = {"iscl": self.model.state_dict(), "sampler_clean": self.clean.state_dict(),
                 "sampler_noisy": self.noisy.state_dict(), "best_psnr": float(self.best_psnr)}
        return ckpt.save_checkpoint(path, config=self.config, normalizer=self.normalizer,
                                    weights=self.prediction_weights(), info=self.info(), train_state=state)

    def validate(self) -> float:
        """Mean PSNR (dB, data range 2 on the [-1, 1] scale) of the current prediction on the pairs."""
        from iscl.evaluate.metrics import psnr
        from iscl.predict import predict_image

        clean, noisy = self.validation  # type: ignore[misc]
        F_net = self.model.prediction_F("swa")
        gamma = self.config.predict.gamma
        scores = [psnr(c, predict_image(F_net, self.model.nets.H, n, gamma=gamma, device=self.device)["denoised"],
                       data_range=2.0) for c, n in zip(clean, noisy)]
        return float(np.mean(scores))

    def _watch_collapse(self, record: dict[str, Any]) -> str | None:
        """Count consecutive suspicious steps; return a warning once a streak reaches the patience."""
        checks = {
            "constant_generator": record.get("f_std", 1.0) < CONSTANT_STD,
            "discriminator_wins": record.get("d_noisy", 1.0) < D_WINS and record.get("d_clean", 1.0) < D_WINS,
        }
        messages = {
            "constant_generator": f"F's output has been constant (std < {CONSTANT_STD}) for {COLLAPSE_PATIENCE} "
                                  "steps: the generator may have collapsed; check loss.png, lower --lr",
            "discriminator_wins": f"the discriminators have won completely for {COLLAPSE_PATIENCE} steps "
                                  "(hinge losses ~0): training may have collapsed; check loss.png",
        }
        warning = None
        for name, bad in checks.items():
            self._streaks[name] = self._streaks[name] + 1 if bad else 0
            if self._streaks[name] == COLLAPSE_PATIENCE:
                warning = messages[name]
        return warning

    # ------------------------------------------------------------------ loop
    def run(self, stop_at: int | None = None) -> ISCL:
        """Train until step ``T`` (or ``stop_at`` < T, e.g. to split a run), then save a checkpoint.

        Raises :class:`~iscl.methods.iscl.NonFiniteLossError` (naming the step and the loss term)
        on NaN/Inf; the last periodic checkpoint is kept untouched.
        """
        t = self.config.train
        end = t.steps if stop_at is None else min(int(stop_at), t.steps)
        log_fh = None
        main = self.dist.is_main  # rank 0 alone writes logs and checkpoints
        writes = self.run_dir is not None and main
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            log_fh = open(self.run_dir / LOG_FILE, "a", buffering=1)  # type: ignore[operator]
        bar = tqdm(total=t.steps, initial=self.model.step, disable=not (self.progress and main), unit="step",
                   dynamic_ncols=True, desc="ISCL")
        try:
            while self.model.step < end:
                t0 = time.perf_counter()
                x = torch.from_numpy(self.noisy.next_batch(t.batch_size)).to(self.device, non_blocking=True)
                y = torch.from_numpy(self.clean.next_batch(t.batch_size)).to(self.device, non_blocking=True)
                record = self.model.train_step(x, y)
                record = {"step": self.model.step, **record, "seconds": time.perf_counter() - t0}
                step = self.model.step
                warning = self._watch_collapse(record)
                if warning:
                    record["warning"] = warning
                    bar.write(f"warning at step {step}: {warning}")
                if main and self.validation is not None and (step % self.validate_every == 0 or step == end):
                    record["val_psnr"] = self.validate()
                    if record["val_psnr"] > self.best_psnr:
                        self.best_psnr = record["val_psnr"]
                        if writes:
                            self.save(self.run_dir / BEST_DIR)  # type: ignore[operator]
                if log_fh is not None:
                    log_fh.write(json.dumps(record) + "\n")
                bar.update(1)
                postfix = {short: f"{record[k]:.3f}" for k, short in _BAR_TERMS.items()}
                if "val_psnr" in record:
                    postfix["val"] = f"{record['val_psnr']:.2f}dB"
                bar.set_postfix(postfix, refresh=False)
                every = t.checkpoint_every
                if writes and every and self.model.step % every == 0 and self.model.step < end:
                    self.save()
        finally:
            bar.close()
            if log_fh is not None:
                log_fh.close()
        if writes:
            self.save()
        if self.dist.enabled:  # nobody reads the checkpoint before rank 0 has written it
            torch.distributed.barrier()
        return self.model
