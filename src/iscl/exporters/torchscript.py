"""TorchScript: the prediction module traced with ``torch.jit.trace`` (a ``.pt`` file for ``torch.jit.load``).

The traced module takes and returns (1, 1, H, W) float32 on [-1, 1], any H, W ≥ 4: tracing records
the shape arithmetic of :class:`~iscl.exporters.module.IsclPredictor`, and the export checks the
loaded file at two sizes (one with sides that are not multiples of 4) against PyTorch. The file also
holds ``iscl_config.json`` (the configuration and the normalizer that maps images to [-1, 1]):
``extra = {"iscl_config.json": ""}; torch.jit.load(path, _extra_files=extra)``.

Tracing, not scripting: the networks use Python-level conveniences (the BIN statistics hook, the
in-place prediction path) that ``torch.jit.script`` cannot compile, and tracing records exactly the
prediction path. ``torch.jit.trace`` is deprecated in favour of ``torch.export``, but TorchScript is
the format deepImageJ, the BioImage Model Zoo and C++ (libtorch) consumers load today.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from iscl.exporters import ExportFormat, ExportJob, check_against_pytorch, register
from iscl.zoo import PACKAGE_CONFIG

__all__ = ["write_torchscript"]


def write_torchscript(job: ExportJob, path: Path) -> float:
    """Trace ``job.predictor`` on the sample, save it to ``path``, load it back and check it.

    Returns the largest difference from PyTorch (see :func:`~iscl.exporters.check_against_pytorch`).
    """
    x = job.network_input(job.sample)
    with torch.no_grad(), warnings.catch_warnings():
        # the size checks inside the networks become constants in the trace; they hold at every size >= 4
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        # check_trace re-traces at the same size only; check_against_pytorch below checks two sizes
        traced = torch.jit.trace(job.predictor, x, check_trace=False)
    # the run's configuration and normalizer travel inside the file (torch.jit.load(..., _extra_files=...))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(save|load).* is deprecated")
        torch.jit.save(traced, str(path), _extra_files={PACKAGE_CONFIG: json.dumps(job.document())})
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return check_against_pytorch(job, lambda t: loaded(t).numpy(), "TorchScript")


register(ExportFormat("torchscript", "TorchScript", ".pt", requires=(), write=write_torchscript))
