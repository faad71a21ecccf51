"""Numeric precision of the networks' forward passes: fp32 (default), or bf16/fp16 mixed precision.

Mixed precision runs convolutions under :func:`torch.autocast`; the weights, optimizer state and
BIN statistics stay fp32 (``BatchInstanceNorm`` computes its moments and normalization in fp32 and
casts back), and every loss is reduced in fp32. fp16 training also needs loss scaling, done with
``torch.amp.GradScaler``; bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

__all__ = ["Precision", "PRECISIONS", "autocast", "grad_scaler", "check_precision"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: str | torch.device) -> None:
    """Raise ``ValueError`` for an unknown precision or one the device cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(dev)} does not support bf16; use fp16 or fp32")


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context for forward passes: ``torch.autocast`` for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: str | torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training (None otherwise: fp32 and bf16 need none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
