"""Noise2Void (Krull, Buchholz & Jug, CVPR 2019): a blind-spot denoiser trained on noisy images alone.

Training sees the noisy pool only. In every patch a few pixels (one per ``s×s`` box of a grid, N2V's
stratified sampling) are replaced by a random other pixel of their neighbourhood, and the loss is the
mean squared error between the network's output and the *original* noisy values at those pixels only.
When the noise is independent from pixel to pixel and zero-mean, the best such prediction is the clean
value; with structured (spatially correlated) noise — EM film/charge noise, CT streaks — the neighbours
carry the noise too and the network learns to reproduce it. That is the assumption ISCL is meant to
escape (method.md §6), and why this row is expected to do little on those datasets.

The method follows the reference implementation, n2v (juglab/n2v, ``N2VConfig`` and its 2-D example
notebooks) and CAREamics (careamics/careamics) rather than ISCL's training recipe:

* network: :class:`~iscl.nn.unet.UNet` with n2v's defaults — depth 2, 32 first feature maps, 3×3
  kernels, batch norm, ReLU, max-pool down, nearest upsampling + concatenation up, a linear 1×1 head
  and no residual connection (n2v ``unet_residual=False``). This is the configuration of the paper's
  2-D experiments and the default of both n2v and CAREamics (U-Net depth 2, 32 initial channels, no
  residual), i.e. what "Noise2Void" denotes when others compare with it. The network predicts the
  pixel value itself, in standardised units;
* data: the noisy images are standardised with the mean and standard deviation of all training pixels
  (n2v keeps them as ``N2VConfig.means``/``stds`` and standardises with them); predictions are mapped
  back. Patches are the non-overlapping 64×64 grid of every image under the 8 dihedral transforms,
  shuffled (n2v's ``N2V_DataGenerator`` with augmentation; here :class:`~iscl.data.patches.PatchSampler`,
  the same noisy stream the other rows draw from);
* masking: ``n2v_perc_pix=0.198`` % of the pixels of a patch (the n2v 2-D example notebooks; box side
  ``round(sqrt(100/0.198)) = 22``, so about 8.5 pixels of a 64×64 patch), each replaced by a pixel drawn
  uniformly from the 11×11 window around it (``n2v_neighborhood_radius=5``: offsets -5 … 5 on each
  axis; CAREamics' ``roi_size=11``), cut to the patch;
* loss: MSE on the masked pixels only (n2v ``loss_mse``);
* optimiser: Adam, learning rate 4e-4 (n2v ``train_learning_rate``), batch size and step count from
  :meth:`fit`'s budget, the last weights are used.

Deviations, and why:

* the replacement never is the pixel itself. n2v's ``uniform_withCP`` manipulator draws from the whole
  window *with the centre pixel* (1 chance in 121 to keep its own value, an identity leak); CAREamics'
  default (``remove_center=True``) excludes it, and a blind spot should be blind;
* constant learning rate: n2v halves the rate when the validation loss stalls for 10 epochs of 400
  steps (CAREamics: ``ReduceLROnPlateau``), which never fires within the benchmark's budget of a few
  hundred steps; for the same reason there is no validation split and no best-checkpoint selection;
* batch norm uses PyTorch's running-average momentum (0.1, as CAREamics) instead of Keras' 0.99, so
  the inference statistics settle within a short training.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from iscl.config import Config, NetworkConfig, preset
from iscl.data.patches import PatchSampler
from iscl.methods.base import MethodBase
from iscl.nn.unet import UNet

__all__ = ["BlindSpot", "blind_spot_mask", "masked_mse", "N2V_MASK_FRACTION", "N2V_RADIUS", "N2V_LR"]

#: n2v's ``n2v_perc_pix=0.198`` (percent) as a share of the pixels of a patch.
N2V_MASK_FRACTION = 0.198 / 100
#: n2v's ``n2v_neighborhood_radius``: replacements come from the (2·5+1)×(2·5+1) = 11×11 window.
N2V_RADIUS = 5
#: n2v's ``train_learning_rate`` (Adam).
N2V_LR = 4e-4


def blind_spot_mask(batch: np.ndarray, rng: np.random.Generator, fraction: float = N2V_MASK_FRACTION,
                    radius: int = N2V_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Mask a batch of patches the Noise2Void way.

    Positions are stratified as in n2v's ``get_stratified_coords2D``: the patch is covered by a grid of
    ``s×s`` boxes, ``s = round(1/sqrt(fraction))``, each box draws one uniform position, and positions
    that fall outside the patch (in boxes cut by the border) are dropped — so on average ``1/s² ≈ fraction``
    of the pixels are masked (0.207 % for the default), exactly one per box when ``s`` divides the sides.

    Parameters
    ----------
    batch : (B, 1, H, W) float32
        Noisy patches (any units), ``H, W >= 2``.
    rng : numpy.random.Generator
        Source of the masked positions and of the replacing neighbours.
    fraction : float
        Target share of masked pixels, in (0, 0.25] (at most one pixel per 2×2 box, so every masked
        pixel keeps unmasked context). Default: n2v's 0.198 %, i.e. one pixel per 22×22 box.
    radius : int
        The replacement is drawn uniformly from the pixels of the ``(2r+1)×(2r+1)`` window around the
        masked pixel that lie inside the patch, the pixel itself excluded. Default 5 (an 11×11 window).

    Returns
    -------
    masked : (B, 1, H, W) float32
        A copy of ``batch`` with the masked pixels replaced by their neighbours' values.
    mask : (B, 1, H, W) float32
        1 at masked pixels, 0 elsewhere.
    """
    if not 0.0 < fraction <= 0.25:
        raise ValueError(f"fraction must be in (0, 0.25], got {fraction}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    if batch.ndim != 4 or batch.shape[1] != 1 or min(batch.shape[2:]) < 2:
        raise ValueError(f"batch must be (B, 1, H, W) with H, W >= 2, got shape {batch.shape}")
    b, _, h, w = batch.shape
    s = int(round(1.0 / np.sqrt(fraction)))
    gy, gx = np.meshgrid(np.arange(0, h, s), np.arange(0, w, s), indexing="ij")
    ys = gy.ravel()[None] + rng.integers(0, s, (b, gy.size))
    xs = gx.ravel()[None] + rng.integers(0, s, (b, gx.size))
    bi = np.broadcast_to(np.arange(b)[:, None], ys.shape)
    keep = (ys < h) & (xs < w)
    bi, ys, xs = bi[keep], ys[keep], xs[keep]
    # rejection sampling: redraw the offsets that hit the centre or leave the patch, which leaves the
    # replacement uniform over the in-patch window minus the centre
    dy = rng.integers(-radius, radius + 1, ys.size)
    dx = rng.integers(-radius, radius + 1, xs.size)
    while True:
        bad = ((dy == 0) & (dx == 0)) | (ys + dy < 0) | (ys + dy >= h) | (xs + dx < 0) | (xs + dx >= w)
        if not bad.any():
            break
        dy[bad] = rng.integers(-radius, radius + 1, int(bad.sum()))
        dx[bad] = rng.integers(-radius, radius + 1, int(bad.sum()))
    masked = batch.copy()
    mask = np.zeros_like(batch)
    masked[bi, 0, ys, xs] = batch[bi, 0, ys + dy, xs + dx]
    mask[bi, 0, ys, xs] = 1.0
    return masked, mask


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """N2V's loss: the mean squared error over the masked pixels of the whole batch (n2v ``loss_mse``).

    Parameters
    ----------
    output, target, mask : (B, 1, H, W) tensors
        The network's prediction from the masked input, the original noisy patches, and the 0/1 mask.

    Returns
    -------
    torch.Tensor
        Scalar ``sum(mask·(output - target)²) / sum(mask)``; unmasked pixels carry no weight (the
        network sees their true values, so predicting them would teach it the identity).
    """
    return ((output - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


class _MaskedStream:
    """Standardised noisy patches with their N2V masks: ``next(B)`` gives ``[masked, target, mask]``."""

    def __init__(self, sampler: PatchSampler, rng: np.random.Generator, fraction: float, radius: int):
        self.sampler, self.rng, self.fraction, self.radius = sampler, rng, fraction, radius

    def next(self, batch_size: int) -> list[torch.Tensor]:
        x = self.sampler.next_batch(batch_size)
        masked, mask = blind_spot_mask(x, self.rng, self.fraction, self.radius)
        return [torch.from_numpy(masked), torch.from_numpy(x), torch.from_numpy(mask)]


class BlindSpot(MethodBase):
    """Noise2Void: a U-Net trained with masked-pixel MSE on the noisy images only.

    Parameters
    ----------
    config : str or Config
        ISCL preset name or :class:`~iscl.config.Config`; only its data protocol is used — the patch
        size (64) and the dihedral augmentation — so every row sees the same patches. Its networks and
        optimiser are ISCL's and do not apply here.
    network : dict, optional
        U-Net overrides: ``unet_width`` (first width, default 32) and ``unet_depth`` (default 2).
        ``generator_width``, the benchmark's switch for tiny test networks, sets ``unet_width`` when
        that is not given; the other ISCL network fields are ignored (this method has no such networks).
    mask_fraction : float
        Share of masked pixels per patch (default n2v's 0.198 %); see :func:`blind_spot_mask`.
    radius : int
        Neighbourhood radius of the replacements (default n2v's 5: an 11×11 window).
    lr : float
        Adam's learning rate (default n2v's 4e-4), constant.
    name : str
        Row name.

    Attributes
    ----------
    net : UNet or None
        The trained network (eval mode) after :meth:`fit`.
    mean, std : float
        The standardisation of the training pixels, in [0, 1] units.
    """

    needs = frozenset({"noisy"})

    def __init__(self, config: Any = "cpu", *, network: dict[str, Any] | None = None,
                 mask_fraction: float = N2V_MASK_FRACTION, radius: int = N2V_RADIUS, lr: float = N2V_LR,
                 name: str = "blindspot"):
        super().__init__()
        base = preset(config) if isinstance(config, str) else config
        if not isinstance(base, Config):
            raise TypeError(f"config must be a preset name or an iscl.config.Config, got {type(base).__name__}")
        overrides = dict(network or {})
        unknown = set(overrides) - {"unet_width", "unet_depth"} - set(NetworkConfig.model_fields)
        if unknown:
            raise ValueError(f"unknown network override(s) {sorted(unknown)}; the blind-spot U-Net takes "
                             "unet_width, unet_depth (or generator_width)")
        if not 0.0 < mask_fraction <= 0.25:
            raise ValueError(f"mask_fraction must be in (0, 0.25], got {mask_fraction}")
        if radius < 1 or lr <= 0:
            raise ValueError(f"radius must be >= 1 and lr > 0, got {radius} and {lr}")
        self.name = name
        self.patch_size, self.augment = int(base.train.patch_size), base.train.augment
        self.unet_width = int(overrides.get("unet_width", overrides.get("generator_width", 32)))
        self.unet_depth = int(overrides.get("unet_depth", 2))
        self.mask_fraction, self.radius, self.lr = float(mask_fraction), int(radius), float(lr)
        self.net: UNet | None = None
        self.mean, self.std = 0.0, 1.0
        self.device = torch.device("cpu")
        self.budget: dict[str, int] = {}

    def _fit(self, *, clean: Any, noisy: list[np.ndarray], pairs: Any, steps: int, batch_size: int, seed: int,
             device: str, progress: bool) -> None:
        from tqdm.auto import tqdm

        pixels = np.concatenate([a.ravel() for a in noisy]).astype(np.float64)
        mean, std = float(pixels.mean()), float(pixels.std())
        if not std > 0:
            raise ValueError(f"{self.name}: the noisy training images are constant; nothing to standardise")
        self.mean, self.std = mean, std
        self.budget = {"steps": steps, "batch_size": batch_size, "seed": seed}
        self.device = torch.device(device)
        net = UNet(self.unet_depth, self.unet_width, generator=torch.Generator().manual_seed(seed))
        net.to(self.device).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        standardised = [((a - mean) / std).astype(np.float32) for a in noisy]
        # stream 1 is the noisy stream of the other rows (same patch order); the masks have their own
        sampler = PatchSampler(standardised, self.patch_size, self.augment, seed=seed, stream=1)
        stream = _MaskedStream(sampler, np.random.default_rng([seed, 2]), self.mask_fraction, self.radius)
        self._live = net
        self.optimizers = {"net": opt}
        for step in tqdm(range(1, steps + 1), disable=not progress, unit="step", desc=self.name):
            started = time.perf_counter()
            masked, target, mask = (t.to(self.device) for t in stream.next(batch_size))
            loss = masked_mse(net(masked), target, mask)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"{self.name}: non-finite loss at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            self._after_step({"step": step, "loss": float(loss.detach()), "lr": self.lr}, started)
        self.net = net.eval()

    def snapshot(self) -> UNet:
        return copy.deepcopy(self._live).eval()  # eval: batch norm with the running statistics, as at the end

    def use_snapshot(self, state: UNet) -> None:
        self.net = state

    @torch.no_grad()
    def _denoise(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape
        m = self.net.multiple
        # reflect-pad to the U-Net's multiple (n2v/CSBDeep also pad by reflection) and crop back
        x = np.pad((image - self.mean) / self.std, ((0, -h % m), (0, -w % m)), mode="reflect")
        y = self.net(torch.from_numpy(x.astype(np.float32))[None, None].to(self.device))
        return (y[0, 0, :h, :w].float().cpu().numpy() * self.std + self.mean).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            prediction="std * UNet((x - mean) / std) + mean",
            network={"type": "U-Net (CSBDeep/n2v)", "depth": self.unet_depth, "first_width": self.unet_width,
                     "kernel_size": 3, "batch_norm": True, "activation": "relu", "down": "max-pool 2x2",
                     "up": "nearest upsampling + concatenation", "head": "1x1 conv, linear", "residual": False,
                     "init": "glorot-uniform, zero bias"},
            masking={"scheme": "stratified (one per box), uniform neighbour, centre excluded",
                     "fraction": self.mask_fraction, "box": int(round(1.0 / np.sqrt(self.mask_fraction))),
                     "radius": self.radius, "window": f"{2 * self.radius + 1}x{2 * self.radius + 1}"},
            loss="MSE on masked pixels",
            normalisation={"mode": "mean/std of the noisy training pixels", "mean": self.mean, "std": self.std},
            optimiser={"type": "Adam", "lr": self.lr, "betas": [0.9, 0.999], "schedule": "constant",
                       "weights": "last"},
            data={"patch_size": self.patch_size, "augment": self.augment, **self.budget},
        )
        return d
