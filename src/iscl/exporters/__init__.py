"""Export a trained model for other tools: a BioImage Model Zoo package, TorchScript or ONNX.

Every format stores the same prediction module, :class:`~iscl.exporters.module.IsclPredictor`
(F, H and the blend on one whole image in [-1, 1]), and every export checks what it wrote against
PyTorch before publishing it: the exported model runs on the sample image and on a crop of it whose
sides are not multiples of 4, and must agree within :data:`TOLERANCE`. The file is built in a
hidden folder next to ``out`` and renamed into place (:mod:`iscl.atomic`): a failed export leaves
nothing, and an existing ``out`` is replaced only with ``overwrite``.

A format is one module here that calls :func:`register` (the list is at the bottom of this file).

Example
-------
>>> import iscl
>>> iscl.export("runs/em", "bmz", "em-denoiser.zip", sample="noisy/0001.tif")  # doctest: +SKIP
>>> iscl.load("em-denoiser.zip").denoise(image)                                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from iscl import atomic
from iscl.errors import IsclError

if TYPE_CHECKING:  # pragma: no cover
    from iscl.api import Denoiser
    from iscl.exporters.module import IsclPredictor

__all__ = ["ExportFormat", "ExportJob", "ExportError", "MissingExportDependency", "TOLERANCE", "SAMPLE_SIDE",
           "export", "formats", "get_format", "register", "check_against_pytorch"]

#: largest difference from PyTorch an exported model may show, in the networks' [-1, 1] units
TOLERANCE = 1e-4
#: the sample image is cropped (centre) to at most this side: test tensors stay small
SAMPLE_SIDE = 256
#: side of the synthetic sample used when none is given
SYNTHETIC_SIDE = 96

_EXTRA = "pip install 'iscl[export]'"


class ExportError(IsclError):
    """An export failed; nothing was written. ``str()`` is one line naming the file."""


class MissingExportDependency(IsclError, ImportError):
    """A library an export format needs is not installed; the message names ``pip install 'iscl[export]'``."""


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes
    ----------
    name : the ``--format`` value (``'onnx'``).
    title : name for messages (``'ONNX'``).
    suffix : the usual file suffix (``'.onnx'``); ``out`` may use another.
    requires : importable modules the writer needs (checked before the model is loaded).
    write : ``(job, path)``: write the exported model to ``path`` (inside a private temporary folder,
        which the writer may also use for intermediate files) and check it against PyTorch,
        raising :class:`ExportError` if it differs.
    """

    name: str
    title: str
    suffix: str
    requires: tuple[str, ...]
    write: Callable[[ExportJob, Path], None]

    def check_requirements(self) -> None:
        """Raise :class:`MissingExportDependency` unless every module in ``requires`` can be imported."""
        missing = [m for m in self.requires if not _importable(m)]
        if missing:
            raise MissingExportDependency(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} needed to export {self.title}: {_EXTRA}")


@dataclass(frozen=True)
class ExportJob:
    """What a format writer gets.

    Attributes
    ----------
    predictor : the prediction module (CPU, eval, no gradients), holding the exported F and H.
    model : the :class:`~iscl.api.Denoiser` it came from (configuration, normalizer, info).
    gamma : the blend weight stored in ``predictor``.
    weights : which F was exported, ``'swa'`` or ``'raw'``.
    sample : (H, W) float32 sample image in the image's own units (H, W ≥ 4).
    sample_source : where the sample came from, in words.
    out : the final path (for messages).
    name : a model name (BioImage Model Zoo ``name``), or None.
    """

    predictor: IsclPredictor
    model: Denoiser
    gamma: float
    weights: str
    sample: np.ndarray
    sample_source: str
    out: Path
    name: str | None = None

    def document(self, weights_file: str | None = None) -> dict:
        """What the exported file records about the model (:func:`iscl.zoo.package_document`): the
        configuration (``predict.gamma`` set to the exported γ; the one exported F stands for both
        ``swa`` and ``raw``), the normalizer, and the run's info plus where the sample came from."""
        from iscl.zoo import package_document

        config = self.model.config.model_copy(deep=True)
        config.predict.gamma, config.predict.weights = self.gamma, "swa"
        info = {**self.model.info, "exported_F": self.weights, "export_sample": self.sample_source}
        return package_document(config, self.model.normalizer, info, weights_file)

    def network_input(self, image: np.ndarray) -> torch.Tensor:
        """(1, 1, H, W) float32 tensor of ``image`` (image units) mapped to [-1, 1] by the stored normalizer."""
        return torch.from_numpy(np.ascontiguousarray(self.model.normalizer.forward(image)))[None, None]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


