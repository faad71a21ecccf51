"""The public Python API: ``train``, ``load``, ``denoise`` and the :class:`Denoiser` they return.

Arrays at this edge are NumPy, in the images' own units and dtype; the stored
:class:`~iscl.data.normalize.Normalizer` maps them to the networks' [-1, 1] and back.

Example
-------
>>> import iscl
>>> model = iscl.train(clean_images, noisy_images, iscl.config.preset("fast"), run_dir="runs/em")  # doctest: +SKIP
>>> restored = model.denoise(noisy_image)  # same shape and dtype as the input          # doctest: +SKIP
>>> model.save("runs/em/export"); model = iscl.load("runs/em")                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from iscl import zoo
from iscl.config import Config, NetworkConfig, preset
from iscl.data.axes import (
    SLAB_NAMES,
    Axis,
    mean_as,
    plan_slabs,
    plane,
    plane_bytes,
    slab,
    volume_axes,
    volume_axis_problem,
)
from iscl.data.finite import count_nonfinite, nonfinite_problem, require_finite
from iscl.data.normalize import Normalizer, fit_normalizer
from iscl.nn.build import make_extractor, make_generator
from iscl.predict import predict_image
from iscl.training import checkpoint as ckpt
from iscl.training import tensorboard as tb
from iscl.training.trainer import Trainer

__all__ = ["Denoiser", "train", "load", "denoise", "Output"]

Output = Literal["denoised", "generator", "bypass", "noise"]

def _as_slices(images: np.ndarray | Sequence[np.ndarray], what: str, axis: str = "z") -> list[np.ndarray]:
    """Accept one 2-D image, a (Z, H, W) stack or a sequence of either; return a list of 2-D arrays.

    A stack gives its planes along ``axis`` (see :func:`volume_axes`): its Z slices for ``z``, its (Z, W)
    planes for ``y``, its (Z, H) planes for ``x``, all three for ``all``. A 2-D image gives itself.
    """
    dims = volume_axes(axis)
    items = [images] if isinstance(images, np.ndarray) else list(images)
    if not items:
        raise ValueError(f"{what}: no images given")
    out: list[np.ndarray] = []
    for i, im in enumerate(items):
        a = np.asarray(im)
        if a.dtype.kind not in "uif":
            raise TypeError(f"{what}[{i}]: expected a real-valued image, got dtype {a.dtype}")
        if a.ndim == 2:
            out.append(a)
        elif a.ndim == 3:
            out.extend(a[plane(d, i)] for d in dims for i in range(a.shape[d]))
        else:
            raise ValueError(f"{what}[{i}]: expected a 2-D image or a (Z, H, W) stack, got shape {a.shape}")
        require_finite(a, f"{what}[{i}]")
    return out


class Denoiser:
    """A trained ISCL model ready for prediction: F (SWA-averaged and raw), H, and the normalizer.

    Build it with :func:`train` or :func:`load`.
    """

    def __init__(self, config: Config, normalizer: Normalizer, F_swa: nn.Module, F_raw: nn.Module,
                 H: nn.Module, info: dict | None = None, device: str | torch.device = "cpu"):
        self.config = config
        self.normalizer = normalizer
        self.device = torch.device(device)
        self.F_swa = F_swa.to(self.device).eval()
        self.F_raw = F_raw.to(self.device).eval()
        self.H = H.to(self.device).eval()
        self.info = dict(info or {})
        self.trainer: Trainer | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _networks(net: NetworkConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
        return make_generator(net), make_generator(net), make_extractor(net)

    @classmethod
    def from_weights(cls, config: Config, normalizer: Normalizer, weights: dict[str, torch.Tensor],
                     info: dict | None = None, device: str | torch.device = "cpu", source: str = "weights") -> Denoiser:
        F_swa, F_raw, H = cls._networks(config.network)
        for prefix, module in (("F", F_swa), ("F_raw", F_raw), ("H", H)):
            sub = {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}
            expected = module.state_dict()
            missing = sorted(set(expected) - set(sub))
            unexpected = sorted(set(sub) - set(expected))
            bad = sorted(k for k in set(sub) & set(expected) if tuple(sub[k].shape) != tuple(expected[k].shape))
            if missing or unexpected or bad:
                detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                          else f"shape of {prefix}.{bad[0]} is {tuple(sub[bad[0]].shape)}, expected "
                          f"{tuple(expected[bad[0]].shape)}")
                raise ckpt.CheckpointError(
                    f"{source}: weights of {prefix} do not match the configured architecture ({detail})")
            module.load_state_dict(sub)
        return cls(config, normalizer, F_swa, F_raw, H, info, device)

    # ------------------------------------------------------------------ prediction
    def predict(self, image: np.ndarray, *, outputs: Sequence[Output] = ("denoised",), gamma: float | None = None,
                weights: Literal["swa", "raw"] | None = None, tile: int | None = None, overlap: int = 32,
                stats_tiles: int = 16, precision: str | None = None, tta: bool | None = None,
                on_tile=None) -> dict[str, np.ndarray]:
        """Several outputs for one 2-D image (H, W), in the image's units.

        ``denoised``/``generator``/``bypass`` come back in the input's dtype (integers rounded and
        clipped to the dtype's range); ``noise`` (H's noise map) as float32 in image units.
        ``tile``/``overlap``/``stats_tiles``: tiled prediction with whole-image BIN statistics (see
        :func:`iscl.predict.predict_image`); ``tile=None`` runs the whole image at once.
        ``precision``: ``fp32``, or ``bf16``/``fp16`` autocast for the convolutions (docs/scaling.md
        measures the difference); None: ``config.predict.precision`` (fp32 unless set).
        ``tta``: average over the 8 rotations/flips of the image (8x the time); None:
        ``config.predict.tta``.
        """
        a = np.asarray(image)
        if a.ndim != 2:
            raise ValueError(f"predict: expected a 2-D image, got shape {a.shape}")
        if min(a.shape) < 4:
            raise ValueError(f"image of {a.shape[0]}x{a.shape[1]} pixels is too small (at least 4x4)")
        if a.dtype.kind not in "uif":
            raise TypeError(f"expected a real-valued image, got dtype {a.dtype}")
        require_finite(a, "image")
        which = weights or self.config.predict.weights
        F_net = self.F_swa if which == "swa" else self.F_raw
        gamma = self.config.predict.gamma if gamma is None else float(gamma)
        norm = predict_image(F_net, self.H, self.normalizer.forward(a), gamma=gamma, outputs=tuple(outputs),
                             tile=tile, overlap=overlap, stats_tiles=stats_tiles, device=self.device,
                             precision=precision or self.config.predict.precision,
                             tta=self.config.predict.tta if tta is None else bool(tta), on_tile=on_tile)
        out: dict[str, np.ndarray] = {}
        for k, v in norm.items():
            if k == "noise":
                out[k] = (v * (0.5 * (self.normalizer.high - self.normalizer.low))).astype(np.float32)
            else:
                out[k] = self.normalizer.inverse(v, a.dtype)
        return out

    def denoise(self, image: np.ndarray, *, output: Output = "denoised", gamma: float | None = None,
                weights: Literal["swa", "raw"] | None = None, tile: int | None = None, overlap: int = 32,
                stats_tiles: int = 16, precision: str | None = None, tta: bool | None = None) -> np.ndarray:
        """Denoise one image (H, W) or a stack (Z, H, W), slice by slice, one image per network call.

        Returns an array of the input's shape and dtype (``noise``: float32), see :meth:`predict`.
        Sides need not be multiples of 4; the image must be at least 4×4.
        """
        a = np.asarray(image)
        if a.ndim not in (2, 3):
            raise ValueError(f"denoise: expected a 2-D image or a (Z, H, W) stack, got shape {a.shape}")
        kw = dict(outputs=(output,), gamma=gamma, weights=weights, tile=tile, overlap=overlap, stats_tiles=stats_tiles,
                  precision=precision, tta=tta)
        if a.ndim == 2:
            return self.predict(a, **kw)[output]
        return np.stack([self.predict(sl, **kw)[output] for sl in a])

    def denoise_volume(self, volume: Any, *, axis: Axis = "z", output: Output = "denoised", gamma: float | None = None,
                       weights: Literal["swa", "raw"] | None = None, tile: int | None = None, overlap: int = 32,
                       stats_tiles: int = 16, precision: str | None = None, tta: bool | None = None,
                       out: Any = None, scratch: Callable[[tuple[int, ...], np.dtype], Any] | None = None,
                       memory_budget: int | None = None, chunks: tuple[int, ...] | None = None,
                       on_block: Callable[[int, int], None] | None = None) -> Any:
        """Denoise a (Z, H, W) volume plane by plane along ``axis``, or along all three and average.

        The 2-D networks see one plane at a time, exactly as :meth:`predict` sees an image (BIN uses that
        plane's own statistics): ``z`` the (H, W) slices (what :meth:`denoise` does), ``y`` the (Z, W)
        planes (one per row), ``x`` the (Z, H) planes (one per column). ``all`` denoises along z, y and x
        and returns the mean of the three: slice-wise artefacts (offsets or streaks that differ from one
        slice to the next) are invisible inside a z slice but are rows of every y and x plane.

        Parameters
        ----------
        volume : array-like (Z, H, W), any real dtype, in image units: a NumPy array, a memory map or
            anything sliced like one (a Zarr array); it is read one slab of planes at a time.
        axis : ``z``, ``y``, ``x`` or ``all``. Planes must be at least 4x4 pixels (:func:`volume_axis_problem`).
        output, gamma, weights, tile, overlap, stats_tiles, precision, tta : as in :meth:`predict`, for
            every plane.
        out : array-like (Z, H, W) to write the result into (default: a new NumPy array), in the
            volume's dtype (``noise``: float32).
        scratch : ``all`` only: ``scratch(shape, dtype)`` makes the array that sums the three orientations
            (float32 for data of up to 16 bits and float32, else float64; default: a NumPy array), e.g. a
            disk-backed store for a volume larger than memory.
        memory_budget : bytes of pixel data held at once (None: each orientation in one slab). The planes
            are read and written in slabs (rows across all Z for ``y``, columns for ``x``) of
            input + result (+ the sum's slab for ``all``) + the normalized float32 plane within it.
        chunks : the storage chunks of ``volume``/``out`` (Z, H, W): a slab is whole chunks deep when one
            chunk fits in the budget.
        on_block : progress callback ``(done, total)`` over the slabs.

        Returns
        -------
        array-like
            ``out`` (or a new array): the input's shape and dtype (``noise``: float32). ``all`` averages
            the three orientations before rounding: each is predicted from the planes cast to the sum's
            float type, so integer outputs are rounded (and clipped to the dtype's range) once.

        Example
        -------
        >>> model.denoise_volume(stack, axis="all")  # (Z, H, W) in, same shape and dtype out  # doctest: +SKIP
        """
        shape = tuple(int(n) for n in volume.shape)
        dims = volume_axes(axis)
        if len(shape) != 3:
            raise ValueError(f"denoise_volume: expected a (Z, H, W) volume, got shape {shape}")
        problem = volume_axis_problem(shape, axis)
        if problem is not None:
            raise ValueError(problem)
        dtype = np.dtype(volume.dtype)
        if dtype.kind not in "uif":
            raise TypeError(f"expected a real-valued volume, got dtype {dtype}")
        out_dtype = np.dtype(np.float32) if output == "noise" else dtype
        if out is None:
            out = np.empty(shape, out_dtype)
        elif tuple(out.shape) != shape:
            raise ValueError(f"denoise_volume: out has shape {tuple(out.shape)}, expected {shape}")
        kw = dict(outputs=(output,), gamma=gamma, weights=weights, tile=tile, overlap=overlap, stats_tiles=stats_tiles,
                  precision=precision, tta=tta)
        averaging = len(dims) > 1
        # the sum keeps each orientation's unrounded values: float32 is exact enough for <= 16-bit data
        work = np.dtype(np.float32 if out_dtype.itemsize <= 2 or out_dtype == np.float32 else np.float64)
        total = None
        if averaging:
            total = np.empty(shape, work) if scratch is None else scratch(shape, work)
        result_dtype = work if averaging else out_dtype
        per_pixel = dtype.itemsize + result_dtype.itemsize + 4 + (work.itemsize if averaging else 0)
        plans = [(d, plan_slabs(shape[d], chunks[d] if chunks else 0, plane_bytes(shape, d, per_pixel), memory_budget))
                 for d in dims]
        final = (plan_slabs(shape[0], chunks[0] if chunks else 0,
                            plane_bytes(shape, 0, work.itemsize + out_dtype.itemsize), memory_budget)
                 if averaging else [])
        n_blocks, done = sum(len(s) for _, s in plans) + len(final), 0
        for k, (d, slabs) in enumerate(plans):
            for a, b in slabs:
                idx = slab(d, a, b)
                block = np.asarray(volume[idx])
                n_nan, n_inf = count_nonfinite(block)
                if n_nan or n_inf:
                    raise ValueError(f"{SLAB_NAMES[d]} {a}-{b - 1} {nonfinite_problem(n_nan, n_inf, block.size)}")
                res = np.empty(block.shape, result_dtype)
                for i in range(b - a):
                    image = np.ascontiguousarray(block[plane(d, i)], dtype=work if averaging else None)
                    res[plane(d, i)] = self.predict(image, **kw)[output]
                if averaging and k > 0:
                    res += np.asarray(total[idx])  # z, then + y, then + x: the same sum whatever the slabs
                (total if averaging else out)[idx] = res
                done += 1
                if on_block is not None:
                    on_block(done, n_blocks)
        for a, b in final:
            out[a:b] = mean_as(np.asarray(total[a:b]), len(dims), out_dtype)
            done += 1
            if on_block is not None:
                on_block(done, n_blocks)
        return out

    # ------------------------------------------------------------------ persistence
    def weights(self) -> dict[str, torch.Tensor]:
        return ckpt.prediction_weights(self.F_swa, self.F_raw, self.H)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint directory (resumable when this model came from :func:`train`)."""
        if self.trainer is not None:
            return self.trainer.save(path)
        return ckpt.save_checkpoint(path, config=self.config, normalizer=self.normalizer, weights=self.weights(),
                                    info=self.info)

    def to(self, device: str | torch.device) -> Denoiser:
        self.device = torch.device(device)
        for m in (self.F_swa, self.F_raw, self.H):
            m.to(self.device)
        return self


def train(clean: np.ndarray | Sequence[np.ndarray], noisy: np.ndarray | Sequence[np.ndarray],
          config: Config | str | None = None, *, run_dir: str | os.PathLike | None = None,
          device: str | torch.device = "cpu", resume: bool = False, progress: bool = True,
          stop_at: int | None = None,
          validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
          on_step: Callable[[Trainer, dict], None] | None = None, tensorboard: bool | None = None,
          tensorboard_every: int | None = None) -> Denoiser:
    """Train ISCL on unpaired clean and noisy images.

    Parameters
    ----------
    clean, noisy : a 2-D image, a (Z, H, W) stack, or a sequence of them; any real dtype, in the
        images' own units. The pools must not show the same scenes (unpaired learning). A stack gives
        its planes along ``config.train.axis``: its Z slices (``z``, the default), its (Z, W) or (Z, H)
        planes (``y``, ``x``) or all three orientations (``all``); planes smaller than the patch give none.
    config : a :class:`~iscl.config.Config`, a preset name (``"fast"``, ``"paper"``, ``"cpu"``) or ``None``
        (``fast``).
    run_dir : where the loss log and the checkpoint go (``None``: nothing is written).
    resume : continue the run saved in ``run_dir``.
    stop_at : stop after this step (< T) instead of T, e.g. to continue later with ``resume``.
    validation : optional paired (clean, noisy) images (same scenes, same units as training); their
        PSNR is logged during training and the best model kept in ``run_dir/best``.
    on_step : called as ``on_step(trainer, record)`` after every training step.
    tensorboard : write ``run_dir/tb/`` (every scalar of ``log.jsonl``, and a preview of a fixed crop:
        noisy | F(x) | x − H(x) | blend, | clean with validation pairs); None: when ``run_dir`` is given
        and the tensorboard package is installed (see :mod:`iscl.training.tensorboard`).
    tensorboard_every : a preview every this many steps (None: every validation period, T/20).

    Returns
    -------
    Denoiser
    """
    if config is None or isinstance(config, str):
        config = preset(config or "fast")
    axis = config.train.axis  # a stack's planes along z (its slices), y, x or all three
    clean_s = _as_slices(clean, "clean", axis)
    noisy_s = _as_slices(noisy, "noisy", axis)
    if resume and run_dir is not None:
        _, normalizer, _ = ckpt.read_checkpoint_config(Path(run_dir) / "checkpoint")
    else:
        # the window from the z slices whatever the axis: the other orientations hold the same pixels
        pool = clean_s + noisy_s if axis == "z" else _as_slices(clean, "clean") + _as_slices(noisy, "noisy")
        normalizer = fit_normalizer(pool, config.normalization, seed=config.train.seed)
    val = None
    if validation is not None:
        vc, vn = _as_slices(validation[0], "validation clean"), _as_slices(validation[1], "validation noisy")
        if len(vc) != len(vn) or any(a.shape != b.shape for a, b in zip(vc, vn)):
            raise ValueError("validation: clean and noisy images must be pairs of the same scenes and shapes; got "
                             f"{len(vc)} clean and {len(vn)} noisy")
        val = ([normalizer.forward(a) for a in vc], [normalizer.forward(a) for a in vn])
    noisy_n = [normalizer.forward(a) for a in noisy_s]
    if tensorboard is None:
        tensorboard = run_dir is not None and tb.available()
    if tensorboard and run_dir is None:
        raise ValueError("tensorboard=True needs a run_dir to write run_dir/tb into")
    writer = None
    if tensorboard:  # the crop: the first validation pair, else the first noisy training image
        source, clean_ref = (val[1][0], val[0][0]) if val is not None else (noisy_n[0], None)
        window = tb.preview_crop(source)
        writer = tb.TensorBoardWriter(Path(run_dir) / tb.TB_DIR, source[window],
                                      None if clean_ref is None else clean_ref[window], every=tensorboard_every)
    callbacks = [c for c in (on_step, writer) if c is not None]

    def each_step(trainer: Trainer, record: dict) -> None:
        for callback in callbacks:
            callback(trainer, record)

    trainer = Trainer(config, [normalizer.forward(a) for a in clean_s], noisy_n, normalizer, run_dir=run_dir,
                      device=device, resume=resume, progress=progress, validation=val,
                      on_step=each_step if callbacks else None)
    try:
        m = trainer.run(stop_at=stop_at)
    finally:
        if writer is not None:
            writer.close()
    model = Denoiser(config, normalizer, m.prediction_F("swa"), m.nets.F, m.nets.H, trainer.info(), m.device)
    model.trainer = trainer
    return model


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, force: bool = False) -> Denoiser:
    """Load a checkpoint directory, or a run directory, for prediction.

    A run directory gives its best-validation model (``best/``, kept when training had validation
    pairs) when it has one, else its last checkpoint (``checkpoint/``); name the checkpoint folder to
    pick one. A model saved as collapsed (training ended with F constant or the discriminators
    winning, see :class:`~iscl.training.trainer.Trainer`) is refused unless ``force``. A BioImage
    Model Zoo package written by ``iscl export --format bmz`` (the ``.zip``, or the folder it was
    unpacked into) gives the exported model (see :mod:`iscl.zoo`).
    """
    weights = None
    if zoo.is_package(path):
        source = Path(path)
        config, normalizer, info, weights = zoo.read_package(source)
    else:
        source = ckpt.resolve_checkpoint(path, prefer_best=True)
        config, normalizer, info = ckpt.read_checkpoint_config(source)
    if info.get("collapsed") and not force:
        raise ckpt.CheckpointError(
            f"{source}: this model collapsed during training ({info['collapsed']}); its output is not a denoised "
            "image. Retrain (a lower --lr, or --preset fast with its collapse guard), or pass --force to use it")
    if weights is None:
        weights = ckpt.load_weights(source)
    return Denoiser.from_weights(config, normalizer, weights, info, device, source=str(source))


def denoise(model: Denoiser | str | os.PathLike, image: np.ndarray, **kwargs) -> np.ndarray:
    """``load(model).denoise(image, **kwargs)`` for a path, or ``model.denoise(...)`` for a Denoiser."""
    if not isinstance(model, Denoiser):
        model = load(model)
    return model.denoise(image, **kwargs)
