"""ISCL: five networks, the three sub-steps D → F/G → H, and the blended prediction (method.md §2–4)."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from iscl import losses
from iscl.config import NetworkConfig, TrainConfig
from iscl.engine.distributed import all_true
from iscl.engine.flat_noise import flat_block_noise
from iscl.engine.optim import (
    Lookahead,
    make_radam,
    make_scheduler,
    make_swa,
    set_total_steps,
    swa_should_update,
)
from iscl.engine.spectral_noise import NoiseSpectrum, spectral_noise
from iscl.nn import clamp_rho_
from iscl.nn.build import make_discriminator, make_extractor, make_generator
from iscl.nn.layers import truncated_normal_init_
from iscl.precision import autocast, check_precision, grad_scaler

__all__ = ["ISCLNetworks", "ISCL", "NonFiniteLossError", "blend"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; the message names the step and the term."""


class ISCLNetworks(nn.Module):
    """The five networks: F (noisy→clean), G (clean→noisy), H (noise extractor), D_X, D_Y.

    With ``generator`` given, all weights are re-drawn from it (truncated normal, std ``init_std``),
    so a seed fixes the initialisation without touching torch's global RNG: the layers' own default
    initialisation (which draws from the global RNG and is then overwritten) runs inside
    ``torch.random.fork_rng``, which puts the global CPU RNG state back afterwards. Without
    ``generator`` the weights are drawn from the global RNG.
    """

    def __init__(self, config: NetworkConfig | None = None, generator: torch.Generator | None = None,
                 init_std: float = 0.05):
        super().__init__()
        c = config or NetworkConfig()
        # the networks are built on the CPU, so only the CPU RNG is forked (devices=[]: no CUDA state touched)
        with torch.random.fork_rng(devices=[], enabled=generator is not None):
            self.F = make_generator(c)
            self.G = make_generator(c, "G")
            self.H = make_extractor(c)
            self.D_X = make_discriminator(c)
            self.D_Y = make_discriminator(c)
        for name in ("F", "G", "H", "D_X", "D_Y"):
            truncated_normal_init_(getattr(self, name), init_std, generator)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter of ``modules``.

    Gradients still flow *through* them to earlier networks, but no weight gradients are computed
    (about a third of the discriminators' backward cost in the F/G step).
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class DiscriminatorObjective(nn.Module):
    """The D step's loss terms in one module, so that DDP sees a single forward per step."""

    def __init__(self, D_X: nn.Module, D_Y: nn.Module):
        super().__init__()
        self.D_X, self.D_Y = D_X, D_Y

    def forward(self, x, y, f_x, g_y, pseudo_noisy, pseudo_clean):  # noqa: D102
        # .float(): under mixed precision the critics answer in bf16/fp16; the losses reduce in fp32
        D_X, D_Y = (lambda t: self.D_X(t).float()), (lambda t: self.D_Y(t).float())
        d_noisy = losses.hinge_discriminator(D_X(x), D_X(g_y))
        d_clean = losses.hinge_discriminator(D_Y(y), D_Y(f_x))
        boost = losses.boosting(D_X(pseudo_noisy), D_Y(pseudo_clean))
        return d_noisy, d_clean, boost


class GeneratorObjective(nn.Module):
    """The F/G step's loss terms. The critics are held in a tuple, not registered: they are not
    trained here (and DDP must not wait for their gradients)."""

    def __init__(self, F: nn.Module, G: nn.Module, D_X: nn.Module, D_Y: nn.Module, identity: bool = False,
                 lowpass_sigma: float | None = None, cycle_draw: bool = True):
        super().__init__()
        self.cycle_draw = cycle_draw  # False: G(F(x)) with z = 0 (a G with noise channels; not official)
        self.F, self.G = F, G
        self.critics = (D_X, D_Y)
        self.identity = identity  # also return |F(y) - y| (one more pass of F; not in the official method)
        self.lowpass_sigma = lowpass_sigma  # also return the tone term (not in the official method)

    def forward(self, x, y, h_x):  # noqa: D102
        D_X, D_Y = self.critics
        # .float(): fp32 losses under mixed precision (a no-op in fp32)
        F, G = (lambda t: self.F(t).float()), (lambda t: self.G(t).float())
        pseudo_clean = x - h_x
        pseudo_noisy = y + h_x
        f_x = F(x)
        g_y = G(y)
        f_pseudo_noisy = F(pseudo_noisy)
        x_cycled = G(f_x) if self.cycle_draw else self.G(f_x, draw=False).float()
        y_cycled = F(g_y)
        adv_clean = losses.adversarial_generator(D_Y(f_x).float())
        adv_noisy = losses.adversarial_generator(D_X(g_y).float())
        cycle = losses.cycle_consistency(x, x_cycled, y, y_cycled)
        bypass = losses.bypass_consistency(f_x, pseudo_clean, y, f_pseudo_noisy)
        identity = losses.identity(y, F(y)) if self.identity else None
        tone = None
        if self.lowpass_sigma is not None:
            tone = (losses.lowpass_fidelity(x, f_x, self.lowpass_sigma)
                    + losses.lowpass_fidelity(y, g_y, self.lowpass_sigma))
        return adv_noisy, adv_clean, cycle, bypass, identity, tone, f_x


class ExtractorObjective(nn.Module):
    """The H step's loss terms (two separate passes of H). The critics, used only by the adversarial options,
    are held in a tuple, not registered: they are not trained here."""

    def __init__(self, H: nn.Module, clean: bool = False, renoise: bool = False,
                 critics: tuple[nn.Module, nn.Module] | None = None, adversarial: bool = False,
                 transplant: bool = False):
        super().__init__()
        self.H = H
        self.clean = clean  # also return |H(y)| (one more pass of H; not in the official method)
        self.renoise = renoise  # also return |H(y + H(x)) - H(x)| (one more pass; not in the official method)
        self.critics = critics  # (D_X, D_Y), frozen by the caller
        self.adversarial = adversarial  # also return -D_Y(x - H(x)) (not in the official method)
        self.transplant = transplant  # also return -D_X(y + H(x)) (not in the official method)

    def forward(self, x, y, f_x, g_y, flat_noisy=None):  # noqa: D102 - flat_noisy: the flat-noise pair, or None
        h_x = self.H(x).float()
        pseudo = losses.pseudo_noise(h_x, x, f_x)
        consistency = losses.noise_consistency(self.H(g_y).float(), g_y, y)
        no_noise = losses.no_noise(self.H(y).float()) if self.clean else None
        renoise = None
        if self.renoise:
            n = h_x.detach()
            renoise = losses.renoise_consistency(self.H(y + n).float(), n)
        adversarial = transplant = None
        if self.adversarial or self.transplant:
            D_X, D_Y = self.critics
            if self.adversarial:
                adversarial = losses.adversarial_generator(D_Y(x - h_x).float())
            if self.transplant:
                transplant = losses.adversarial_generator(D_X(y + h_x).float())
        flat = None
        if flat_noisy is not None:  # y with flat-block noise laid on it: the noise is flat_noisy - y exactly
            flat = losses.noise_consistency(self.H(flat_noisy).float(), flat_noisy, y)
        return pseudo, consistency, no_noise, renoise, adversarial, transplant, flat


def blend(f: torch.Tensor | None, bypass: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """ISCL's prediction (method.md §4): ``clip(γ F(x) + (1-γ)(x - H(x)), -1, 1)``.

    ``f`` = F(x) and ``bypass`` = x - H(x), same shape, on [-1, 1] units. The one place the formula
    lives: whole-image, tiled and test-time-augmented prediction all call it. At γ = 0 the result is
    ``clip(x - H(x))`` whatever F says, so ``f`` may be ``None`` there (prediction then skips F).
    """
    if gamma == 0:
        return bypass.clamp(-1.0, 1.0)  # equal to the formula: 0·f + 1·b is b exactly (for finite f)
    if f is None:
        raise ValueError(f"blend needs F(x) for gamma {gamma}; only gamma 0 can do without it")
    return (gamma * f + (1.0 - gamma) * bypass).clamp_(-1.0, 1.0)


def _add_options(total: torch.Tensor, terms: dict[str, torch.Tensor],
                 options: tuple[tuple[str, torch.Tensor | None, float], ...]) -> torch.Tensor:
    """``total`` plus ``weight * value`` for every optional term that was computed (not None), in order; each
    such term is also logged in ``terms`` under its name. (The objectives return None for an option that is off.)"""
    for name, value, weight in options:
        if value is not None:
            total = total + weight * value
            terms[name] = value
    return total


def _advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Step an LR schedule; the decay follows the step count even when an update was skipped (a
    NaN batch, or an fp16 overflow the GradScaler skipped), for which torch would warn."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        scheduler.step()


class ISCL:
    """ISCL training state: networks, optimizers, LR schedules, Lookahead, SWA, and the step count.

    One :meth:`train_step` runs the D step, then the F/G step, then the H step, each with one
    optimizer update on the same batch, exactly in the official order.

    Parameters
    ----------
    network : architecture.
    train : schedule; ``train.steps`` is T for the LR decay and the SWA start.
    device : where the networks live.
    generator : seeded ``torch.Generator`` for the weight initialisation.
    distributed : wrap each sub-step's objective in ``DistributedDataParallel`` (needs an initialised
        process group, see :mod:`iscl.engine.distributed`).

    ``train.precision`` runs every forward pass under autocast (weights, optimizer state, BIN
    statistics and losses stay fp32; fp16 adds a ``GradScaler``). ``train.channels_last`` stores the
    networks' weights and activations in NHWC. ``train.compile`` compiles each sub-step objective with
    ``torch.compile`` (the first steps are slow while it compiles).
    """

    def __init__(self, network: NetworkConfig, train: TrainConfig, device: str | torch.device = "cpu",
                 generator: torch.Generator | None = None, distributed: bool = False):
        self.train_config = train
        self.device = torch.device(device)
        self.distributed = distributed
        check_precision(train.precision, self.device)
        self.nets = ISCLNetworks(network, generator, train.init_std).to(self.device)
        if train.channels_last:
            self.nets.to(memory_format=torch.channels_last)
        self.scaler = grad_scaler(train.precision, self.device)
        n = self.nets
        objectives = (DiscriminatorObjective(n.D_X, n.D_Y),
                      GeneratorObjective(n.F, n.G, n.D_X, n.D_Y, identity=train.identity_weight > 0,
                                         lowpass_sigma=train.lowpass_sigma if train.lowpass_weight > 0 else None,
                                         cycle_draw=not (train.cycle_without_draw
                                                         and network.noise_generator_channels > 0)),
                      ExtractorObjective(n.H, clean=train.extractor_identity_weight > 0,
                                         renoise=train.extractor_renoise_weight > 0, critics=(n.D_X, n.D_Y),
                                         adversarial=train.extractor_adversarial_weight > 0,
                                         transplant=train.extractor_transplant_weight > 0))
        if distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # no buffer syncing (BIN has none); newer torch renamed broadcast_buffers
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else {"broadcast_buffers": False})
            # DDP broadcasts rank 0's weights at construction, so all ranks start equal
            objectives = tuple(DDP(o, device_ids=ids, **no_sync) for o in objectives)
        if train.compile:
            objectives = tuple(torch.compile(o) for o in objectives)
        self.d_objective, self.fg_objective, self.h_objective = objectives
        t = train
        self.opt_fg = make_radam([*n.F.parameters(), *n.G.parameters()], t.lr, t.betas, t.eps)
        d_lr = t.lr * t.d_lr_scale
        self.opt_d = Lookahead(make_radam([*n.D_X.parameters(), *n.D_Y.parameters()], d_lr, t.betas, t.eps),
                               t.lookahead_k, t.lookahead_alpha)
        self.opt_h = Lookahead(make_radam(n.H.parameters(), t.lr, t.betas, t.eps), t.lookahead_k, t.lookahead_alpha)
        kw = {"kind": t.schedule, "warmup": t.warmup_steps}
        self.sched_fg = make_scheduler(self.opt_fg, t.steps, t.lr, t.min_lr, **kw)
        self.sched_d = make_scheduler(self.opt_d.optimizer, t.steps, d_lr, t.min_lr * t.d_lr_scale, **kw)
        self.sched_h = make_scheduler(self.opt_h.optimizer, t.steps, t.lr, t.min_lr, **kw)
        self.swa_F = make_swa(n.F)
        self.swa_G = make_swa(n.G)
        self.step = 0  # completed training steps
        self.skipped: list[str] = []  # sub-steps skipped in the current step (nonfinite="skip")
        self._h_cache: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # (x, H(x)) of d_step
        # the flat-noise term's running noise spectrum (sources "spectrum", "oriented"); per process under DDP
        src = train.extractor_flat_noise_source
        self.noise_spectrum = (NoiseSpectrum() if src == "spectrum" else
                               NoiseSpectrum(momentum=None, oriented=train.augment == "dihedral") if src == "oriented"
                               else None)

    # ------------------------------------------------------------------ sub-steps
    def d_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hinge loss for D_X and D_Y plus boosting; F, G, H are evaluated without gradients."""
        n = self.nets
        with self._autocast():
            with torch.no_grad():
                f_x = n.F(x)
                g_y = n.G(y)
                h_x = n.H(x)
                pseudo_clean = x - h_x
                pseudo_noisy = y + h_x
            # H is not updated before the F/G step, which needs H(x) without gradient too: keep it
            self._h_cache = (x, h_x)
            d_noisy, d_clean, boost = self.d_objective(x, y, f_x, g_y, pseudo_noisy, pseudo_clean)
        total = d_noisy + d_clean + boost
        gnorm = self._update("d", total, dict(d_noisy=d_noisy, d_clean=d_clean, d_boosting=boost), self.opt_d,
                             [*n.D_X.parameters(), *n.D_Y.parameters()])
        clamp_rho_(n.D_X)
        clamp_rho_(n.D_Y)
        _advance(self.sched_d)
        return {"d_noisy": d_noisy, "d_clean": d_clean, "d_boosting": boost, "d_total": total, "d_grad_norm": gnorm}

    def fg_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adversarial + λ (cycle + bypass) for F and G; D is in the graph but frozen, H has no grad."""
        n = self.nets
        with frozen(n.D_X, n.D_Y):
            with self._autocast():
                cached_x, h_x = self._h_cache
                self._h_cache = (None, None)
                if cached_x is not x:  # called on its own, not right after d_step on this batch
                    with torch.no_grad():
                        h_x = n.H(x)
                adv_noisy, adv_clean, cycle, bypass, identity, tone, f_x = self.fg_objective(x, y, h_x.float())
            t = self.train_config
            terms = dict(g_adv_noisy=adv_noisy, g_adv_clean=adv_clean, g_cycle=cycle, g_bypass=bypass)
            consistency = _add_options(cycle + bypass, terms, (("g_identity", identity, t.identity_weight),
                                                               ("g_tone", tone, t.lowpass_weight)))
            total = adv_noisy + adv_clean + t.cycle_weight * consistency
            gnorm = self._update("fg", total, terms, self.opt_fg, [*n.F.parameters(), *n.G.parameters()])
        clamp_rho_(n.F)
        clamp_rho_(n.G)
        _advance(self.sched_fg)
        if swa_should_update(self.step + 1, self.train_config.steps, self.train_config.swa_start):
            self.swa_F.update_parameters(n.F)
            self.swa_G.update_parameters(n.G)
        return {**terms, "g_total": total, "fg_grad_norm": gnorm, "f_std": f_x.detach().std(), "x_std": x.std()}

    def h_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pseudo-noise label + noise consistency for H, with the just-updated F and G (no grad); with the
        adversarial options D is in the graph but frozen."""
        n = self.nets
        with frozen(n.D_X, n.D_Y), self._autocast():
            with torch.no_grad():
                f_x = n.F(x).float()
                g_y = n.G(y).float()
            flat_noisy = self._flat_noisy(x, y) if self.train_config.extractor_flat_noise_weight > 0 else None
            pseudo, consistency, no_noise, renoise, adversarial, transplant, flat = self.h_objective(
                x, y, f_x, g_y, flat_noisy)
        t = self.train_config
        terms = dict(h_pseudo_noise=pseudo, h_noise_consistency=consistency)
        total = _add_options(t.pseudo_noise_weight * pseudo + t.noise_consistency_weight * consistency, terms,
                             (("h_no_noise", no_noise, t.extractor_identity_weight),
                              ("h_renoise", renoise, t.extractor_renoise_weight),
                              ("h_adv_clean", adversarial, t.extractor_adversarial_weight),
                              ("h_adv_noisy", transplant, t.extractor_transplant_weight),
                              ("h_flat_noise", flat, t.extractor_flat_noise_weight)))
        gnorm = self._update("h", total, terms, self.opt_h, list(n.H.parameters()))
        clamp_rho_(n.H)
        _advance(self.sched_h)
        return {**terms, "h_total": total, "h_grad_norm": gnorm}

    def _step_seed(self, stream: int = 0) -> int:
        """A seed for this step's random draws (G's input, the flat-noise tiles; one ``stream`` each): a function
        of the run's seed and the step, so a resumed run draws what the uninterrupted one drew."""
        return self.train_config.seed * 1_000_003 + self.step + stream

    def flat_step(self, x: torch.Tensor, y: torch.Tensor, index: int) -> torch.Tensor | None:
        """One extra update of H alone (``extractor_flat_steps``) on the flat-noise pair of a fresh noisy batch
        ``x`` and clean batch ``y``, (B, 1, P, P): minimizes |H(y + n) - n| at the step's learning rate (the
        scheduler advances once per step). ``index`` numbers the extra updates of a step (its own draws).
        Returns the loss, or None when no block of ``x`` was unclipped (no update)."""
        H = self.nets.H
        with self._autocast():
            flat_noisy = self._flat_noisy(x, y, stream=500_009 + 1_000_000_007 * (index + 1))
            if flat_noisy is None:
                return None
            flat = losses.noise_consistency(H(flat_noisy).float(), flat_noisy, y)
        self._update("h", flat, {"h_flat_extra": flat}, self.opt_h, list(H.parameters()))
        clamp_rho_(H)
        return flat.detach()

    def _flat_noisy(self, x: torch.Tensor, y: torch.Tensor, stream: int = 500_009) -> torch.Tensor | None:
        """``clip(y + n)`` with ``n`` tiled from the flattest blocks of ``x``, or drawn from the running noise
        spectrum (``extractor_flat_noise_source``), or None when no block of ``x`` is unclipped. The draws come
        from a CPU stream seeded by the step and ``stream`` (so a resumed run draws what the uninterrupted one
        drew)."""
        rng = torch.Generator().manual_seed(self._step_seed(stream))
        t = self.train_config
        if self.noise_spectrum is not None:
            est = self.noise_spectrum
            est.update(x, y)
            noise = spectral_noise(est.noise, len(y), rng, turn=est.oriented).to(y.device)
            return (y.float() + noise).clamp(-1.0, 1.0).to(y.dtype)
        guide = None
        if t.extractor_flat_noise_guide == "bypass":
            with torch.no_grad():
                guide = x.float() - self.nets.H(x).float()
        noise = flat_block_noise(x, rng, block=t.extractor_flat_noise_block, width=t.extractor_flat_noise_width or None,
                                 turn=t.augment == "dihedral", guide=guide, levels=t.extractor_flat_noise_levels,
                                 clean=y)
        return None if noise is None else (y.float() + noise).clamp(-1.0, 1.0).to(y.dtype)

    def train_step(self, x: torch.Tensor, y: torch.Tensor,
                   extra: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> dict[str, float]:
        """One ISCL step on a noisy batch ``x`` and an unrelated clean batch ``y``, both (B, 1, P, P).

        ``extra``: further (noisy, clean) batches, one per extra update of H on the flat-noise pair
        (``train.extractor_flat_steps``; after the H step, see ``flat_step``).

        Returns every loss term, the gradient norms, the standard deviation of F(x) and the learning
        rate of each optimizer for this update, as floats (plus ``skipped`` when an update was skipped).
        """
        lrs = {"lr_d": self.opt_d.param_groups[0]["lr"], "lr_fg": self.opt_fg.param_groups[0]["lr"],
               "lr_h": self.opt_h.param_groups[0]["lr"]}
        if self.train_config.channels_last:
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        out: dict[str, Any] = {}
        self.skipped = []
        if self.nets.G.noise_channels:
            # G's random input: a stream per step, so a resumed run draws what the uninterrupted one drew
            self.nets.G.reseed(self._step_seed())
        out.update(self.d_step(x, y))
        out.update(self.fg_step(x, y))
        out.update(self.h_step(x, y))
        flats = []
        for i, (xe, ye) in enumerate(extra):
            if self.train_config.channels_last:
                xe, ye = (a.contiguous(memory_format=torch.channels_last) for a in (xe, ye))
            loss = self.flat_step(xe, ye, i)
            if loss is not None:
                flats.append(loss)
        if flats:
            out["h_flat_extra"] = torch.stack(flats).mean()
        if self.scaler is not None:
            self.scaler.update()  # once per step, after all three sub-steps (one scale for their losses)
        self.step += 1
        result: dict[str, Any] = {k: float(v.detach()) for k, v in out.items()}
        result.update(lrs)
        if self.skipped:
            result["skipped"] = ",".join(self.skipped)
        return result

    def _update(self, group: str, total: torch.Tensor, terms: dict[str, torch.Tensor], optimizer: Any,
                params: list[nn.Parameter]) -> torch.Tensor:
        """Backward and one optimizer update, guarded against NaN/Inf in the losses and the gradients.

        With ``train.nonfinite == "stop"`` a non-finite value raises :class:`NonFiniteLossError` naming
        the step and the term; with ``"skip"`` this update is skipped (logged in ``skipped``).
        Returns the gradient's total 2-norm (NaN when the update was skipped for a bad loss).
        """
        values = torch.stack([v.detach().float() for v in terms.values()])
        bad = [k for k, ok in zip(terms, torch.isfinite(values).tolist()) if not ok]
        if self.distributed and not all_true(not bad, self.device):  # every rank must skip or stop together
            bad = bad or ["(non-finite on another rank)"]
            terms = {**terms, bad[0]: torch.tensor(float("nan"))} if bad[0] not in terms else terms
        if bad:
            self._nonfinite(group, f"{', '.join(bad)} = {', '.join(str(terms[k].item()) for k in bad)}")
            return torch.tensor(float("nan"))
        optimizer.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(optimizer)
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not bool(torch.isfinite(gnorm)):
                # fp16 overflow under the current loss scale: the scaler skips this update and lowers
                # the scale (normal in the first steps); not a divergence
                self.skipped.append(f"{group}:fp16-overflow")
            self.scaler.step(optimizer)
            return gnorm
        total.backward()
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if not bool(torch.isfinite(gnorm)):
            optimizer.zero_grad()
            self._nonfinite(group, f"the gradient of {group.upper()} (norm {gnorm.item()})")
            return gnorm
        optimizer.step()
        return gnorm

    def _autocast(self):
        return autocast(self.train_config.precision, self.device)

    def _nonfinite(self, group: str, what: str) -> None:
        if self.train_config.nonfinite == "skip":
            self.skipped.append(group)
            return
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step + 1}: {what}; lower the learning rate, check the input data "
            "for NaN/Inf, or pass --skip-nonfinite to skip such batches"
        )

    # ------------------------------------------------------------------ prediction weights
    @property
    def swa_snapshots(self) -> int:
        return int(self.swa_F.n_averaged.item())

    def prediction_F(self, weights: str = "swa") -> nn.Module:
        """The F used for prediction: the SWA average (when it has any snapshot) or the raw weights."""
        if weights == "swa" and self.swa_snapshots > 0:
            return self.swa_F.module
        return self.nets.F

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume (tensors, numbers and plain containers only)."""
        return {
            "step": self.step,
            "nets": self.nets.state_dict(),
            "swa_F": self.swa_F.state_dict(),
            "swa_G": self.swa_G.state_dict(),
            "opt_fg": self.opt_fg.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_h": self.opt_h.state_dict(),
            "sched_fg": self.sched_fg.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "sched_h": self.sched_h.state_dict(),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **({"noise_spectrum": self.noise_spectrum.state_dict()} if self.noise_spectrum is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("sched_fg", "sched_d", "sched_h"):  # first: restore_weights applies their rates
            getattr(self, name).load_state_dict(state[name])
        self.restore_weights(state)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.noise_spectrum is not None and "noise_spectrum" in state:
            self.noise_spectrum.load_state_dict(state["noise_spectrum"])
        self.step = int(state["step"])

    def restore_weights(self, state: dict[str, Any]) -> None:
        """Networks, SWA averages and optimizer states (moments, Lookahead) from a :meth:`state_dict`.

        The step count and the learning-rate schedules keep their position: the collapse guard goes
        back to good weights without giving back the steps (a time budget fixed T).
        """
        self.nets.load_state_dict(state["nets"])
        self.swa_F.load_state_dict(state["swa_F"])
        self.swa_G.load_state_dict(state["swa_G"])
        self.opt_fg.load_state_dict(state["opt_fg"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_h.load_state_dict(state["opt_h"])
        for sched in self.schedulers:  # the restored optimizers carry the old rates: re-apply the schedules
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(sched.last_epoch)

    @property
    def schedulers(self) -> tuple[torch.optim.lr_scheduler.LambdaLR, ...]:
        return self.sched_fg, self.sched_d, self.sched_h

    def scale_learning_rates(self, factor: float) -> None:
        """Multiply every optimizer's schedule (its start and floor) by ``factor`` from the next update on."""
        for sched in self.schedulers:
            sched.base_lrs = [b * factor for b in sched.base_lrs]
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(sched.last_epoch)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix T (``train.steps``): the LR decay of all three optimizers and the SWA start follow it."""
        self.train_config.steps = int(total_steps)
        for sched in self.schedulers:
            set_total_steps(sched, total_steps)