_FORMATS: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    """Add an export format to the registry."""
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> tuple[str, ...]:
    """Names of the export formats, in registration order."""
    return tuple(_FORMATS)


def get_format(name: str) -> ExportFormat:
    """The export format called ``name``; ValueError (one line) for an unknown name."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown export format {name!r}; expected one of {', '.join(sorted(_FORMATS))}") from None


def check_against_pytorch(job: ExportJob, run: Callable[[torch.Tensor], Any], title: str) -> float:
    """Run an exported model on the sample and on a crop of it; raise if it differs from PyTorch.

    ``run`` maps a (1, 1, H, W) float32 tensor on [-1, 1] to the exported model's output (a tensor
    or an array of the same shape). The crop takes 3 rows and 1 column off (at least 4×4), so one of
    the two sizes has a side that is not a multiple of 4, and the sizes differ (a traced model that
    only works at its traced size fails). Returns the largest difference; raises
    :class:`ExportError` when it exceeds :data:`TOLERANCE`.
    """
    h, w = job.sample.shape
    worst = 0.0
    for hh, ww in dict.fromkeys([(h, w), (max(4, h - 3), max(4, w - 1))]):
        x = job.network_input(job.sample[:hh, :ww])
        with torch.no_grad():
            want = job.predictor(x).numpy()
        try:
            got = np.asarray(run(x.clone()))
        except Exception as exc:  # e.g. a graph bound to its traced size: shape errors inside the runtime
            # the last line: TorchScript puts its graph's traceback first and the error itself last
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
            raise ExportError(job.out, f"the exported {title} model fails on a {hh}x{ww} image ({lines[-1]}); "
                                       "nothing was written") from None
        if got.shape != want.shape:
            raise ExportError(job.out, f"the exported {title} model returns shape {got.shape} for an input of "
                                       f"{hh}x{ww}, expected {want.shape}; nothing was written")
        diff = float(np.max(np.abs(got.astype(np.float64) - want)))
        if not diff <= TOLERANCE:
            raise ExportError(job.out, f"the exported {title} model differs from PyTorch by {diff:.2e} on a "
                                       f"{hh}x{ww} image (tolerance {TOLERANCE:g}); nothing was written")
        worst = max(worst, diff)
    return worst


def export(model: Denoiser | str | os.PathLike, format: str, out: str | os.PathLike, *, overwrite: bool = False,
           sample: np.ndarray | str | os.PathLike | None = None, gamma: float | None = None,
           weights: str | None = None, name: str | None = None, force: bool = False) -> Path:
    """Export a trained model to ``out`` as ``format`` (``bmz``, ``torchscript`` or ``onnx``).

    Parameters
    ----------
    model : a :class:`~iscl.api.Denoiser`, or a run / checkpoint folder (as :func:`iscl.load` takes).
    format : ``bmz``: a BioImage Model Zoo package (``.zip``; ``pytorch_state_dict`` and
        ``torchscript`` weights, the normalizer as pre/post-processing, test tensors, cover, README);
        ``torchscript``: a traced module (``.pt``); ``onnx``: an ONNX graph (``.onnx``, opset 18).
        TorchScript and ONNX take and return (1, 1, H, W) float32 on [-1, 1] (normalize with the
        run's normalizer yourself, see :class:`~iscl.data.normalize.Normalizer`); the zoo package
        takes and returns image units.
    out : the file to write.
    overwrite : replace an existing ``out``.
    sample : a noisy image (a file iscl reads, or an array (H, W), or (Z, H, W) whose middle slice
        is used) in the images' own units: the zoo package's test input and cover, and the image
        every export is checked on; centre-cropped to at most :data:`SAMPLE_SIDE`. None: a synthetic
        image in the normalizer's window (a weaker check and a poorer cover: give one).
    gamma, weights : the blend weight and which F (``swa`` or ``raw``); None: the model's
        ``config.predict`` settings. Test-time augmentation is not exported (one pass per image).
    name : the zoo package's model name (default ``ISCL denoiser``).
    force : export a model that training marked as collapsed.

    Returns
    -------
    pathlib.Path : ``out``.

    Raises
    ------
    ValueError : an unknown format, gamma outside [0, 1], weights not swa/raw.
    ExportError : ``out`` exists (without ``overwrite``) or is a folder, or the exported model does
        not reproduce PyTorch; nothing is written.
    MissingExportDependency : the format's libraries are not installed (``pip install 'iscl[export]'``).
    iscl.training.checkpoint.CheckpointError : ``model`` is not a run or checkpoint folder.
    """
    fmt = get_format(format)
    out = Path(out)
    if out.is_dir():
        raise ExportError(out, f"is a folder; give the file to write, e.g. {out / ('model' + fmt.suffix)}")
    if os.path.lexists(out) and not overwrite:
        raise ExportError(out, "already exists; pass --overwrite (overwrite=True) to replace it")
    if gamma is not None and not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1]; got {gamma}")
    if weights not in (None, "swa", "raw"):
        raise ValueError(f"weights must be swa or raw; got {weights!r}")
    fmt.check_requirements()
    job = _make_job(model, out, sample=sample, gamma=gamma, weights=weights, name=name, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = atomic.temp_path(out, "export")
    work.mkdir()
    try:
        built = work / f"model{fmt.suffix}"
        fmt.write(job, built)
        with open(built, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            atomic.publish_file(built, out, overwrite=overwrite)
        except atomic.AlreadyExistsError:
            raise ExportError(out, "appeared while exporting (another process?); nothing was written") from None
        atomic.fsync_dir(out.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _make_job(model: Any, out: Path, *, sample: Any, gamma: float | None, weights: str | None,
              name: str | None, force: bool) -> ExportJob:
    from iscl.api import Denoiser, load
    from iscl.exporters.module import IsclPredictor

    denoiser = model if isinstance(model, Denoiser) else load(model, force=force)
    gamma = denoiser.config.predict.gamma if gamma is None else float(gamma)
    which = weights or denoiser.config.predict.weights
    predictor = IsclPredictor(denoiser.config.network, gamma)
    F_net = denoiser.F_swa if which == "swa" else denoiser.F_raw
    predictor.F.load_state_dict(F_net.state_dict())
    predictor.H.load_state_dict(denoiser.H.state_dict())
    predictor.eval().requires_grad_(False)
    image, source = _sample_image(sample, denoiser)
    return ExportJob(predictor, denoiser, gamma, which, image, source, out, name)


def _sample_image(sample: Any, model: Denoiser) -> tuple[np.ndarray, str]:
    """The (H, W) float32 sample in image units, centre-cropped to SAMPLE_SIDE, and where it came from."""
    from iscl.data.finite import require_finite
    from iscl.data.io import open_slices

    if sample is None:
        return _synthetic_sample(model.normalizer.low, model.normalizer.high), (
            f"synthetic ({SYNTHETIC_SIDE}x{SYNTHETIC_SIDE} pattern with noise in the training intensity window; "
            "no sample image was given)")
    if isinstance(sample, (str, os.PathLike)):
        with open_slices(sample) as slices:
            a = slices[slices.n_slices // 2]
        source = f"{Path(sample).name}" + (f", slice {slices.n_slices // 2}" if slices.n_slices > 1 else "")
    else:
        a = np.asarray(sample)
        if a.ndim == 3:
            a = a[a.shape[0] // 2]
        source = "an array given to iscl.export"
        if a.ndim != 2:
            raise ValueError(f"sample: expected a 2-D image or a (Z, H, W) stack, got shape {np.shape(sample)}")
        if a.dtype.kind not in "uif":
            raise TypeError(f"sample: expected a real-valued image, got dtype {a.dtype}")
        require_finite(a, "sample")
    if min(a.shape) < 4:
        raise ValueError(f"sample: an image of {a.shape[0]}x{a.shape[1]} pixels is too small (at least 4x4)")
    h, w = a.shape
    y0, x0 = max(0, (h - SAMPLE_SIDE) // 2), max(0, (w - SAMPLE_SIDE) // 2)
    a = a[y0 : y0 + SAMPLE_SIDE, x0 : x0 + SAMPLE_SIDE]
    if a.shape != (h, w):
        source += f", centre {a.shape[0]}x{a.shape[1]} crop of {h}x{w}"
    return np.ascontiguousarray(a, dtype=np.float32), source


def _synthetic_sample(low: float, high: float) -> np.ndarray:
    """A seeded (SYNTHETIC_SIDE, SYNTHETIC_SIDE) float32 image in [low, high]: smooth shapes plus noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SYNTHETIC_SIDE, 0:SYNTHETIC_SIDE] / SYNTHETIC_SIDE
    clean = 0.5 + 0.2 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy)
    for cy, cx, r in rng.uniform(0.15, 0.85, (4, 3)) * (1, 1, 0.25):
        clean += 0.25 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    noisy = np.clip(clean + rng.normal(0.0, 0.08, clean.shape), 0.0, 1.0)
    return (low + (high - low) * noisy).astype(np.float32)


# the format modules register themselves; a new format is a new module named here
from iscl.exporters import bmz, onnx, torchscript  # noqa: E402, F401  (order: registration order)
