"""The CycleGAN ablation of ISCL: F, G, D_X, D_Y with ISCL's losses and optimisers, but no H.

This is ISCL with the noise extractor H removed, and with it the boosting term of the D step and the
bypass term of the F/G step (the paper's ablation, Lee & Jeong 2021, Table IV "CycleGAN"). Everything
else is ISCL's: the same networks (:class:`~iscl.nn.Generator`, :class:`~iscl.nn.PatchDiscriminator`),
hinge losses, λ on the cycle loss, RAdam with the linear decay, Lookahead on D, SWA on F and G, the
D → F/G order, and the unpaired dihedral patch streams. The prediction is F(x) (SWA-averaged F, like
ISCL's default).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from iscl import losses
from iscl.config import Config
from iscl.data.patches import PatchSampler
from iscl.engine.iscl import frozen
from iscl.engine.optim import Lookahead, make_radam, make_scheduler, make_swa, swa_should_update
from iscl.methods.base import MethodBase, config_summary, init_weights_, predict_image, resolve_config, to_network
from iscl.nn import clamp_rho_
from iscl.nn.build import make_discriminator, make_generator

__all__ = ["CycleGAN"]


class CycleGAN(MethodBase):
    """ISCL without H, boosting and bypass; predicts F(x).

    Parameters
    ----------
    config : str or Config
        Preset name or Config giving the architecture (generator and discriminator widths) and the
        optimiser settings; ``fit``'s steps, batch size and seed override it.
    network : dict, optional
        Overrides of ``config.network`` (e.g. ``{"generator_width": 4}`` in tests).
    weights : ``"swa"`` or ``"raw"``
        Which F predicts (SWA average when it has snapshots).
    name : str
        Row name.
    """

    needs = frozenset({"clean", "noisy"})

    def __init__(self, config: str | Config = "cpu", *, network: dict[str, Any] | None = None,
                 weights: str = "swa", name: str = "cyclegan"):
        super().__init__()
        if weights not in ("swa", "raw"):
            raise ValueError(f"weights must be 'swa' or 'raw', got {weights!r}")
        self.name = name
        self.config = config
        self.network_overrides = dict(network or {})
        self.weights = weights
        self.F: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def _fit(self, *, clean: list[np.ndarray] | None, noisy: list[np.ndarray], pairs: Any, steps: int,
             batch_size: int, seed: int, device: str, progress: bool) -> None:
        cfg = resolve_config(self.config, self.network_overrides, steps=steps, batch_size=batch_size, seed=seed)
        self.resolved = cfg
        t, net = cfg.train, cfg.network
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(t.seed)
        F = init_weights_(make_generator(net), t.init_std, gen)
        G = init_weights_(make_generator(net, "G"), t.init_std, gen)
        D_X = init_weights_(make_discriminator(net), t.init_std, gen)
        D_Y = init_weights_(make_discriminator(net), t.init_std, gen)
        for m in (F, G, D_X, D_Y):
            m.to(self.device).train()
        opt_fg = make_radam([*F.parameters(), *G.parameters()], t.lr, t.betas, t.eps)
        opt_d = Lookahead(make_radam([*D_X.parameters(), *D_Y.parameters()], t.lr, t.betas, t.eps),
                          t.lookahead_k, t.lookahead_alpha)
        kw = {"kind": t.schedule, "warmup": t.warmup_steps}
        sched_fg = make_scheduler(opt_fg, t.steps, t.lr, t.min_lr, **kw)
        sched_d = make_scheduler(opt_d.optimizer, t.steps, t.lr, t.min_lr, **kw)
        swa_F = make_swa(F)
        self._live = (F, swa_F)
        self.optimizers = {"FG": opt_fg, "D": opt_d}  # kept so that tests can check they are ISCL's
        # the same patch streams as ISCL's Trainer (stream 0 = clean, 1 = noisy)
        clean_s = PatchSampler([to_network(a) for a in clean or []], t.patch_size, t.augment, seed=t.seed, stream=0)
        noisy_s = PatchSampler([to_network(a) for a in noisy], t.patch_size, t.augment, seed=t.seed, stream=1)
        for step in tqdm(range(1, t.steps + 1), disable=not progress, unit="step", desc=self.name):
            started = time.perf_counter()
            x = torch.from_numpy(noisy_s.next_batch(t.batch_size)).to(self.device)
            y = torch.from_numpy(clean_s.next_batch(t.batch_size)).to(self.device)
            lr = opt_fg.param_groups[0]["lr"]
            # D step: hinge on both domains, generators without gradients
            with torch.no_grad():
                f_x, g_y = F(x), G(y)
            d_noisy = losses.hinge_discriminator(D_X(x), D_X(g_y))
            d_clean = losses.hinge_discriminator(D_Y(y), D_Y(f_x))
            d_total = d_noisy + d_clean
            opt_d.zero_grad()
            d_total.backward()
            opt_d.step()
            clamp_rho_(D_X)
            clamp_rho_(D_Y)
            sched_d.step()
            # F/G step: adversarial + λ·cycle; D in the graph but frozen
            with frozen(D_X, D_Y):
                f_x, g_y = F(x), G(y)
                adv_clean = losses.adversarial_generator(D_Y(f_x))
                adv_noisy = losses.adversarial_generator(D_X(g_y))
                cycle = losses.cycle_consistency(x, G(f_x), y, F(g_y))
                g_total = adv_clean + adv_noisy + t.cycle_weight * cycle
                opt_fg.zero_grad()
                g_total.backward()
            opt_fg.step()
            clamp_rho_(F)
            clamp_rho_(G)
            sched_fg.step()
            if swa_should_update(step, t.steps, t.swa_start):
                swa_F.update_parameters(F)
            record = {"step": step, "d_noisy": _f(d_noisy), "d_clean": _f(d_clean), "d_total": _f(d_total),
                      "g_adv_clean": _f(adv_clean), "g_adv_noisy": _f(adv_noisy), "g_cycle": _f(cycle),
                      "g_total": _f(g_total), "lr": lr}
            if not np.isfinite(record["d_total"]) or not np.isfinite(record["g_total"]):
                raise FloatingPointError(f"{self.name}: non-finite loss at step {step}: {record}")
            self._after_step(record, started)
        self.F = self._predicting(F, swa_F).eval()
        self.swa_snapshots = int(swa_F.n_averaged.item())

    def _predicting(self, F: torch.nn.Module, swa_F: Any) -> torch.nn.Module:
        return swa_F.module if self.weights == "swa" and int(swa_F.n_averaged.item()) > 0 else F

    def snapshot(self) -> torch.nn.Module:
        return copy.deepcopy(self._predicting(*self._live)).eval()

    def use_snapshot(self, state: torch.nn.Module) -> None:
        self.F = state

    def _denoise(self, image: np.ndarray) -> np.ndarray:
        return predict_image(self.F, image, self.device)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(prediction="F(x)", weights=self.weights, config=config_summary(self))
        return d


def _f(t: torch.Tensor) -> float:
    return float(t.detach())
