"""BioImage Model Zoo package (``bioimageio.spec`` model 0.5), for Fiji/deepImageJ, ilastik, QuPath, napari.

The ``.zip`` holds:

* ``weights.pt``: ``pytorch_state_dict`` weights of :class:`~iscl.exporters.module.IsclPredictor`
  (architecture imported from ``iscl.exporters.module``; consumers need iscl installed), and
  ``weights_torchscript.pt``, the same module traced (``torchscript``, parent ``pytorch_state_dict``;
  needs only PyTorch);
* the run's normalizer as linear pre- and post-processing: ``scale_linear`` with
  ``gain = 2 / (high - low)``, ``offset = -(high + low) / (high - low)`` on the way in, and its
  inverse, ``gain = (high - low) / 2``, ``offset = (high + low) / 2``, on the way out. iscl's
  normalizer does not clip on the way in, and the blend clips to [-1, 1], so the output already
  lies in [low, high]: no clip step. (iscl also rounds and clips to the input's integer dtype;
  the package returns float32.)
* ``test_input.npy`` / ``test_output.npy`` (the sample and iscl's own prediction of it, in image
  units; the same pair as ``sample_*.tif``), ``cover.png`` (sample | denoised), ``README.md``
  (what BIN means for consumers);
* ``iscl_config.json`` (attachment): configuration, normalizer, info and the weights file name,
  which :func:`iscl.load` reads back (:mod:`iscl.zoo`).

Axes are (batch, channel, y, x) with batch fixed to 1 and y, x any size ≥ 4. The package is tested
with ``bioimageio.core.test_model`` before it is published (offline: every file is local).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import numpy as np
import tifffile
import torch

from iscl._version import __version__
from iscl.exporters import TOLERANCE, ExportError, ExportFormat, ExportJob, register
from iscl.exporters.module import MIN_SIDE
from iscl.exporters.torchscript import write_torchscript
from iscl.zoo import PACKAGE_CONFIG

__all__ = ["write_bmz", "run_zoo_test", "PAPER_DOI", "INPUT_ID", "OUTPUT_ID"]

PAPER_DOI = "10.1109/TMI.2021.3096142"
PAPER = ("Lee K., Jeong W.-K. ISCL: Interdependent Self-Cooperative Learning for Unpaired Image Denoising. "
         "IEEE Transactions on Medical Imaging 40(11), 2021")
INPUT_ID, OUTPUT_ID = "noisy", "denoised"
WEIGHTS_FILE, TORCHSCRIPT_FILE = "weights.pt", "weights_torchscript.pt"
COVER_HEIGHT = 256  # pixels; the cover is 2:1, the zoo's recommended aspect


def _check_pydantic() -> None:
    """Refuse, in one line, the pydantic that bioimageio.spec 0.5.12 cannot run with (see pyproject's extra)."""
    import re
    from importlib.metadata import version

    def release(name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", version(name))[:3])

    pyd, spec = version("pydantic"), version("bioimageio.spec")
    if release("pydantic") >= (2, 14) and release("bioimageio.spec") <= (0, 5, 12):
        raise ImportError(f"bioimageio.spec {spec} cannot build model packages with pydantic {pyd}; "
                          "pip install 'pydantic<2.14' (or pip install 'iscl[export]', which pins it)")


def write_bmz(job: ExportJob, path: Path) -> None:
    """Build the package in ``path.parent`` (the export's private folder), test it, zip it to ``path``."""
    from bioimageio.spec import save_bioimageio_package

    _check_pydantic()
    files = path.parent / "files"
    files.mkdir()
    normalizer = job.model.normalizer
    torch.save(job.predictor.state_dict(), files / WEIGHTS_FILE)
    write_torchscript(job, files / TORCHSCRIPT_FILE)  # checked at two sizes against PyTorch
    test_in = job.sample[None, None]
    # iscl's own one-pass whole-image prediction in image units: what iscl.load(package).denoise(image, tta=False)
    # gives too (a model trained with fast denoises with TTA by default; the exported network is one pass)
    test_out = job.model.predict(job.sample, gamma=job.gamma, weights=job.weights, tile=None, tta=False,
                                 precision="fp32")["denoised"][None, None].astype(np.float32)
    np.save(files / "test_input.npy", test_in)
    np.save(files / "test_output.npy", test_out)
    # sample tensors: the same pair as TIFF, for people (and the zoo's FAIR check; imageio reads them)
    tifffile.imwrite(files / "sample_input.tif", job.sample)
    tifffile.imwrite(files / "sample_output.tif", test_out[0, 0])
    _write_cover(files / "cover.png", job.sample, test_out[0, 0], normalizer.low, normalizer.high)
    (files / "README.md").write_text(_readme(job))
    (files / PACKAGE_CONFIG).write_text(json.dumps(job.document(WEIGHTS_FILE), indent=2) + "\n")
    descr = _describe(job, files, test_out)
    save_bioimageio_package(descr, output_path=path)
    summary = run_zoo_test(path)
    if summary.status != "passed":
        raise ExportError(job.out, f"the package fails bioimageio.core's test ({_first_failure(summary)}); "
                                   "nothing was written")
    shutil.rmtree(files)


def run_zoo_test(path: str | Path):
    """``bioimageio.core.test_model`` on a package: the zoo's own test (format validation, both weight
    formats reproduce the test output, several input sizes). Returns its ``ValidationSummary``.

    Offline: every file the package names is inside it, and nothing else is fetched.
    """
    from bioimageio.core import test_model

    _check_pydantic()
    return test_model(Path(path))


def _describe(job: ExportJob, files: Path, test_out: np.ndarray):
    """The ``bioimageio.spec`` 0.5 ModelDescr of the package (files referenced by absolute path)."""
    from bioimageio.spec.model import v0_5 as spec

    low, high = job.model.normalizer.low, job.model.normalizer.high
    authors, license_id = _project_metadata()
    space = spec.ParameterizedSize(min=MIN_SIDE, step=1)
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID),
        description="noisy image in its own units (one image, batch 1; see README)",
        axes=[spec.BatchAxis(size=1), spec.ChannelAxis(channel_names=[spec.Identifier(INPUT_ID)]),
              spec.SpaceInputAxis(id=spec.AxisId("y"), size=space),
              spec.SpaceInputAxis(id=spec.AxisId("x"), size=space)],
        test_tensor=spec.FileDescr(source=files / "test_input.npy"),
        sample_tensor=spec.FileDescr(source=files / "sample_input.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(
            gain=2.0 / (high - low), offset=-(high + low) / (high - low)))],
    )]

    def same_as_input(axis: str):
        return spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(axis))

    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID),
        description="denoised image in the input's units",
        axes=[spec.BatchAxis(size=1), spec.ChannelAxis(channel_names=[spec.Identifier(OUTPUT_ID)]),
              spec.SpaceOutputAxis(id=spec.AxisId("y"), size=same_as_input("y")),
              spec.SpaceOutputAxis(id=spec.AxisId("x"), size=same_as_input("x"))],
        test_tensor=spec.FileDescr(source=files / "test_output.npy"),
        sample_tensor=spec.FileDescr(source=files / "sample_output.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=[spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(
            gain=(high - low) / 2.0, offset=(high + low) / 2.0))],
    )]
    torch_version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=files / WEIGHTS_FILE,
            architecture=spec.ArchitectureFromLibraryDescr(
                callable=spec.Identifier("IsclPredictor"), import_from="iscl.exporters.module",
                kwargs={"network": job.model.config.network.model_dump(mode="json"), "gamma": job.gamma}),
            pytorch_version=torch_version),
        torchscript=spec.TorchscriptWeightsDescr(source=files / TORCHSCRIPT_FILE, pytorch_version=torch_version,
                                                 parent="pytorch_state_dict"),
    )
    # the export's own tolerance (TOLERANCE on [-1, 1]) in image units, where the zoo allows it
    atol = TOLERANCE * (high - low) / 2.0
    tolerance = ([spec.ReproducibilityTolerance(absolute_tolerance=atol, relative_tolerance=0.0)]
                 if atol <= 0.01 * float(test_out.max()) else [])
    return spec.ModelDescr(
        name=_model_name(job.name),
        description=(f"Unpaired denoising with ISCL (Lee & Jeong, IEEE TMI 2021), trained with iscl {__version__}: "
                     f"{job.gamma:g} F(x) + {1 - job.gamma:g} (x - H(x)). Batch-instance normalization uses each "
                     "image's own statistics: run whole images, batch 1 (see README)."),
        authors=[spec.Author(name=a) for a in authors],
        cite=[spec.CiteEntry(text=PAPER, doi=spec.Doi(PAPER_DOI))],
        license=license_id,
        documentation=spec.FileDescr(source=files / "README.md"),
        covers=[spec.FileDescr(source=files / "cover.png")],
        attachments=[spec.FileDescr(source=files / PACKAGE_CONFIG)],
        tags=["denoising", "unpaired", "iscl", "2d", "pytorch", "self-supervised"],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        config=spec.Config(bioimageio=spec.BioimageioConfig(reproducibility_tolerance=tolerance)),
    )


