"""Checkpoint directories: ``config.json`` + ``weights.safetensors`` (+ ``train_state.pt`` for resume).

* ``config.json``: format version, package version, the full :class:`~iscl.config.Config`, the fitted
  :class:`~iscl.data.normalize.Normalizer` and the step / SWA counters.
* ``weights.safetensors``: what prediction needs: ``F.*`` (SWA average when it has snapshots, else the
  raw weights), ``F_raw.*`` and ``H.*``. safetensors holds tensors only, so loading executes no code.
* ``train_state.pt``: all five networks, SWA, optimizer, Lookahead and scheduler states and the data
  stream positions, loaded with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

A checkpoint is written into a hidden temporary sibling directory and renamed into place, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from iscl import atomic
from iscl._version import __version__
from iscl.config import FORMAT_VERSION, Config
from iscl.data.normalize import Normalizer

__all__ = ["CheckpointError", "CheckpointWriteError", "save_checkpoint", "read_checkpoint_config", "load_weights",
           "load_train_state", "resolve_checkpoint", "prediction_weights"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "train_state.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the directory and the reason (one line)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file size limit, ...); nothing half-written remains."""


def prediction_weights(F_swa: torch.nn.Module, F_raw: torch.nn.Module, H: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The flat ``F.*`` / ``F_raw.*`` / ``H.*`` tensor map stored in ``weights.safetensors``."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in (("F", F_swa), ("F_raw", F_raw), ("H", H)):
        # contiguous(): safetensors stores row-major tensors only (channels-last training gives NHWC weights)
        out.update({f"{prefix}.{k}": v.contiguous() for k, v in module.state_dict().items()})
    return out


def save_checkpoint(path: str | os.PathLike, *, config: Config, normalizer: Normalizer,
                    weights: dict[str, torch.Tensor], info: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically and return its path.

    Parameters
    ----------
    weights : flat name → tensor map (``F.*``, ``F_raw.*``, ``H.*``), saved to safetensors.
    info : small JSON-able facts (step, swa_snapshots, total_steps, ...).
    train_state : resumable state for ``train_state.pt``; ``None`` for a prediction-only checkpoint.
    """
    final = Path(path)
    try:
        with atomic.atomic_dir(final, overwrite=True) as tmp:  # files fsync'ed, old copy replaced via .old
            _write_checkpoint_files(tmp, config, normalizer, weights, info, train_state)
    except Exception as exc:
        # safetensors and torch report disk errors with their own exception types: one clear OSError
        reason = " ".join(str(exc).split()) or type(exc).__name__
        kept = "the previous checkpoint is kept" if final.exists() else "no checkpoint was written"
        raise CheckpointWriteError(f"{final}: could not write the checkpoint ({reason}); {kept}") from exc
    return final


def _write_checkpoint_files(tmp: Path, config: Config, normalizer: Normalizer, weights: dict[str, torch.Tensor],
                            info: dict[str, Any], train_state: dict[str, Any] | None) -> None:
    """The checkpoint files, written into the (not yet published) directory ``tmp``."""
    doc = {
        "format_version": FORMAT_VERSION,
        "iscl_version": __version__,
        "config": config.model_dump(mode="json"),
        "normalizer": normalizer.model_dump(mode="json"),
        "info": info,
    }
    (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    if train_state is not None:
        torch.save(train_state, tmp / STATE_FILE)


def resolve_checkpoint(path: str | os.PathLike, prefer_best: bool = False) -> Path:
    """Find the checkpoint directory for ``path`` (a checkpoint dir or a run dir holding ``checkpoint/``).

    With ``prefer_best``, a run dir's ``best/`` (the best-validation model, kept when training had
    validation pairs) comes before its ``checkpoint/`` (the last step). Restores a checkpoint left as
    ``.NAME.old-*`` by a crash in the middle of :func:`iscl.atomic.publish_dir`.
    """
    p = Path(path)
    for candidate in (p, *([p / "best"] if prefer_best else []), p / "checkpoint"):
        atomic.recover_dir(candidate)
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    raise CheckpointError(f"{p}: not an iscl checkpoint (no {CONFIG_FILE} here or in {p / 'checkpoint'})")


def read_checkpoint_config(path: str | os.PathLike,
                           prefer_best: bool = False) -> tuple[Config, Normalizer, dict[str, Any]]:
    """Read and validate ``config.json``: returns (config, normalizer, info). ``prefer_best``: see
    :func:`resolve_checkpoint`."""
    ckpt = resolve_checkpoint(path, prefer_best)
    try:
        doc = json.loads((ckpt / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: unreadable ({exc})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: expected a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt}: checkpoint format version {version!r} is not supported (this iscl {__version__} reads "
            f"version {FORMAT_VERSION}); use the iscl version that wrote it"
        )
    try:
        config = Config.model_validate(doc["config"])
        normalizer = Normalizer.model_validate(doc["normalizer"])
    except (KeyError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: invalid configuration ({first})") from None
    return config, normalizer, dict(doc.get("info", {}))


def load_weights(path: str | os.PathLike, prefer_best: bool = False) -> dict[str, torch.Tensor]:
    """Load ``weights.safetensors`` (tensors only; nothing is executed)."""
    ckpt = resolve_checkpoint(path, prefer_best)
    f = ckpt / WEIGHTS_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt}: missing {WEIGHTS_FILE}")
    try:
        return load_file(str(f))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{f}: not a valid safetensors file ({exc})") from None


def load_train_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``train_state.pt`` with ``weights_only=True``: a planted pickle payload is refused, not run."""
    ckpt = resolve_checkpoint(path)
    f = ckpt / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt}: no {STATE_FILE}; this checkpoint cannot resume training")
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{f}: refused to load ({first})") from None
