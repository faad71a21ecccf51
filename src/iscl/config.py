"""Typed, validated configuration of an ISCL run; saved as ``config.json`` next to every checkpoint.

Presets are named factory functions (:func:`preset`): ``paper`` reproduces the official
hyper-parameters; ``cpu`` is a smaller, faster variant for 2-core machines and says how it differs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iscl.data.normalize import NormalizationConfig

__all__ = ["Config", "NetworkConfig", "TrainConfig", "PredictConfig", "FORMAT_VERSION", "preset", "PRESETS",
           "load_config", "parse_duration"]

FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NetworkConfig(_Strict):
    """Widths and depths of the five networks (official: 32 / 3 / 32 / 20 / 32).

    ``residual_generators``, ``residual_noise_generator``, ``noise_generator_channels``,
    ``extractor_zero_head`` and ``extractor_dilations`` are not in the official method (off in ``paper``).
    """

    generator_width: int = Field(32, ge=1)
    generator_res_blocks: int = Field(3, ge=0)
    extractor_width: int = Field(32, ge=1)
    extractor_layers: int = Field(20, ge=2)
    discriminator_width: int = Field(32, ge=1)
    residual_generators: bool = Field(
        False, description="F(x) = x + g(x), G(y) = y + g(y) with g's output layer starting at zero (no tanh): "
        "both generators start as the identity")
    residual_noise_generator: bool = Field(
        False, description="G alone is residual, G(y) = y + g(y) (g's output layer starting at zero, no tanh): "
        "G(y) - y, H's noise-consistency target, is then only the noise G adds, not also G's error in "
        "reproducing y through its 4x encoder-decoder")
    noise_generator_channels: int = Field(
        0, ge=0, description="G also takes this many channels of standard normal noise z, drawn anew at every "
        "step, at its input and at its output layer: G(y, z) draws noise instead of making it a fixed function "
        "of y (0: the official deterministic G)")
    extractor_zero_head: bool = Field(
        False, description="H's last layer starts at zero, so the bypass x - H(x) starts as the identity")
    extractor_dilations: tuple[int, ...] = Field(
        (), description="one dilation per middle layer of H (extractor_layers - 2 of them), as in IRCNN: a wider "
        "receptive field for the same weights and FLOPs (for noise correlated over long distances: scan lines, "
        "streaks); empty: all 1, the official H")

    @model_validator(mode="after")
    def _check_dilations(self) -> NetworkConfig:
        d = self.extractor_dilations
        if d and (len(d) != self.extractor_layers - 2 or min(d) < 1):
            raise ValueError(f"extractor_dilations needs extractor_layers - 2 = {self.extractor_layers - 2} values "
                             f">= 1, got {list(d)}")
        return self


class TrainConfig(_Strict):
    """Optimisation schedule (method.md §2–3). ``steps`` is T, the length of the linear LR decay."""

    steps: int = Field(8000, ge=1, description="total training steps T (decay and SWA start use it)")
    batch_size: int = Field(64, ge=1)
    patch_size: int = Field(64, ge=64, description="square patch side; the discriminator needs >= 64")
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(1e-7, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    cycle_weight: float = Field(30.0, ge=0, description="λ on cycle + bypass losses")
    swa_start: float = Field(0.6, ge=0, le=1, description="SWA snapshots after update int(swa_start*T)")
    lookahead_k: int = Field(6, ge=1)
    lookahead_alpha: float = Field(0.5, gt=0, le=1)
    augment: Literal["dihedral", "flips", "none", "official"] = Field(
        "dihedral", description="patch augmentation: the 8 rotations/flips (the paper's), the 4 that keep rows as rows "
        "(flips and the half turn: for noise along the scan rows), none, or official: what the official code "
        "ran (identity + reflections only, clean patch i paired with noisy patch i, a near-sequential order from "
        "a shuffle buffer of one image count; see iscl.data.patches) for reproduction studies")
    min_patch_std: float = Field(
        0.0, ge=0, description="leave out training patches whose std on [-1, 1] is below this (flat background, "
        "e.g. air clipped by a CT window); 0 keeps every patch, as the paper does")
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0: end only)")
    init_std: float = Field(0.05, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="forward passes under autocast (weights, BIN statistics and losses stay fp32)")
    channels_last: bool = Field(False, description="NHWC memory format for weights and activations")
    compile: bool = Field(False, description="torch.compile each sub-step objective (slow first steps)")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="on a NaN/Inf loss or gradient: stop with an error, or skip that update")
    # ---- not in the official method: every field below is off (its neutral value) in ``paper``
    schedule: Literal["linear", "cosine"] = Field(
        "linear", description="learning-rate decay from lr to min_lr over T: linear (official) or cosine")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up over the first N updates")
    d_lr_scale: float = Field(1.0, gt=0, description="the discriminators' learning rate is lr times this")
    identity_weight: float = Field(
        0.0, ge=0, description="weight of an identity term |F(y) - y| (F leaves clean images unchanged), "
        "added to the F/G objective with the same λ scaling as cycle and bypass")
    lowpass_weight: float = Field(
        0.0, ge=0, description="weight of a tone term |blur(F(x)) - blur(x)| + |blur(G(y)) - blur(y)| (the generators "
        "keep their input's local mean, as zero-mean noise does), with the same λ scaling as cycle and bypass")
    lowpass_sigma: float = Field(2.0, gt=0, description="the tone term's Gaussian blur, in pixels")
    cycle_without_draw: bool = Field(
        False, description="with noise_generator_channels: G gets z = 0 in the cycle G(F(x)) = x (a cycle back to "
        "one particular noisy image cannot be met by a random draw, and would teach G to ignore z)")
    extractor_identity_weight: float = Field(
        0.0, ge=0, description="weight of a term |H(y)| on clean images (nothing to extract from a clean image), "
        "added to H's objective")
    pseudo_noise_weight: float = Field(
        1.0, ge=0, description="weight of H's pseudo-noise term |H(x) - (x - F(x))| against its noise-consistency "
        "term (1 in the official method)")
    noise_consistency_weight: float = Field(
        1.0, ge=0, description="weight of H's noise-consistency term |H(G(y)) - (G(y) - y)| (1 in the official "
        "method)")
    extractor_renoise_weight: float = Field(
        0.0, ge=0, description="weight of a term |H(y + H(x)) - H(x)| (H(x) held fixed): the noise H finds in a real "
        "noisy image, laid on an unrelated clean image, is what H must find there; added to H's objective")
    extractor_adversarial_weight: float = Field(
        0.0, ge=0, description="weight of an adversarial term for H, -mean D_Y(x - H(x)): the bypass must look clean "
        "to D_Y (the boosting term already trains D_Y to catch it); added to H's objective, which in the official "
        "method learns only from F's residual and G's noise")
    extractor_transplant_weight: float = Field(
        0.0, ge=0, description="weight of an adversarial term for H, -mean D_X(y + H(x)): the noise H extracts, laid "
        "on an unrelated clean image, must look like real noise to D_X; added to H's objective")
    extractor_flat_noise_weight: float = Field(
        0.0, ge=0, description="weight of a term |H(y + n) - n| where n is real noise: blocks (of side "
        "extractor_flat_noise_block) cut from the flattest quarter of the noisy batch's unclipped blocks (mean "
        "removed), tiled, laid on the clean batch (y + n clipped to [-1, 1]); a noisy image with known noise besides "
        "G's imitation (GCBD's noise blocks without its GAN); added to H's objective, one more pass of H")
    extractor_flat_noise_block: int = Field(
        16, ge=4, description="side (px) of the flat-noise blocks: larger blocks keep more of the noise's long-range "
        "correlation (charging lines, streaks) and are flat less often")
    extractor_flat_noise_width: int = Field(
        0, ge=0, description="width (px) of the flat-noise blocks, 0 for square (extractor_flat_noise_block): a strip "
        "as wide as the patch keeps noise correlated along the rows (charging lines) whole; with the 8 "
        "rotations/flips, a patch whose pixels change less down its columns is turned a quarter before its strips "
        "are cut, and half the noise fields are turned")
    extractor_flat_noise_levels: int = Field(
        0, ge=0, le=64, description="0, or the number of intensity levels the flat-noise blocks are matched at (for "
        "noise that grows with the signal): the flattest blocks are kept per level of their mean, and each tile is "
        "drawn from blocks whose mean is near the clean patch's under it")
    extractor_flat_noise_guide: Literal["noisy", "bypass"] = Field(
        "noisy", description="what ranks the blocks by flatness: the noisy patches (their flattest blocks are also "
        "those whose noise happened to be weakest) or the bypass x - H(x), a denoised estimate (one more pass of "
        "H without gradients)")
    extractor_flat_noise_source: Literal["blocks", "spectrum", "oriented"] = Field(
        "blocks", description="where the known noise n of the flat-noise term comes from: the flattest blocks of the "
        "noisy batch (blocks), or Gaussian noise drawn from a spectrum estimated as the noisy patches' power minus "
        "the clean patches' power (spectrum: keeps correlation longer than a block, down to low frequencies, "
        "though the very lowest are lost where the scenes' own power dominates; running averages over steps, saved "
        "with the checkpoint), or the same spectrum oriented (oriented: with the 8 rotations/flips, each noisy "
        "patch's spectrum is turned so its stronger axis lies along the rows before the average, which spans every "
        "batch seen, and half the fields drawn are turned a quarter, so a field's lines run one way, as in a real "
        "patch)")
    extractor_flat_steps: int = Field(
        0, ge=0, description="extra updates of H alone per step, each on the flat-noise pair (|H(y + n) - n|, n from "
        "extractor_flat_noise_source) of a fresh noisy and clean batch, at the step's learning rate: H learns from "
        "known noise at about a seventh of an ISCL step's cost per update (H's pass only, no F, G or D)")
    collapse_guard: bool = Field(
        False, description="on a collapse (F constant, or D winning completely, for guard_patience steps) go back "
        "to the last good state and continue with half the learning rate, at most guard_max_restarts times")
    guard_patience: int = Field(50, ge=1, description="consecutive collapsed steps that count as a collapse")
    guard_max_restarts: int = Field(3, ge=0, description="restarts of the collapse guard before training stops")
    select_prediction: bool = Field(
        False, description="with validation pairs: choose γ (0, 0.25, ..., 1) and SWA or raw F on them at every "
        "validation; the best model is saved with its choice")
    axis: Literal["z", "y", "x", "all"] = Field(
        "z", description="which planes of a (Z, H, W) training stack patches come from: its Z slices (z, the "
        "paper's), its (Z, W) planes (y), its (Z, H) planes (x), or all three orientations (all); 2-D images give "
        "themselves")
    # ---- how long to train: not a change of the method
    time_budget: float | None = Field(
        None, gt=0, description="seconds of training wanted: T (steps) is fixed from the measured speed of the first "
        "steps so that training, its validations and checkpoints end within the budget")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_bool(cls, value: object) -> object:
        # configs written before the field took names said true/false
        return {True: "dihedral", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class PredictConfig(_Strict):
    """Prediction ``clip(γ F(x) + (1-γ)(x - H(x)), -1, 1)``; ``weights`` picks the SWA or raw F."""

    gamma: float = Field(0.5, ge=0, le=1)
    weights: Literal["swa", "raw"] = "swa"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="prediction under autocast (BIN statistics and blending stay fp32)")
    tta: bool = Field(False, description="test-time augmentation: average over the 8 rotations/flips (8x the time)")


class Config(_Strict):
    """Root configuration. Misspelt keys fail (``extra='forbid'``)."""

    format_version: Literal[1] = FORMAT_VERSION
    method: Literal["iscl"] = "iscl"
    preset: str = "paper"
    network: NetworkConfig = NetworkConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()
    normalization: NormalizationConfig = NormalizationConfig()
    notes: str = ""


def paper() -> Config:
    """The official hyper-parameters: batch 64, 64×64 patches, 8,000 steps (400 × 20), lr 1e-4, λ 30, γ 0.5."""
    return Config(preset="paper", notes="official ISCL hyper-parameters (demo_EM.py: 400 iterations x 20 epochs)")


def cpu() -> Config:
    """A preset that learns something useful in minutes on 2 CPU cores.

    Differences from ``paper`` (all stated in ``notes``): generator width 16 instead of 32 (~4x fewer
    FLOPs), noise extractor 10 layers instead of 20, discriminator width 16, batch 8 instead of 64,
    600 steps instead of 8,000, lr 1e-3 instead of 1e-4 (few, small batches need a larger rate; on
    ``em-film`` 400 steps at 1e-3 gave +2.6 dB where 60 steps at 2e-4 were still below the noisy input).
    """
    return Config(
        preset="cpu",
        network=NetworkConfig(generator_width=16, extractor_layers=10, discriminator_width=16),
        train=TrainConfig(steps=600, batch_size=8, lr=1e-3),
        notes=(
            "cpu preset: differs from paper in generator_width 16 (32), extractor_layers 10 (20), "
            "discriminator_width 16 (32), batch_size 8 (64), steps 600 (8000), lr 1e-3 (1e-4)"
        ),
    )


#: The settings ``fast`` changes from ``paper``, each a named field, with why (docs/benchmark.md measures
#: each; the README's preset table lists them).
FAST_CHANGES: dict[str, tuple[object, str]] = {
    "network.generator_width": (16, "4x fewer generator FLOPs"),
    "network.extractor_layers": (10, "half the noise extractor's depth"),
    "network.discriminator_width": (16, "4x fewer discriminator FLOPs"),
    "train.batch_size": (8, "8x more updates per minute than batch 64"),
    "train.lr": (1e-3, "few steps need a larger rate"),
    "train.warmup_steps": (50, "RAdam's first, un-rectified updates at 1e-3 collapse CT runs; a warm-up does not"),
    "train.schedule": ("cosine", "more steps near the top rate than the linear decay"),
    "train.identity_weight": (1.0, "|F(y) - y| keeps F from erasing clean structure; +0.5-0.6 dB on CT"),
    "network.extractor_zero_head": (True, "x - H(x) starts as the identity; bypass +0.5-2 dB on em-charge and CT"),
    "train.extractor_identity_weight": (1.0, "|H(y)| on clean images: H leaves what is not noise alone; CT +0.8 and "
                                              "+3.7 dB, EM +0.1"),
    "predict.gamma": (0.0, "the bypass x - H(x) leads F at CPU budgets (F is still trained: it teaches H); with TTA "
                           "+0.2-1.4 dB over gamma 0.25 on validation pairs of both families, and F is not run"),
    "predict.tta": (True, "averaging the 8 rotations/flips: +0.1-0.4 dB on validation pairs (8x the prediction time "
                          "of H alone; --no-tta)"),
    "train.collapse_guard": (True, "a collapse is undone (last good state, half the rate) instead of delivered"),
    "train.select_prediction": (True, "with validation pairs, gamma and SWA/raw F are chosen on them"),
}


def fast() -> Config:
    """Quality per CPU minute: the ``cpu`` networks, a warm-up, a cosine decay, identity terms for F and H, a
    zero-start H, the bypass with test-time augmentation as the prediction (gamma 0), the guard.

    Every change from ``paper`` is a named field listed in :data:`FAST_CHANGES` (and in ``notes``);
    ``steps`` is a default for runs without ``--time-budget``, which is how this preset is meant to be
    used (``iscl train --time-budget 30m``).
    """
    cfg = Config(preset="fast", train=TrainConfig(steps=2000))
    for key, (value, _why) in FAST_CHANGES.items():
        section, field = key.split(".")
        setattr(getattr(cfg, section), field, value)
    cfg.notes = "fast preset: differs from paper in " + ", ".join(
        f"{k.split('.')[1]} {v!r} ({why})" for k, (v, why) in FAST_CHANGES.items())
    return cfg


PRESETS = {"paper": paper, "cpu": cpu, "fast": fast}


def preset(name: str) -> Config:
    """A fresh Config for a named preset (``paper``, ``cpu`` or ``fast``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None


def parse_duration(text: str | float) -> float:
    """``"30m"``, ``"2h"``, ``"90s"``, ``"1h30m"`` or a number of seconds → seconds (> 0)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        t = text.strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s?)?", t)
        if not t or parts is None:
            raise ValueError(f"cannot read {text!r} as a duration; use e.g. 90s, 30m, 2h or 1h30m")
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + sec
    if not seconds > 0:
        raise ValueError(f"a duration must be positive; got {text!r}")
    return seconds


def load_config(path: str | os.PathLike) -> Config:
    """Read a Config from JSON: a plain ``Config`` document or a checkpoint's ``config.json``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: cannot read a configuration ({exc})") from None
    if isinstance(doc, dict) and "config" in doc and "normalizer" in doc:  # a checkpoint's config.json
        doc = doc["config"]
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        first = str(exc).splitlines()
        raise ValueError(f"{p}: invalid configuration ({' '.join(first[:3])})") from None