def _project_metadata() -> tuple[list[str], str]:
    """Authors and license of the installed iscl distribution (from pyproject.toml)."""
    try:
        meta = importlib.metadata.metadata("iscl")
    except importlib.metadata.PackageNotFoundError:
        raise ExportError("iscl", "is not installed as a distribution (pip install -e .); its authors and "
                                  "license, which the package records, come from there") from None
    authors = [a.strip() for field in (meta.get_all("Author") or []) for a in field.split(",") if a.strip()]
    license_id = meta.get("License-Expression") or meta.get("License") or ""
    return authors or ["iscl developers"], license_id


def _model_name(name: str | None) -> str:
    """The zoo allows letters, digits, ``_+- ()`` in a name, 5 to 128 characters."""
    text = re.sub(r"[^A-Za-z0-9_+\- ()]+", " ", name or "ISCL denoiser").strip()
    return (text if len(text) >= 5 else f"ISCL {text}".strip())[:128]


def _write_cover(path: Path, noisy: np.ndarray, denoised: np.ndarray, low: float, high: float) -> None:
    """Noisy | denoised centre squares side by side (2:1), both shown with the normalizer's window."""
    from PIL import Image

    side = min(noisy.shape)
    y0, x0 = (noisy.shape[0] - side) // 2, (noisy.shape[1] - side) // 2
    pair = [a[y0 : y0 + side, x0 : x0 + side] for a in (noisy, denoised)]
    grey = np.clip((np.concatenate(pair, axis=1) - low) / (high - low), 0.0, 1.0)
    img = Image.fromarray(np.rint(grey * 255).astype(np.uint8))
    img.resize((2 * COVER_HEIGHT, COVER_HEIGHT), Image.Resampling.NEAREST).save(path)


