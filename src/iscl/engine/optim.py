"""Optimisers of ISCL: RAdam with a linear learning-rate decay, Lookahead, and SWA glue (method.md §3)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

__all__ = ["LinearDecay", "Lookahead", "make_radam", "make_scheduler", "make_swa", "set_total_steps",
           "swa_should_update"]


class LinearDecay:
    """LR factor for ``LambdaLR``: the t-th update (t = e + 1) uses ``lr·(1 - (1 - min/lr)·min(t, T)/T)``.

    This is tfa ``RectifiedAdam(total_steps=T, min_lr=..., warmup_proportion=0)``: even the first update
    is already decayed by 1/T, and update T uses exactly ``min_lr``. A class (not a lambda) so that
    the scheduler's state can be saved.

    Two options that the official method does not have (``kind="linear"``, ``warmup=0`` is exactly the
    rule above): ``kind="cosine"`` decays along ``min + (1 - min)·(1 + cos(π p))/2`` instead of
    ``1 - (1 - min)·p``, and ``warmup=W`` ramps the factor linearly up to 1 over updates 1…W (update t
    uses t/W) and decays over the remaining ``T - W`` updates, ``p = min(t - W, T - W)/(T - W)``.
    """

    def __init__(self, total_steps: int, min_ratio: float, kind: str = "linear", warmup: int = 0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if kind not in ("linear", "cosine"):
            raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}")
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)
        self.kind = kind
        self.warmup = int(warmup)

    def __call__(self, epoch: int) -> float:
        t = epoch + 1
        # a warm-up as long as the run (a time budget that fixed a short T) keeps one decay step
        w = min(getattr(self, "warmup", 0), self.total_steps - 1)
        if t <= w:
            return t / w
        p = min(t - w, self.total_steps - w) / (self.total_steps - w)
        if getattr(self, "kind", "linear") == "cosine":
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0 - (1.0 - self.min_ratio) * p


def make_radam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], eps: float) -> torch.optim.RAdam:
    """``torch.optim.RAdam`` matching tfa's RectifiedAdam update (no weight decay, no warm-up)."""
    # foreach: one fused kernel per op over all tensors (on CPU torch defaults to a per-tensor loop)
    return torch.optim.RAdam(list(params), lr=lr, betas=betas, eps=eps, foreach=True)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, lr: float, min_lr: float,
                   kind: str = "linear", warmup: int = 0) -> LambdaLR:
    """Decay from ``lr`` to ``min_lr`` over ``total_steps`` (see :class:`LinearDecay`), stepped once
    after every optimizer step. ``lr`` is the optimizer's own rate (``min_lr / lr`` is the floor)."""
    return LambdaLR(optimizer, LinearDecay(total_steps, min_lr / lr, kind, warmup))


def set_total_steps(scheduler: LambdaLR, total_steps: int) -> None:
    """Change T of a :func:`make_scheduler` schedule (a time budget fixes T after timing the first steps).

    The new T is part of the scheduler's state (``LambdaLR`` saves its factor object's attributes).
    """
    for fn in scheduler.lr_lambdas:
        fn.total_steps = int(total_steps)
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)


class Lookahead:
    """Lookahead (Zhang et al., NeurIPS 2019) around any optimizer; torch has no class for it.

    Slow weights start as the parameters at construction (the weights before the first update).
    After every ``k``-th update: ``slow += alpha·(fast - slow); fast = slow``. The inner optimizer's
    state (moments, step count) is untouched by a sync, as in tfa's ``Lookahead``.

    Parameters
    ----------
    optimizer : the inner ("fast") optimizer; schedulers attach to it, not to this wrapper.
    k : sync period (official 6).
    alpha : slow step size (official 0.5).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5):
        if k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead needs k >= 1 and 0 < alpha <= 1; got k={k}, alpha={alpha}")
        self.optimizer = optimizer
        self.k = int(k)
        self.alpha = float(alpha)
        self.updates = 0
        self.slow = [p.detach().clone() for p in self._params()]

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> bool:
        """One inner update, then a sync if this is the k-th. Returns whether a sync happened."""
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.k:
            return False
        for fast, slow in zip(self._params(), self.slow):
            slow.add_(fast - slow, alpha=self.alpha)
            fast.copy_(slow)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "slow": [s.clone() for s in self.slow],
                "updates": self.updates, "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if len(state["slow"]) != len(self.slow):
            raise ValueError(f"Lookahead state has {len(state['slow'])} slow tensors, expected {len(self.slow)}")
        with torch.no_grad():
            for s, saved in zip(self.slow, state["slow"]):
                s.copy_(saved)
        self.updates = int(state["updates"])


def make_swa(model: nn.Module) -> AveragedModel:
    """Equal-weight running average of ``model`` (tfa SWA with ``average_period=1``)."""
    return AveragedModel(model)


def swa_should_update(update: int, total_steps: int, start_fraction: float) -> bool:
    """tfa SWA takes a snapshot after update ``t`` (1-based) when ``t > int(start_fraction·T)``."""
    return update > int(start_fraction * total_steps)
