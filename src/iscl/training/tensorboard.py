"""TensorBoard output of a run (``RUN/tb/``): every scalar of ``log.jsonl`` under the same name, and a
picture of a fixed crop every few steps. ``log.jsonl`` stays the record; this is for watching.

Watch a run with ``tensorboard --logdir RUN/tb``. Needs the ``tensorboard`` package
(``pip install 'iscl[tensorboard]'``); :func:`available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from iscl.training.trainer import Trainer

__all__ = ["TB_DIR", "PREVIEW_TAG", "TensorBoardWriter", "EventFile", "available", "preview_crop"]

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


class EventFile:
    """One TensorBoard event file, written in the caller's thread.

    ``torch.utils.tensorboard.SummaryWriter`` writes from a background thread; when the disk is full
    (or a file-size limit hits) that thread dies with a traceback on stderr while training goes on. Here
    each record is written and flushed where it is made, so a failed write is an ``OSError`` we can
    handle. The records themselves are built by TensorBoard's and PyTorch's own code (``RecordWriter``,
    ``event_pb2``, ``summary.scalar``/``summary.image``); only the thread is left out.

    ``purge_step``: the first step of this session. The file starts with a session-start record at that
    step, which tells TensorBoard's reader to drop the events of earlier files at that step or later
    (those a resumed run redoes), as ``SummaryWriter(purge_step=...)`` does.
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter
        from torch.utils.tensorboard import summary

        self._event, self._summary = Event, summary
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        # the name TensorBoard looks for: events.out.tfevents.<seconds>.<host>.<pid>
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self.path = log_dir / name
        self._fh = open(self.path, "wb")  # noqa: SIM115 - held open for the run, closed in close()
        self._records = RecordWriter(self._fh)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2", step=purge_step or 0))
        if purge_step is not None:
            self._write(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def add(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray] | None = None) -> None:
        """Write ``scalars`` and (h, w) float ``images`` on [0, 1] at ``step``, then flush; raises ``OSError``."""
        wall = time.time()
        for tag, value in scalars.items():
            self._write(self._event(wall_time=wall, step=step, summary=self._summary.scalar(tag, value)))
        for tag, img in (images or {}).items():
            self._write(self._event(wall_time=wall, step=step,
                                    summary=self._summary.image(tag, img, dataformats="HW")))
        self._records.flush()

    def close(self) -> None:
        self._fh.close()


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
    resumes from (``purge_step``), so the curves match ``log.jsonl``. A failed write (disk full) is one
    warning and the end of this run's TensorBoard output, never the end of training: ``log.jsonl`` is
    the record.
    """

    def __init__(self, log_dir: str | os.PathLike, noisy: np.ndarray, clean: np.ndarray | None = None,
                 every: int | None = None):
        try:  # what EventFile needs, checked before training starts
            import tensorboard.summary.writer.record_writer  # noqa: F401
            import torch.utils.tensorboard.summary  # noqa: F401
        except ImportError:
            raise ImportError("--tensorboard needs the tensorboard package: pip install 'iscl[tensorboard]'") from None
        self.log_dir = Path(log_dir)
        self.noisy, self.clean = np.asarray(noisy, np.float32), None if clean is None else np.asarray(clean, np.float32)
        self.every = every
        self._writer: EventFile | None = None
        self.failed = False  # a write failed: nothing more is written this session

    def __call__(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.failed or not trainer.dist.is_main or "step" not in record:
            return
        step = int(record["step"])
        every = self.every or trainer.validate_every
        images = {PREVIEW_TAG: self.panel(trainer)} if step % every == 0 or step >= trainer.config.train.steps else {}
        try:
            if self._writer is None:  # the first step of this session: drop events a resumed run will redo
                self._writer = EventFile(self.log_dir, purge_step=step)
            self._writer.add(step, dict(_scalars(record)), images)
        except OSError as exc:
            self.failed = True
            warnings.warn(f"{self.log_dir}: TensorBoard output stops at step {step} ({exc.strerror or exc}); "
                          "training goes on, log.jsonl keeps the record", RuntimeWarning, stacklevel=2)

    def panel(self, trainer: Trainer) -> np.ndarray:
        """(h, k·w) float32 on [0, 1]: noisy | F(x) | x − H(x) | blend (| clean), with the run's current
        prediction choice (γ, SWA or raw F)."""
        out = trainer.predict(self.noisy, outputs=("generator", "bypass", "denoised"))
        tiles = [self.noisy, out["generator"], out["bypass"], out["denoised"]]
        if self.clean is not None:
            tiles.append(self.clean)
        return np.clip((np.hstack(tiles) + 1.0) / 2.0, 0.0, 1.0)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass  # a failed flush was already reported by __call__