def _first_failure(summary) -> str:
    for d in summary.details:
        if d.status == "failed":
            errors = "; ".join(" ".join(str(e.msg).split()) for e in d.errors[:1])
            return f"{d.name}: {errors}" if errors else d.name
    return summary.status


def _readme(job: ExportJob) -> str:
    n = job.model.normalizer
    info = job.model.info
    net = job.model.config.network
    return f"""# ISCL denoiser

Unpaired image denoising with ISCL (Interdependent Self-Cooperative Learning; Lee & Jeong, IEEE
Transactions on Medical Imaging 2021, doi:{PAPER_DOI}), trained and exported with iscl {__version__}.

The model returns `clip({job.gamma:g} F(x) + {1 - job.gamma:g} (x - H(x)), -1, 1)` in the networks' range:
F is the generator (noisy to clean), H the noise extractor, and x the input mapped to [-1, 1].

## Input and output

* `{INPUT_ID}`: one 2-D single-channel image, axes (batch, channel, y, x) = (1, 1, H, W), H and W at
  least {MIN_SIDE} (any size; no multiple of 4 needed), float32 in the image's own units.
* `{OUTPUT_ID}`: the same shape, float32 in the same units.
* Pre-processing maps the training intensity window [{n.low:g}, {n.high:g}] ({n.source}) linearly
  to [-1, 1] (`scale_linear`, no clipping); post-processing maps the result back. The output lies
  within [{n.low:g}, {n.high:g}].

## Batch-instance normalization: run whole images, batch 1

The networks use batch-instance normalization (BIN) without running statistics, as the original
ISCL code does: every feature map is normalized by the statistics of the image it is given.
Consequences for tools that run this model:

* **Run whole images with batch size 1.** A batch of several images is normalized together and
  changes each result; the package fixes the batch axis to 1.
* **Do not let the tool tile the image.** A tool that cuts an image into tiles (deepImageJ,
  bioimageio.core's blockwise prediction, QuPath and napari plugins for large images) normalizes
  each tile by its own statistics, which gives visible seams and a different result from the
  trained model. For images too large to run whole, use iscl itself: it measures the whole image's
  statistics first and then predicts tile by tile with them
  (`iscl denoise this-package.zip big.tif --out denoised.tif --tile 512`), or in Python
  `iscl.load("this-package.zip").denoise(image, tile=512)`.
* Test-time augmentation (iscl's `--tta`) is not part of the exported model.

## Validation

The test tensors (`test_input.npy`, `test_output.npy`) are iscl's own prediction of the sample
image ({job.sample_source}); `bioimageio.core test` reproduces them from both weight formats. To
measure the denoising quality, score the model on paired noisy/clean images of your own data:
`iscl evaluate this-package.zip --clean clean/ --noisy noisy/ --out report/` (PSNR and SSIM).

## Training

Run: step {info.get("step", "?")} of {info.get("total_steps", "?")}, preset `{job.model.config.preset}`, F weights
`{job.weights}`. Networks: generator width {net.generator_width}, {net.generator_res_blocks} residual
blocks{", residual output" if net.residual_generators else ""}; extractor width {net.extractor_width},
{net.extractor_layers} layers. The full configuration and the normalizer are in `{PACKAGE_CONFIG}`,
from which `iscl.load` rebuilds the model.

## Weights

* `pytorch_state_dict` (`{WEIGHTS_FILE}`): `IsclPredictor` from `iscl.exporters.module` (needs iscl).
* `torchscript` (`{TORCHSCRIPT_FILE}`): the same module traced; needs only PyTorch.

## Citation

{PAPER}. doi:{PAPER_DOI}
"""


register(ExportFormat("bmz", "BioImage Model Zoo package", ".zip",
                      requires=("bioimageio.core", "bioimageio.spec", "PIL"), write=write_bmz))
