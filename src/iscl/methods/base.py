"""The contract every denoising method of iscl follows, so that a benchmark can treat them alike.

A method is trained (or not) with :meth:`Method.fit` on whatever it needs — unpaired clean and noisy
pools, the noisy pool alone, or (noisy, clean) pairs — under a budget of ``steps`` × ``batch_size``
patches, and then restores one image at a time with :meth:`Method.denoise`.

Images at this level are 2-D float32 arrays on [0, 1] (the simulated datasets' range); every learned
method maps them to the networks' [-1, 1] with ``2·v - 1`` and back.

Example
-------
>>> from iscl.methods.registry import get_method
>>> m = get_method("blindspot", network={"generator_width": 4})
>>> m.fit(clean=None, noisy=noisy_images, pairs=None, steps=10, batch_size=4, seed=0)  # doctest: +SKIP
>>> restored = m.denoise(noisy_images[0])                                            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from iscl.data.finite import require_finite
from iscl.nn.layers import truncated_normal_init_

__all__ = [
    "Method",
    "MethodBase",
    "NEEDS",
    "check_image",
    "check_images",
    "to_network",
    "from_network",
    "init_weights_",
    "predict_image",
    "resolve_config",
]

#: What a method may ask :meth:`Method.fit` for.
NEEDS = frozenset({"clean", "noisy", "pairs"})


@runtime_checkable
class Method(Protocol):
    """A denoiser with a uniform training and prediction interface.

    Attributes
    ----------
    name : str
        The method's row name in tables (e.g. ``"iscl"``, ``"bm3d"``).
    needs : frozenset of str
        Which of ``clean``, ``noisy``, ``pairs`` :meth:`fit` uses. ``pairs`` means paired training
        data (simulated data only); a method that needs nothing (BM3D, identity) has an empty set.
    """

    name: str
    needs: frozenset[str]

    def fit(self, *, clean: Sequence[np.ndarray] | None, noisy: Sequence[np.ndarray],
            pairs: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None, steps: int, batch_size: int,
            seed: int, device: str = "cpu", progress: bool = False) -> None:
        """Train on the given data with a budget of ``steps`` updates of ``batch_size`` patches.

        Parameters
        ----------
        clean : list of (H_i, W_i) float32 arrays on [0, 1], or None
            Clean training images; unpaired with ``noisy`` (other scenes).
        noisy : list of (H_i, W_i) float32 arrays on [0, 1]
            Noisy training images.
        pairs : (noisy, clean) lists of equal length with matching shapes, or None
            Paired training images (the same scene with and without noise).
        steps, batch_size : int
            The training budget; methods that do not learn ignore it.
        seed : int
            Seeds every random choice (initialisation, patch order, masks).
        device : str
            Torch device.
        progress : bool
            Show a progress bar.
        """
        ...

    def denoise(self, image: np.ndarray) -> np.ndarray:
        """Restore one (H, W) float32 image on [0, 1]; returns float32 (H, W) in the same units."""
        ...


class MethodBase:
    """Shared plumbing: input checks, the loss history and the training time.

    Subclasses set ``name`` and ``needs`` and implement :meth:`_fit` and :meth:`_denoise`.

    A learned method's training loop calls :meth:`_after_step` after every update; that keeps the
    step's seconds in the history and, at the wall-clock ``marks`` given to :meth:`fit`, a copy of the
    predicting state (:meth:`snapshot`), which :meth:`use_snapshot` puts back (a quality-vs-time curve
    from one run).

    Attributes
    ----------
    history : list of dict
        One record per training step (loss terms, learning rate, seconds); empty for methods without
        training.
    train_seconds : float
        Wall time of the last :meth:`fit`.
    snapshots : dict of float to state
        Predicting state at each mark (seconds since :meth:`fit` started) that training passed.
    """

    name: str = "method"
    needs: frozenset[str] = frozenset()
    #: ``_fit`` takes ``time_budget`` itself (ISCL's trainer fixes T from its first steps)
    budgets_itself: bool = False

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.fitted = False
        self.snapshots: dict[float, Any] = {}
        self._marks: list[float] = []
        self._started = 0.0

    def fit(self, *, clean: Sequence[np.ndarray] | None = None, noisy: Sequence[np.ndarray],
            pairs: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None, steps: int = 1,
            batch_size: int = 1, seed: int = 0, device: str = "cpu", progress: bool = False,
            time_budget: float | None = None, marks: Sequence[float] = ()) -> None:
        """See :meth:`Method.fit`. Checks what this method needs, then trains and times it.

        ``time_budget`` (seconds) replaces ``steps``: a few steps are timed first and the method
        trains for as many as fit in the budget (its schedule follows that count). ``marks``:
        seconds (from the start of ``fit``) at which to keep a :meth:`snapshot`.
        """
        if int(steps) < 1 or int(batch_size) < 1:
            raise ValueError(f"{self.name}: steps and batch_size must be >= 1, got {steps} and {batch_size}")
        if "clean" in self.needs and not clean:
            raise ValueError(f"{self.name}: needs clean training images; got none (pass clean=[...])")
        if "noisy" in self.needs and not noisy:
            raise ValueError(f"{self.name}: needs noisy training images; got none (pass noisy=[...])")
        clean_l = check_images(clean, f"{self.name}: clean") if clean else None
        noisy_l = check_images(noisy, f"{self.name}: noisy") if noisy else []
        pairs_l = None
        if "pairs" in self.needs:
            if pairs is None:
                raise ValueError(f"{self.name}: needs paired (noisy, clean) training images; got pairs=None "
                                 "(only simulated data have pairs)")
            pn, pc = check_images(pairs[0], f"{self.name}: pairs[0]"), check_images(pairs[1], f"{self.name}: pairs[1]")
            if len(pn) != len(pc) or any(a.shape != b.shape for a, b in zip(pn, pc)):
                raise ValueError(f"{self.name}: pairs must hold noisy and clean lists of equal length and "
                                 f"matching shapes; got {len(pn)} and {len(pc)} images")
            pairs_l = (pn, pc)
        self.history, self.snapshots = [], {}
        self._marks = sorted(float(m) for m in marks)
        t0 = self._started = time.perf_counter()
        kw = dict(clean=clean_l, noisy=noisy_l, pairs=pairs_l, batch_size=int(batch_size), seed=int(seed),
                  device=device)
        if time_budget is not None and self.needs:
            if self.budgets_itself:
                kw["time_budget"] = float(time_budget)
            else:
                steps = self._steps_for_budget(float(time_budget), kw)
        self._fit(**kw, steps=int(steps), progress=progress)
        self.train_seconds = time.perf_counter() - t0
        self.fitted = True

    def _steps_for_budget(self, budget: float, kw: dict[str, Any]) -> int:
        """Time a short run (1 warm-up + 4 timed steps, then thrown away) and return the number of steps
        that, with a 3 % margin, fit in what is left of ``budget`` seconds."""
        marks, self._marks = self._marks, []
        self._fit(**kw, steps=5, progress=False)
        per_step = float(np.median([r["seconds"] for r in self.history[1:]]))
        self.history, self._marks = [], marks
        left = budget - (time.perf_counter() - self._started)
        steps = int(left / (per_step * 1.03))
        if steps < 1:
            raise ValueError(f"{self.name}: a time budget of {budget:g} s is too short (a step takes {per_step:.2f} s)")
        self.budget_plan = {"seconds": budget, "seconds_per_step": per_step, "steps": steps}
        return steps

    def _after_step(self, record: dict[str, float], step_started: float) -> None:
        """Log a step (with its seconds) and keep a snapshot at every mark training has passed."""
        now = time.perf_counter()
        record["seconds"] = now - step_started
        self.history.append(record)
        while self._marks and now - self._started >= self._marks[0]:
            self.snapshots[self._marks.pop(0)] = self.snapshot()

    def snapshot(self) -> Any:
        """A copy of what prediction uses now (a learned method overrides it)."""
        raise NotImplementedError(f"{self.name} keeps no snapshots")

    def use_snapshot(self, state: Any) -> None:
        """Predict with a state from :attr:`snapshots` from now on."""
        raise NotImplementedError(f"{self.name} keeps no snapshots")

    def denoise(self, image: np.ndarray) -> np.ndarray:
        """See :meth:`Method.denoise`."""
        a = check_image(image, f"{self.name}: denoise")
        if self.needs and not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before denoise()")
        out = np.asarray(self._denoise(a), dtype=np.float32)
        if out.shape != a.shape:  # a bug, not a user error
            raise RuntimeError(f"{self.name}: output shape {out.shape} differs from input {a.shape}")
        return out

    def _fit(self, *, clean: list[np.ndarray] | None, noisy: list[np.ndarray],
             pairs: tuple[list[np.ndarray], list[np.ndarray]] | None, steps: int, batch_size: int, seed: int,
             device: str, progress: bool) -> None:
        """Nothing to learn by default."""

    def _denoise(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable settings of this method (recorded next to its results)."""
        return {"name": self.name, "needs": sorted(self.needs)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate one image: 2-D, real, finite, at least 4×4; returns it as float32 (no copy if possible)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (H, W) image, got shape {a.shape}")
    if a.dtype.kind not in "uif":
        raise TypeError(f"{what}: expected a real-valued image, got dtype {a.dtype}")
    if min(a.shape) < 4:
        raise ValueError(f"{what}: image of {a.shape[0]}x{a.shape[1]} pixels is too small (at least 4x4)")
    a = a.astype(np.float32, copy=False)
    require_finite(a, what)
    return a


def check_images(images: Sequence[np.ndarray] | np.ndarray, what: str) -> list[np.ndarray]:
    """A list of checked 2-D float32 images from a sequence or an (N, H, W) stack."""
    items = list(images) if not isinstance(images, np.ndarray) or images.ndim == 3 else [images]
    if not items:
        raise ValueError(f"{what}: no images given")
    return [check_image(a, f"{what}[{i}]") for i, a in enumerate(items)]


def to_network(image: np.ndarray) -> np.ndarray:
    """[0, 1] → [-1, 1] (float32), the networks' range; values outside [0, 1] are not clipped."""
    return (np.asarray(image, dtype=np.float32) * 2.0 - 1.0).astype(np.float32, copy=False)


def from_network(values: np.ndarray) -> np.ndarray:
    """[-1, 1] → [0, 1] (float32), the inverse of :func:`to_network`."""
    return ((np.asarray(values, dtype=np.float32) + 1.0) * 0.5).astype(np.float32, copy=False)


def init_weights_(module: nn.Module, std: float, generator: torch.Generator) -> nn.Module:
    """ISCL's initialisation (truncated normal, std ``std``, cut at 2 std; zero biases) from a seeded generator.

    Every trained method uses it, so no method starts from a luckier initialisation than the others.
    """
    return truncated_normal_init_(module, std, generator)


@torch.no_grad()
def predict_image(net: nn.Module, image: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Run an image-to-image network on one [0, 1] image: one image per call (BIN uses its statistics)."""
    x = torch.from_numpy(to_network(image))[None, None].to(device)
    return from_network(net(x)[0, 0].float().cpu().numpy())


def resolve_config(config: Any = "cpu", network: dict[str, Any] | None = None, **train: Any) -> Any:
    """An ISCL :class:`~iscl.config.Config` from a preset name or a Config, with overrides.

    Every learned baseline takes its architecture (``network``: generator width and depth,
    discriminator width) and optimiser settings (``train``: lr, decay, betas, eps, patch size,
    augmentation, init std) from the same Config as ISCL, so the comparison changes the method and
    nothing else. Images are on [0, 1] here, so the normalization is fixed to that window (with the
    preset's headroom).

    Parameters
    ----------
    config : str or Config
        Preset name (``"cpu"``, ``"paper"``) or a Config (copied, not modified).
    network : dict, optional
        Overrides of ``config.network`` fields, e.g. ``{"generator_width": 4}``.
    **train
        Overrides of ``config.train`` fields, e.g. ``steps=100``.
    """
    from iscl.config import Config, preset

    base = preset(config) if isinstance(config, str) else config
    if not isinstance(base, Config):
        raise TypeError(f"config must be a preset name or an iscl.config.Config, got {type(base).__name__}")
    d = base.model_dump()
    d["network"].update(network or {})
    d["train"].update(train)
    # [0, 1] data: a fixed window; the preset's headroom (how far inside (-1, 1) the window's ends map) is kept
    d["normalization"] = {"mode": "fixed", "low": 0.0, "high": 1.0, "headroom": base.normalization.headroom}
    return Config.model_validate(d)


def config_summary(method: Any) -> dict[str, Any] | str:
    """The architecture and optimiser settings a learned method ran with (for result records)."""
    cfg = getattr(method, "resolved", None)
    if cfg is None:
        c = getattr(method, "config", None)
        return c if isinstance(c, str) or c is None else c.model_dump(mode="json")
    return {"preset": cfg.preset, "network": cfg.network.model_dump(mode="json"),
            "train": cfg.train.model_dump(mode="json")}


class SingleGeneratorMethod(MethodBase):
    """Base of the methods that train one ISCL generator with a per-batch loss (blind-spot, supervised).

    The generator, its initialisation, RAdam with the linear decay and SWA of the weights are exactly
    those of ISCL's F (method.md §3), so these baselines differ from ISCL only in their training signal.
    Subclasses implement :meth:`_batches` (the data stream) and :meth:`_loss`.
    """

    def __init__(self, config: Any = "cpu", *, network: dict[str, Any] | None = None, weights: str = "swa",
                 name: str = "generator"):
        super().__init__()
        if weights not in ("swa", "raw"):
            raise ValueError(f"weights must be 'swa' or 'raw', got {weights!r}")
        self.name = name
        self.config = config
        self.network_overrides = dict(network or {})
        self.weights = weights
        self.net: nn.Module | None = None
        self.device = torch.device("cpu")

    def _batches(self, cfg: Any, clean: list[np.ndarray] | None, noisy: list[np.ndarray],
                 pairs: tuple[list[np.ndarray], list[np.ndarray]] | None) -> Any:  # pragma: no cover - abstract
        """An object whose ``next(batch_size)`` returns the tensors :meth:`_loss` takes."""
        raise NotImplementedError

    def _loss(self, net: nn.Module, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit(self, *, clean: list[np.ndarray] | None, noisy: list[np.ndarray],
             pairs: tuple[list[np.ndarray], list[np.ndarray]] | None, steps: int, batch_size: int, seed: int,
             device: str, progress: bool) -> None:
        from tqdm.auto import tqdm

        from iscl.engine.optim import make_radam, make_scheduler, make_swa, swa_should_update
        from iscl.nn import clamp_rho_
        from iscl.nn.build import make_generator

        cfg = resolve_config(self.config, self.network_overrides, steps=steps, batch_size=batch_size, seed=seed)
        self.resolved = cfg
        t, n = cfg.train, cfg.network
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(t.seed)
        net = init_weights_(make_generator(n), t.init_std, gen)
        net.to(self.device).train()
        opt = make_radam(net.parameters(), t.lr, t.betas, t.eps)
        sched = make_scheduler(opt, t.steps, t.lr, t.min_lr, kind=t.schedule, warmup=t.warmup_steps)
        swa = make_swa(net)
        self._live = (net, swa, t)
        self.optimizers = {"F": opt}  # kept so that tests can check it is ISCL's (RAdam, same settings)
        stream = self._batches(cfg, clean, noisy, pairs)
        for step in tqdm(range(1, t.steps + 1), disable=not progress, unit="step", desc=self.name):
            started = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            batch = [b.to(self.device) for b in stream.next(t.batch_size)]
            loss = self._loss(net, batch)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"{self.name}: non-finite loss at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            clamp_rho_(net)
            sched.step()
            if swa_should_update(step, t.steps, t.swa_start):
                swa.update_parameters(net)
            self._after_step({"step": step, "loss": float(loss.detach()), "lr": lr}, started)
        self.net = self._predicting(net, swa).eval()
        self.swa_snapshots = int(swa.n_averaged.item())

    def _predicting(self, net: nn.Module, swa: Any) -> nn.Module:
        """The network that predicts: the SWA average when asked for and it has snapshots, else ``net``."""
        return swa.module if self.weights == "swa" and int(swa.n_averaged.item()) > 0 else net

    def snapshot(self) -> nn.Module:
        net, swa, _ = self._live
        return copy.deepcopy(self._predicting(net, swa)).eval()

    def use_snapshot(self, state: nn.Module) -> None:
        self.net = state

    def _denoise(self, image: np.ndarray) -> np.ndarray:
        return predict_image(self.net, image, self.device)
