"""Supervised upper bound: ISCL's generator trained with L1 on (noisy, clean) pairs.

Only simulated data have pairs, so this row exists only there. It uses the same generator,
initialisation, optimiser, SWA and training budget as ISCL's F; only the training signal differs
(a paired L1 loss instead of ISCL's unpaired losses). The pairs come from the *training* split — a
benchmark must never pass test images here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from iscl.data.patches import PatchSampler
from iscl.methods.base import SingleGeneratorMethod, config_summary, to_network

__all__ = ["Supervised"]


class _PairedStream:
    """Aligned patches of two same-shaped image lists.

    Two :class:`~iscl.data.patches.PatchSampler` with the same seed and stream over images of the same
    shapes build the same patch index and draw the same permutation, so batch ``i`` of both is the same
    scene, the same crop and the same dihedral transform.
    """

    def __init__(self, noisy: list[np.ndarray], clean: list[np.ndarray], patch: int, augment: bool | str, seed: int):
        self.noisy = PatchSampler(noisy, patch, augment, seed=seed, stream=3)
        self.clean = PatchSampler(clean, patch, augment, seed=seed, stream=3)

    def next(self, batch_size: int) -> list[torch.Tensor]:
        x = self.noisy.next_batch(batch_size)
        y = self.clean.next_batch(batch_size)
        return [torch.from_numpy(x), torch.from_numpy(y)]


class Supervised(SingleGeneratorMethod):
    """The ISCL generator trained on pairs with L1 (``mean|N(x) - y|``).

    Parameters
    ----------
    config : str or Config
        Preset or Config for the architecture and the optimiser (as ISCL).
    network : dict, optional
        Overrides of ``config.network``.
    weights : ``"swa"`` or ``"raw"``
        Predict with the SWA-averaged or the last weights.
    name : str
        Row name.
    """

    needs = frozenset({"pairs"})

    def __init__(self, config: Any = "cpu", *, network: dict[str, Any] | None = None, weights: str = "swa",
                 name: str = "supervised"):
        super().__init__(config, network=network, weights=weights, name=name)

    def _batches(self, cfg: Any, clean: Any, noisy: Any, pairs: tuple[list[np.ndarray], list[np.ndarray]]):
        t = cfg.train
        pn, pc = pairs
        return _PairedStream([to_network(a) for a in pn], [to_network(a) for a in pc], t.patch_size, t.augment,
                             t.seed)

    def _loss(self, net: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (net(x) - y).abs().mean()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(prediction="N(x)", loss="L1 on (noisy, clean) pairs", weights=self.weights,
                 config=config_summary(self))
        return d
