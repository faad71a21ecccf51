"""The ISCL training loop: unpaired patch streams, logging, checkpoints and exact resume."""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from iscl import atomic
from iscl.config import Config
from iscl.data.normalize import Normalizer
from iscl.data.patches import PatchSampler
from iscl.engine import distributed
from iscl.engine.iscl import ISCL
from iscl.errors import IsclError
from iscl.training import checkpoint as ckpt
from iscl.training.runlog import LOG_FILE, read_log

__all__ = ["Trainer", "CollapseError", "LOG_FILE", "CHECKPOINT_DIR", "BEST_DIR"]

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"

# GAN collapse watch: warn after this many consecutive steps of a constant F or an all-winning D
# (the default of TrainConfig.guard_patience)
COLLAPSE_PATIENCE = 50
CONSTANT_STD = 1e-3  # std of F(x) on [-1, 1] below which the generator output counts as constant
# F(x) varies less than this fraction of its input batch: F has (nearly) stopped following its input
# (a denoiser keeps the content, whose spread over a batch of patches is most of the input's)
CONSTANT_RATIO = 0.05
D_WINS = 1e-3  # both hinge losses below this: the discriminators separate real and fake perfectly

# time budget: untimed warm-up steps, then timed steps whose median fixes T; a margin for jitter
BUDGET_WARMUP_STEPS = 1
BUDGET_TIMED_STEPS = 4
BUDGET_MARGIN = 0.03
# gamma values tried by select_prediction
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)


class CollapseError(IsclError, RuntimeError):
    """Training collapsed and the collapse guard could not recover; the last good state was saved."""

# the loss terms shown on the progress bar (all terms go to the log)
_BAR_TERMS = {"d_total": "D", "g_cycle": "cyc", "g_bypass": "byp", "h_total": "H"}


