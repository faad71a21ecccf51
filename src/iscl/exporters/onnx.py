"""ONNX: the prediction module exported with ``torch.onnx.export``, opset 18, dynamic height and width.

Input ``noisy`` and output ``denoised``: (1, 1, H, W) float32 on [-1, 1], H and W dynamic (≥ 4).
The graph is checked with onnxruntime at two sizes (one with sides that are not multiples of 4)
against PyTorch before the file is published. Opset 18 is run by onnxruntime ≥ 1.14; the weights
are stored inside the one ``.onnx`` file, and so are the configuration and the normalizer that maps
images to [-1, 1] (metadata property ``iscl_config.json``).

The exporter is torch's TorchScript-based one (``dynamo=False``): it traces
:class:`~iscl.exporters.module.IsclPredictor`, whose shape arithmetic is written to be traced (see
its notes), so the graph works at every size, which the check confirms. torch marks that exporter
as deprecated; the ``torch.export``-based one (``dynamo=True``, with ``dynamic_shapes``) also
exported this module in a trial (outputs within 1e-6) but took 10-20 s instead of 0.6 s for the
test networks on one busy CPU thread (torch 2.13). Switch when the legacy exporter goes away: only
the ``torch.onnx.export`` call below changes, and the check stays.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from iscl.exporters import ExportError, ExportFormat, ExportJob, check_against_pytorch, register
from iscl.zoo import PACKAGE_CONFIG

__all__ = ["write_onnx", "OPSET"]

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "noisy", "denoised"


def write_onnx(job: ExportJob, path: Path) -> float:
    """Export ``job.predictor`` to ``path`` with dynamic height and width, then check it with onnxruntime.

    Returns the largest difference from PyTorch (see :func:`~iscl.exporters.check_against_pytorch`).
    """
    import onnx
    import onnxruntime

    x = job.network_input(job.sample)
    dynamic = {"height": 2, "width": 3}
    with torch.no_grad(), warnings.catch_warnings():
        # size checks inside the networks become constants in the trace; they hold at every size >= 4
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the exporter choice: see the module notes
        warnings.filterwarnings("ignore", message=r".*[Cc]onstant folding")  # shape inference's notes on slices
        # no constant folding: with BIN parameters that are equal (rho clamped at 1, untrained gamma)
        # the exporter's folding and de-duplication leave a node reading an undefined value (torch
        # 2.13); onnxruntime folds constants itself when it loads the graph
        torch.onnx.export(job.predictor, (x,), str(path), dynamo=False, opset_version=OPSET,
                          do_constant_folding=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={name: {axis: dim for dim, axis in dynamic.items()}
                                        for name in (INPUT_NAME, OUTPUT_NAME)})
    # the run's configuration and normalizer travel inside the file, as metadata property "iscl_config.json"
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {PACKAGE_CONFIG: json.dumps(job.document())})
    onnx.save(model, str(path))
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types: an invalid graph
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(job.out, f"onnxruntime cannot load the exported graph ({first}); "
                                   "nothing was written") from None
    return check_against_pytorch(job, lambda t: session.run(None, {INPUT_NAME: t.numpy()})[0], "ONNX")


register(ExportFormat("onnx", "ONNX", ".onnx", requires=("onnx", "onnxruntime"), write=write_onnx))
