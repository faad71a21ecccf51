"""Method names → factories, and the ISCL adapter to the :class:`~iscl.methods.base.Method` contract.

Rows of a benchmark table are *method names*. Some names are views of one trained model: ``iscl``,
``iscl-F``, ``iscl-bypass`` and ``iscl-raw`` all come from a single ISCL training run, predicted four
ways. :func:`family` tells which names share a training run, and :func:`view` derives a row from the
trained family member, so a benchmark trains once and predicts many times.

Example
-------
>>> from iscl.methods.registry import get_method, METHODS
>>> sorted(METHODS)[:3]
['blindspot', 'bm3d', 'bm3d-white']
>>> m = get_method("iscl", network={"generator_width": 4})
>>> m.fit(clean=clean, noisy=noisy, pairs=None, steps=5, batch_size=2, seed=0)        # doctest: +SKIP
>>> get_method("iscl-F").needs == m.needs
True
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iscl.methods.base import MethodBase, config_summary, resolve_config
from iscl.training.runlog import LOG_FILE, read_log

__all__ = ["ISCLMethod", "MethodSpec", "METHODS", "DEFAULT_METHODS", "get_method", "family", "view",
           "method_names"]


class ISCLMethod(MethodBase):
    """ISCL (:func:`iscl.api.train`) behind the common contract, predicting one of its outputs.

    Parameters
    ----------
    output : ``"denoised"``, ``"generator"`` or ``"bypass"``
        ``denoised`` = clip(γ F(x) + (1-γ)(x - H(x))) (the method's prediction, method.md §4);
        ``generator`` = F(x); ``bypass`` = x - H(x).
    weights : ``"swa"`` or ``"raw"``
        SWA-averaged F (iscl's default) or the raw F (what the official numbers come from).
    config : str or Config
        Preset (default ``"cpu"``) or Config; ``fit``'s steps, batch size and seed override it, and the
        normalization is fixed to [0, 1].
    network : dict, optional
        Overrides of ``config.network``.
    run_dir : path, optional
        Where training writes ``log.jsonl`` (every loss term per step) and ``checkpoint/``; by default a
        temporary directory that is deleted after reading the log into :attr:`history`.
    name : str
        Row name.
    """

    needs = frozenset({"clean", "noisy"})
    budgets_itself = True

    def __init__(self, output: str = "denoised", weights: str = "swa", *, config: Any = "cpu",
                 network: dict[str, Any] | None = None, run_dir: str | os.PathLike | None = None,
                 name: str = "iscl"):
        super().__init__()
        if output not in ("denoised", "generator", "bypass"):
            raise ValueError(f"output must be 'denoised', 'generator' or 'bypass', got {output!r}")
        if weights not in ("swa", "raw"):
            raise ValueError(f"weights must be 'swa' or 'raw', got {weights!r}")
        self.output = output
        self.weights = weights
        self.config = config
        self.network_overrides = dict(network or {})
        self.run_dir = run_dir
        self.name = name
        self.model: Any = None

    def _fit(self, *, clean: list[np.ndarray] | None, noisy: list[np.ndarray], pairs: Any, steps: int,
             batch_size: int, seed: int, device: str, progress: bool, time_budget: float | None = None) -> None:
        from iscl.api import train

        cfg = resolve_config(self.config, self.network_overrides, steps=steps, batch_size=batch_size, seed=seed,
                             time_budget=time_budget)
        self.resolved = cfg

        def on_step(trainer: Any, record: dict[str, Any]) -> None:
            self._trainer = trainer
            self._after_step(dict(record), time.perf_counter() - record.get("seconds", 0.0))

        with tempfile.TemporaryDirectory(prefix="iscl-run-") as tmp:
            run_dir = Path(self.run_dir) if self.run_dir is not None else Path(tmp)
            # no TensorBoard here: benchmark cells are compared on time, and nobody watches a temporary run
            self.model = train(clean, noisy, cfg, run_dir=run_dir, device=device, progress=progress, on_step=on_step,
                               tensorboard=False)
            self.history = read_log(run_dir / LOG_FILE)
        self.model.trainer = self._trainer = None  # the patch pools and optimiser state are not needed now

    def snapshot(self) -> dict[str, Any]:
        """The prediction weights (SWA and raw F, H) and the current prediction settings."""
        t = self._trainer
        return {"weights": {k: v.detach().clone() for k, v in t.prediction_weights().items()},
                "config": t._config_to_save().model_copy(deep=True), "info": t.info()}

    def use_snapshot(self, state: dict[str, Any]) -> None:
        from iscl.api import Denoiser

        self.model = Denoiser.from_weights(state["config"], self.model.normalizer, state["weights"], state["info"],
                                           self.model.device)

    @classmethod
    def load(cls, path: str | os.PathLike, output: str = "denoised", weights: str = "swa", name: str = "iscl",
             device: str = "cpu") -> ISCLMethod:
        """A fitted ISCLMethod from a checkpoint (or run) directory written by training."""
        from iscl.api import load

        m = cls(output, weights, name=name)
        m.model = load(path, device=device)
        m.resolved = m.model.config
        m.fitted = True
        m.history = read_log(Path(path) / LOG_FILE)
        return m

    def view(self, output: str = "denoised", weights: str = "swa", name: str | None = None) -> ISCLMethod:
        """Another output of the same trained model (no retraining); shares the networks."""
        m = ISCLMethod(output, weights, config=self.config, network=self.network_overrides, run_dir=self.run_dir,
                       name=name or self.name)
        m.model, m.fitted, m.history, m.train_seconds = self.model, self.fitted, self.history, self.train_seconds
        m.resolved = getattr(self, "resolved", None)
        return m

    def _denoise(self, image: np.ndarray) -> np.ndarray:
        return self.model.denoise(image, output=self.output, weights=self.weights)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        pred = {"denoised": "clip(g F(x) + (1-g)(x - H(x)))", "generator": "F(x)", "bypass": "x - H(x)"}
        d.update(prediction=pred[self.output], weights=self.weights, config=config_summary(self))
        if self.model is not None:
            d["train_info"] = {k: v for k, v in self.model.info.items() if k != "patches_per_epoch"}
        return d


@dataclass(frozen=True)
class MethodSpec:
    """One row name: how to build it, which training run it belongs to, and what it needs.

    ``family`` names the training run (``iscl`` for all four ISCL rows); ``view_kwargs`` turn the
    trained family member into this row (see :func:`view`).
    """

    name: str
    family: str
    factory: Callable[..., Any]
    description: str
    needs: frozenset[str]
    view_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return bool(self.needs)


def _bm3d(noise: str, name: str) -> Callable[..., Any]:
    def make(**_: Any) -> Any:
        from iscl.methods.classical import BM3D

        return BM3D(noise=noise, name=name)

    return make


def _learned(cls_path: str, name: str) -> Callable[..., Any]:
    def make(**kwargs: Any) -> Any:
        module, cls = cls_path.rsplit(".", 1)
        import importlib

        return getattr(importlib.import_module(module), cls)(name=name, **kwargs)

    return make


def _iscl(name: str, output: str, weights: str) -> Callable[..., Any]:
    def make(**kwargs: Any) -> ISCLMethod:
        return ISCLMethod(output, weights, name=name, **kwargs)

    return make


def _identity(**_: Any) -> Any:
    from iscl.methods.classical import Identity

    return Identity()


_UNPAIRED = frozenset({"clean", "noisy"})
METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("noisy", "noisy", _identity, "the noisy input itself", frozenset()),
    MethodSpec("bm3d", "bm3d", _bm3d("psd", "bm3d"),
               "BM3D, correlated-noise mode, noise PSD estimated from each noisy image (flat blocks)", frozenset()),
    MethodSpec("bm3d-white", "bm3d-white", _bm3d("white", "bm3d-white"),
               "BM3D, white-noise mode, sigma estimated from each noisy image (MAD of Haar details)", frozenset()),
    MethodSpec("blindspot", "blindspot", _learned("iscl.methods.blindspot.BlindSpot", "blindspot"),
               "Noise2Void (n2v defaults): depth-2 U-Net, 0.198 % of pixels replaced by a random 11x11-window "
               "neighbour, MSE on them, Adam 4e-4, standardised noisy images", frozenset({"noisy"})),
    MethodSpec("cyclegan", "cyclegan", _learned("iscl.methods.cyclegan.CycleGAN", "cyclegan"),
               "ISCL without H, boosting and bypass (the paper's CycleGAN ablation); F(x)", _UNPAIRED),
    MethodSpec("iscl", "iscl", _iscl("iscl", "denoised", "swa"),
               "ISCL: clip(0.5 F(x) + 0.5 (x - H(x))), SWA-averaged F", _UNPAIRED,
               {"output": "denoised", "weights": "swa"}),
    MethodSpec("iscl-raw", "iscl", _iscl("iscl-raw", "denoised", "raw"),
               "ISCL prediction with the raw (non-averaged) F, as in the official code", _UNPAIRED,
               {"output": "denoised", "weights": "raw"}),
    MethodSpec("iscl-F", "iscl", _iscl("iscl-F", "generator", "swa"),
               "ISCL's generator alone: F(x) (SWA)", _UNPAIRED, {"output": "generator", "weights": "swa"}),
    MethodSpec("iscl-bypass", "iscl", _iscl("iscl-bypass", "bypass", "swa"),
               "ISCL's bypass alone: x - H(x)", _UNPAIRED, {"output": "bypass", "weights": "swa"}),
    MethodSpec("supervised", "supervised", _learned("iscl.methods.supervised.Supervised", "supervised"),
               "ISCL's generator trained with L1 on (noisy, clean) training pairs (upper bound)", frozenset({"pairs"})),
)}

#: The benchmark's default rows, in table order.
DEFAULT_METHODS: tuple[str, ...] = ("noisy", "bm3d", "blindspot", "cyclegan", "iscl", "iscl-raw", "iscl-F",
                                    "iscl-bypass", "supervised")


def method_names() -> list[str]:
    """All registered names, in table order (defaults first)."""
    return list(DEFAULT_METHODS) + [n for n in METHODS if n not in DEFAULT_METHODS]


def _spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(method_names())}") from None


def get_method(name: str, **kwargs: Any) -> Any:
    """Build a fresh method by name.

    ``kwargs`` go to the learned methods' constructors (``config``, ``network``; ISCL also ``run_dir``);
    BM3D and the identity ignore them.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones).
    BM3DUnavailableError
        ``bm3d`` rows when the optional package is missing (``pip install iscl[bm3d]``).
    """
    return _spec(name).factory(**kwargs)


def family(name: str) -> str:
    """The training run a row belongs to (``iscl-F`` → ``iscl``); rows of one family train once."""
    return _spec(name).family


def view(trained: Any, name: str) -> Any:
    """The row ``name`` from a trained member of its family (the member itself for one-row families)."""
    spec = _spec(name)
    if spec.view_kwargs:
        return trained.view(name=name, **spec.view_kwargs)
    return trained