class Trainer:
    """Trains ISCL on two unrelated image collections.

    Parameters
    ----------
    config : the run's configuration (``config.train.steps`` is T; with ``config.train.time_budget``
        T is fixed from the measured speed of the first steps instead, see :meth:`plan_budget`).
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
    clock : the time source (seconds) for the time budget and the log; tests pass a fake one.
    on_step : called as ``on_step(trainer, record)`` after every step (its log record), e.g. to keep
        snapshots at wall-clock marks for a quality-vs-time curve.

    The collapse guard (``config.train.collapse_guard``): the trainer keeps the state of the last step
    that ended ``guard_patience`` healthy steps; when F's output has been constant, or both
    discriminators have won completely, for ``guard_patience`` consecutive steps, it restores that
    state (networks, SWA averages, optimizer moments; not the step count) and halves every learning
    rate, at most ``guard_max_restarts`` times, each logged as ``guard``. Past that it saves the last
    good state and raises :class:`CollapseError`. Without the guard a run that ends collapsed is saved
    with ``info["collapsed"]`` set, and :func:`iscl.load` refuses it unless forced.

    :meth:`request_stop` (from any thread, e.g. a GUI's Stop button) ends :meth:`run` after the
    current step, with the checkpoint saved as ``stop_at`` saves it: the run can be resumed.
    """

    def __init__(self, config: Config, clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray],
                 normalizer: Normalizer, *, run_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", resume: bool = False, progress: bool = True,
                 validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
                 validate_every: int | None = None, clock: Callable[[], float] = time.perf_counter,
                 on_step: Callable[[Trainer, dict[str, Any]], None] | None = None):
        self.config = config
        self.on_step = on_step
        self.validation = validation
        self._validate_every = validate_every
        self.best_psnr = -np.inf
        self.clock = clock
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
        if t.augment == "official" and (len(self.clean.images), len(self.clean)) != (len(self.noisy.images),
                                                                                      len(self.noisy)):
            raise ValueError(
                "augment='official' pairs clean patch i with noisy patch i, as the official tf.data pipeline does: "
                f"it needs as many clean as noisy images and patches; got {len(self.clean.images)} clean images "
                f"({len(self.clean)} patches) and {len(self.noisy.images)} noisy ({len(self.noisy)} patches)")
        init_rng = torch.Generator().manual_seed(t.seed)
        self.model = ISCL(config.network, t, device=device, generator=init_rng, distributed=self.dist.enabled)
        self.device = self.model.device
        # time budget: the plan (seconds per step, T) once T is fixed; guard: restarts, last good state
        self.budget: dict[str, Any] | None = None
        self.guard = {"restarts": 0, "lr_scale": 1.0, "events": []}
        self._good_state: dict[str, Any] | None = None
        self._healthy_run = 0  # consecutive healthy steps since the last suspicious one
        self.train_seconds = 0.0  # training wall time over all finished sessions of this run
        self._session_start: float | None = None
        self.prediction_choice: dict[str, Any] | None = None  # select_prediction's latest (gamma, weights)
        self._stop = threading.Event()  # set by request_stop(), from any thread
        if resume:
            self._resume()

    @property
    def validate_every(self) -> int:
        """Validation period: the given one, else T/20 (T may be fixed late, by a time budget)."""
        return self._validate_every or max(1, self.config.train.steps // 20)

    # ------------------------------------------------------------------ resume
    def _resume(self) -> None:
        if self.run_dir is None:
            raise ValueError("resume=True needs a run_dir")
        saved_config, _, info = ckpt.read_checkpoint_config(self.run_dir / CHECKPOINT_DIR)
        mine = self.config.model_dump(mode="json")
        theirs = saved_config.model_dump(mode="json")
        budget = info.get("time_budget")
        if self.config.train.time_budget is not None and budget is not None:
            # T was fixed by the budget when the run started: the resumed run finishes that T
            mine["train"]["steps"] = theirs["train"]["steps"]
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
        if self.config.train.steps != saved_config.train.steps:
            self.model.set_total_steps(saved_config.train.steps)
        self.budget = budget
        self.model.load_state_dict(state["iscl"])
        self.best_psnr = float(state.get("best_psnr", -np.inf))
        self.clean.load_state_dict(state["sampler_clean"])
        self.noisy.load_state_dict(state["sampler_noisy"])
        self._streaks.update(state.get("streaks", {}))
        self._healthy_run = int(state.get("healthy_run", 0))
        self.guard = state.get("guard", self.guard)
        self._good_state = state.get("good_state")
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.prediction_choice = state.get("prediction_choice")
        if self.dist.is_main:
            self._truncate_log(self.model.step)

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be recomputed)."""
        log = self.run_dir / LOG_FILE  # type: ignore[operator]
        if not log.exists():
            return
        kept = read_log(log, upto_step=step)
        atomic.write_text(log, "".join(json.dumps(r) + "\n" for r in kept))  # a crash here must not lose the log

    def _session_seconds(self) -> float:
        return 0.0 if self._session_start is None else self.clock() - self._session_start

    # ------------------------------------------------------------------ checkpoints
    def prediction_weights(self) -> dict[str, torch.Tensor]:
        """``F.*`` (SWA average if it has snapshots, else raw), ``F_raw.*`` and ``H.*``."""
        m = self.model
        return ckpt.prediction_weights(m.prediction_F("swa"), m.nets.F, m.nets.H)

    def info(self) -> dict[str, Any]:
        m = self.model
        out = {"step": m.step, "total_steps": self.config.train.steps, "swa_snapshots": m.swa_snapshots,
               "F_weights": "swa" if m.swa_snapshots > 0 else "raw (no SWA snapshot yet)",
               "patches_per_epoch": {"clean": len(self.clean), "noisy": len(self.noisy)},
               "train_seconds": round(self.train_seconds + self._session_seconds(), 3)}
        if self.budget is not None:
            out["time_budget"] = self.budget
        if self.guard["restarts"]:
            out["collapse_guard"] = {"restarts": self.guard["restarts"], "lr_scale": self.guard["lr_scale"]}
        collapsed = self.collapsed()
        if collapsed:
            out["collapsed"] = collapsed
        return out

    def _config_to_save(self) -> Config:
        """The run's config, with select_prediction's choice of (gamma, weights) as the prediction settings."""
        if self.prediction_choice is None:
            return self.config
        cfg = self.config.model_copy(deep=True)
        cfg.predict.gamma = self.prediction_choice["gamma"]
        cfg.predict.weights = self.prediction_choice["weights"]
        return cfg

    def predict(self, image: np.ndarray, outputs: Sequence[str] = ("denoised",)) -> dict[str, np.ndarray]:
        """The run's current prediction of one normalized (H, W) image on [-1, 1] (previews, not validation):
        ``select_prediction``'s choice of γ and SWA/raw F once made, else the configured ones."""
        from iscl.predict import predict_image

        settings = self._config_to_save().predict
        F_net = self.model.prediction_F(settings.weights)
        return predict_image(F_net, self.model.nets.H, image, gamma=settings.gamma, outputs=tuple(outputs),
                             device=self.device)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write a resumable checkpoint (default ``run_dir/checkpoint``)."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("save() needs a path when the trainer has no run_dir")
            path = self.run_dir / CHECKPOINT_DIR
        state = {"iscl": self.model.state_dict(), "sampler_clean": self.clean.state_dict(),
                 "sampler_noisy": self.noisy.state_dict(), "best_psnr": float(self.best_psnr),
                 "streaks": dict(self._streaks), "healthy_run": self._healthy_run, "guard": self.guard,
                 "train_seconds": self.train_seconds + self._session_seconds()}
        if self._good_state is not None:
            state["good_state"] = self._good_state
        if self.prediction_choice is not None:
            state["prediction_choice"] = self.prediction_choice
        return ckpt.save_checkpoint(path, config=self._config_to_save(), normalizer=self.normalizer,
                                    weights=self.prediction_weights(), info=self.info(), train_state=state)

    # ------------------------------------------------------------------ validation
    def validate(self) -> float:
        """Mean PSNR (dB, data range 2 on the [-1, 1] scale) of the current prediction on the pairs.

        With ``select_prediction`` every gamma of :data:`GAMMAS` and both the SWA and the raw F are
        scored; the best pair is kept in :attr:`prediction_choice` and its PSNR returned. Otherwise the
        configured gamma with the SWA F (the default prediction).
        """
        from iscl.metrics import psnr
        from iscl.predict import predict_image

        clean, noisy = self.validation  # type: ignore[misc]
        m = self.model
        gamma = self.config.predict.gamma
        if not self.config.train.select_prediction:
            F_net = m.prediction_F("swa")
            return float(np.mean([psnr(c, predict_image(F_net, m.nets.H, n, gamma=gamma, device=self.device)[
                "denoised"], data_range=2.0) for c, n in zip(clean, noisy)]))
        candidates = {"swa": m.prediction_F("swa")} if m.swa_snapshots > 0 else {}
        candidates["raw"] = m.nets.F
        scores: dict[tuple[float, str], list[float]] = {}
        for c, n in zip(clean, noisy):
            bypass = None
            for weights, F_net in candidates.items():
                out = predict_image(F_net, m.nets.H, n, outputs=("generator", "bypass"), device=self.device)
                bypass = out["bypass"] if bypass is None else bypass
                for g in GAMMAS:
                    blend = np.clip(g * out["generator"] + (1 - g) * bypass, -1, 1)
                    scores.setdefault((g, weights), []).append(psnr(c, blend, data_range=2.0))
        (g, weights), values = max(scores.items(), key=lambda kv: (np.mean(kv[1]), kv[0][0] == gamma))
        self.prediction_choice = {"gamma": g, "weights": weights, "val_psnr": float(np.mean(values))}
        return float(np.mean(values))

    # ------------------------------------------------------------------ collapse watch and guard
    def _watch_collapse(self, record: dict[str, Any]) -> str | None:
        """Count consecutive suspicious steps; return a warning once a streak reaches the patience."""
        patience = self.config.train.guard_patience
        f_std, x_std = record.get("f_std", 1.0), record.get("x_std", 0.0)
        checks = {
            "constant_generator": f_std < CONSTANT_STD or (x_std > 0 and f_std < CONSTANT_RATIO * x_std),
            "discriminator_wins": record.get("d_noisy", 1.0) < D_WINS and record.get("d_clean", 1.0) < D_WINS,
        }
        messages = {
            "constant_generator": f"F's output has been constant (std < {CONSTANT_STD}, or below {CONSTANT_RATIO:g} "
                                  f"of its input's) for {patience} steps: the generator may have collapsed; "
                                  "check loss.png, lower --lr",
            "discriminator_wins": f"the discriminators have won completely for {patience} steps "
                                  "(hinge losses ~0): training may have collapsed; check loss.png",
        }
        warning = None
        for name, bad in checks.items():
            self._streaks[name] = self._streaks[name] + 1 if bad else 0
            if self._streaks[name] == patience:
                warning = messages[name]
        self._healthy_run = 0 if any(checks.values()) else self._healthy_run + 1
        return warning

    def collapsed(self) -> str | None:
        """What has collapsed now (a streak at or past the patience), or None."""
        patience = self.config.train.guard_patience
        what = [name.replace("_", " ") for name, n in self._streaks.items() if n >= patience]
        return f"{' and '.join(what)} for {patience}+ steps at step {self.model.step}" if what else None

    def _guard(self, record: dict[str, Any]) -> None:
        """The collapse guard after one step: keep good states, restore one on a collapse."""
        t = self.config.train
        if self._healthy_run and self._healthy_run % t.guard_patience == 0:
            self._good_state = copy.deepcopy(self.model.state_dict())
            return
        what = self.collapsed()
        if what is None:
            return
        if self.guard["restarts"] >= t.guard_max_restarts:
            self.model.restore_weights(self._good_state)  # type: ignore[arg-type]
            self._streaks = dict.fromkeys(self._streaks, 0)
            raise CollapseError(
                f"training collapsed ({what}) after {self.guard['restarts']} restart(s) at a lower learning rate; "
                f"the last good state (weights of step {self._good_state['step']}) was saved")  # type: ignore[index]
        good_step = self._good_state["step"]  # type: ignore[index]
        self.model.restore_weights(self._good_state)  # type: ignore[arg-type]
        self.model.scale_learning_rates(0.5)
        self.guard["restarts"] += 1
        self.guard["lr_scale"] *= 0.5
        event = f"{what}: restored the weights of step {good_step}, learning rates x{self.guard['lr_scale']:g}"
        self.guard["events"].append(event)
        record["guard"] = event
        self._streaks = dict.fromkeys(self._streaks, 0)

    # ------------------------------------------------------------------ time budget
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The step's noisy and clean batches, and one fresh pair of batches per extra flat-noise update of H."""
        b = self.config.train.batch_size
        pairs = []
        for _ in range(1 + self.config.train.extractor_flat_steps):
            x = torch.from_numpy(self.noisy.next_batch(b)).to(self.device, non_blocking=True)
            y = torch.from_numpy(self.clean.next_batch(b)).to(self.device, non_blocking=True)
            pairs.append((x, y))
        return *pairs[0], pairs[1:]

    def plan_budget(self, started: float) -> dict[str, Any]:
        """Fix T from the time budget: time a few steps, undo them, and solve for T.

        The timed steps run on the real model and data and are then undone (weights, optimizers and
        patch streams restored), so the run is the same as one with that T given as ``steps``. T is
        the largest step count for which calibration + T steps (+ 3 %) + ~21 validations + the
        checkpoints fit in ``time_budget`` seconds counted from ``started``. Under DDP rank 0 decides.
        """
        t = self.config.train
        budget = float(t.time_budget)  # type: ignore[arg-type]
        state = copy.deepcopy(self.model.state_dict())
        samplers = (self.clean.state_dict(), self.noisy.state_dict())
        times = []
        for i in range(BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS):
            x, y, extra = self._next_batch()
            t0 = self.clock()
            self.model.train_step(x, y, extra)
            if i >= BUDGET_WARMUP_STEPS:
                times.append(self.clock() - t0)
        step_s = statistics.median(times)
        self.model.load_state_dict(state)
        self.clean.load_state_dict(samplers[0])
        self.noisy.load_state_dict(samplers[1])
        val_s = save_s = 0.0
        if self.validation is not None and self.dist.is_main:
            t0 = self.clock()
            self.validate()
            val_s = self.clock() - t0
            self.prediction_choice = None
        if self.run_dir is not None and self.dist.is_main:
            t0 = self.clock()
            self.save()  # the step-0 checkpoint: also what a resume before the first save starts from
            save_s = self.clock() - t0
        left = budget - (self.clock() - started)
        every = t.checkpoint_every
        n_val = 0 if self.validation is None or not self.dist.is_main else 1

        def cost(steps: int) -> float:
            period = self._validate_every or max(1, steps // 20)
            validations = n_val * -(-steps // period)  # every period and at the end
            saves = 1 + ((steps - 1) // every if every else 0)  # periodic ones and the final one
            return steps * step_s * (1 + BUDGET_MARGIN) + validations * val_s + saves * save_s

        lo, hi = 0, max(1, int(left / step_s) + 1)  # the largest T with cost(T) <= left (cost grows with T)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= left else (lo, mid - 1)
        steps = lo
        if self.dist.enabled:
            steps = distributed.broadcast_int(steps, self.device)
        if steps < 1:
            need = (budget - left) + cost(2)
            raise ValueError(f"a time budget of {budget:g} s is too short: one training step takes {step_s:.2f} s "
                             f"(a validation {val_s:.2f} s, a checkpoint {save_s:.2f} s); give at least {need:.0f} s")
        self.model.set_total_steps(steps)
        self.budget = {"seconds": budget, "seconds_per_step": round(step_s, 4), "validation_seconds": round(val_s, 4),
                       "steps": steps}
        return self.budget

    # ------------------------------------------------------------------ loop
    def request_stop(self) -> None:
        """Make :meth:`run` end after the step in progress and save a resumable checkpoint (thread-safe).

        A request made before :meth:`run` starts ends it before its first step; ``run`` clears the
        request when it returns, so a later ``run`` (or a resume) continues normally.
        """
        self._stop.set()

    def run(self, stop_at: int | None = None) -> ISCL:
        """Train until step ``T`` (or ``stop_at`` < T, e.g. to split a run, or a :meth:`request_stop`), then
        save a checkpoint.

        Raises :class:`~iscl.engine.iscl.NonFiniteLossError` (naming the step and the loss term)
        on NaN/Inf, and :class:`CollapseError` when the collapse guard gives up; the last periodic
        checkpoint is kept untouched in the first case, the last good state is saved in the second.
        """
        t = self.config.train
        started = self._session_start = self.clock()
        log_fh = None
        main = self.dist.is_main  # rank 0 alone writes logs and checkpoints
        writes = self.run_dir is not None and main
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            stale = self.run_dir / BEST_DIR  # type: ignore[operator]
            if self.model.step == 0 and stale.exists():  # a new run: an older run's best model must not be loaded
                shutil.rmtree(stale)
            log_fh = open(self.run_dir / LOG_FILE, "a", buffering=1)  # type: ignore[operator]
        try:
            if t.time_budget is not None and self.budget is None and self.model.step == 0:
                plan = self.plan_budget(started)
                if log_fh is not None:
                    log_fh.write(json.dumps({"step": 0, "time_budget": plan, "message": (
                        f"time budget {plan['seconds']:g} s: {plan['seconds_per_step']:.3f} s per step measured, "
                        f"so T = {plan['steps']} steps (the LR decay and the SWA start follow T)")}) + "\n")
            if t.collapse_guard and self._good_state is None:
                # before the first healthy stretch, "good" is where this run starts (the initial weights)
                self._good_state = copy.deepcopy(self.model.state_dict())
            end = t.steps if stop_at is None else min(int(stop_at), t.steps)
            self._loop(end, log_fh, writes, main)
        except CollapseError:
            if writes:
                self.save()  # the last good state, restored by the guard
            raise
        finally:
            self.train_seconds += self.clock() - started
            self._session_start = None
            self._stop.clear()
            if log_fh is not None:
                log_fh.close()
        if writes:
            self.save()
        if self.dist.enabled:  # nobody reads the checkpoint before rank 0 has written it
            torch.distributed.barrier()
        return self.model

    def _loop(self, end: int, log_fh: Any, writes: bool, main: bool) -> None:
        t = self.config.train
        bar = tqdm(total=t.steps, initial=self.model.step, disable=not (self.progress and main), unit="step",
                   dynamic_ncols=True, desc="ISCL")
        try:
            while self.model.step < end and not self._stop.is_set():
                t0 = self.clock()
                x, y, extra = self._next_batch()
                record = self.model.train_step(x, y, extra)
                record = {"step": self.model.step, **record, "seconds": self.clock() - t0}
                step = self.model.step
                warning = self._watch_collapse(record)
                if warning:
                    record["warning"] = warning
                    bar.write(f"warning at step {step}: {warning}")
                if t.collapse_guard:
                    try:
                        self._guard(record)
                    except CollapseError:
                        if log_fh is not None:
                            log_fh.write(json.dumps({**record, "guard": "gave up"}) + "\n")
                        raise
                    if "guard" in record:
                        bar.write(f"collapse guard at step {step}: {record['guard']}")
                if main and self.validation is not None and (step % self.validate_every == 0 or step == end):
                    record["val_psnr"] = self.validate()
                    if self.prediction_choice is not None:
                        record["val_choice"] = {k: self.prediction_choice[k] for k in ("gamma", "weights")}
                    if record["val_psnr"] > self.best_psnr:
                        self.best_psnr = record["val_psnr"]
                        if writes:
                            self.save(self.run_dir / BEST_DIR)  # type: ignore[operator]
                if log_fh is not None:
                    log_fh.write(json.dumps(record) + "\n")
                if self.on_step is not None:
                    self.on_step(self, record)
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
