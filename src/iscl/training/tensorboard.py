"""TensorBoard output of a run (``RUN/tb/``): every scalar of ``log.jsonl`` under the same name, and a
picture of a fixed crop every few steps. ``log.jsonl`` stays the record; this is for watching.

Watch a run with ``tensorboard --logdir RUN/tb``. Needs the ``tensorboard`` package
(``pip install 'iscl[tensorboard]'``); :func:`available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iscl.predict import predict_image

if TYPE_CHECKING:
    from iscl.training.trainer import Trainer

__all__ = ["TB_DIR", "PREVIEW_TAG", "TensorBoardWriter", "available", "preview_crop"]

TB_DIR = "tb"
#: the image's tag; its panels left to right (the clean crop only with validation pairs)
PREVIEW_TAG = "preview/noisy | F(x) | x - H(x) | blend | clean"
CROP = 128  # preview side in pixels: big enough to judge texture, small enough to cost ~nothing


def available() -> bool:
    """True when the ``tensorboard`` package is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def preview_crop(image: np.ndarray, size: int = CROP) -> tuple[slice, slice]:
    """The centred ``size`` × ``size`` window of a (H, W) image (the whole side where it is smaller)."""
    return tuple(slice((n - min(n, size)) // 2, (n - min(n, size)) // 2 + min(n, size)) for n in image.shape)


def _scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Numeric entries of a log record, nested dicts as ``parent/child``; text, flags and ``step`` skipped."""
    for key, value in record.items():
        if key == "step" and not prefix:
            continue
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)


class TensorBoardWriter:
    """An ``on_step`` callback of :class:`~iscl.training.trainer.Trainer` that writes ``RUN/tb/``.

    Parameters
    ----------
    log_dir : the event files' folder (``RUN/tb``).
    noisy : (h, w) float32 crop on [-1, 1] that every preview denoises (the same crop all run long).
    clean : its clean counterpart (validation pairs), or None.
    every : a preview every this many steps (None: the trainer's validation period, T/20), and at the
        last step.

    Only the main process of a distributed run writes. A resumed run discards events past the step it
    resumes from (``purge_step``), so the curves match ``log.jsonl``.
    """

    def __init__(self, log_dir: str | os.PathLike, noisy: np.ndarray, clean: np.ndarray | None = None,
                 every: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--tensorboard needs the tensorboard package: pip install 'iscl[tensorboard]'") from None
        self._make = SummaryWriter
        self.log_dir = Path(log_dir)
        self.noisy, self.clean = np.asarray(noisy, np.float32), None if clean is None else np.asarray(clean, np.float32)
        self.every = every
        self._writer: Any = None

    def __call__(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if not trainer.dist.is_main or "step" not in record:
            return
        step = int(record["step"])
        if self._writer is None:  # the first step of this session: drop events a resumed run will redo
            self._writer = self._make(str(self.log_dir), purge_step=step)
        for name, value in _scalars(record):
            self._writer.add_scalar(name, value, step)
        every = self.every or trainer.validate_every
        if step % every == 0 or step >= trainer.config.train.steps:
            self._writer.add_image(PREVIEW_TAG, self.panel(trainer), step, dataformats="HW")

    def panel(self, trainer: Trainer) -> np.ndarray:
        """(h, k·w) float32 on [0, 1]: noisy | F(x) | x − H(x) | blend (| clean), with the run's current
        prediction choice (γ, SWA or raw F)."""
        m = trainer.model
        choice = trainer.prediction_choice or {}
        gamma = choice.get("gamma", trainer.config.predict.gamma)
        F_net = m.prediction_F(choice.get("weights", "swa"))
        out = predict_image(F_net, m.nets.H, self.noisy, gamma=gamma, outputs=("generator", "bypass", "denoised"),
                            device=trainer.device)
        tiles = [self.noisy, out["generator"], out["bypass"], out["denoised"]]
        if self.clean is not None:
            tiles.append(self.clean)
        return np.clip((np.hstack(tiles) + 1.0) / 2.0, 0.0, 1.0)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
