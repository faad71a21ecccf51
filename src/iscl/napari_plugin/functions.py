"""The plugin's plain functions: no Qt, no napari; usable from scripts and napari-workflows.

Example
-------
>>> from iscl.napari_plugin import denoise
>>> restored = denoise(noisy, "runs/em")                 # (H, W) or (..., H, W), same shape and dtype  # doctest: +SKIP
>>> noise = denoise(noisy, "model.zip", output="noise")  # H's noise map, float32                       # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from iscl.api import Denoiser, Output, load
from iscl.errors import IsclError
from iscl.jobs import auto_tile

__all__ = ["denoise", "denoise_array", "OUTPUTS", "devices", "error_text"]

#: the outputs offered to users, with their labels: the blend, F alone, the bypass, H's noise map
OUTPUTS: dict[str, str] = {
    "denoised": "denoised (blend)",
    "generator": "F(x)",
    "bypass": "x − H(x)",
    "noise": "noise map H(x)",
}


def devices() -> list[str]:
    """The torch devices available here: ``cpu``, then ``cuda`` / ``mps`` when present."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def error_text(exc: BaseException) -> str:
    """One line for a user: iscl's own errors as they are, anything else with its type."""
    if isinstance(exc, (IsclError, ValueError, TypeError, OSError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(line.strip() for line in lines) or type(exc).__name__


def denoise_array(model: Denoiser, image: np.ndarray, *, output: Output = "denoised", tile: int | None = None,
                  overlap: int = 32, gamma: float | None = None,
                  on_progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Denoise an image of shape (..., H, W) with a loaded model, each 2-D plane on its own.

    Parameters
    ----------
    model : a :class:`~iscl.api.Denoiser` (from :func:`iscl.load` or :func:`iscl.train`).
    image : real-valued array (..., H, W), H and W >= 4; leading axes (Z, T, ...) are looped over.
    output : ``denoised`` (the blend), ``generator`` (F(x)), ``bypass`` (x − H(x)) or ``noise``.
    tile : tile side in pixels; ``None``: whole planes up to 2048², tiles of 512 above (as ``iscl
        denoise``); 0: always whole planes.
    overlap, gamma : as in :meth:`iscl.api.Denoiser.predict`.
    on_progress : called with the fraction done (0..1) after every plane and tile.

    Returns
    -------
    numpy.ndarray
        The input's shape and dtype (``noise``: float32, image units); equal to
        ``model.denoise(image, output=output)`` for 2-D and 3-D arrays of at most 2048² pixels per plane.
    """
    a = np.asarray(image)
    if a.ndim < 2:
        raise ValueError(f"denoise: expected an image (..., H, W), got shape {a.shape}")
    h, w = a.shape[-2:]
    tile = auto_tile(tile, h, w)  # the rule iscl denoise uses
    planes = a.reshape(-1, h, w)
    n = len(planes)
    out = []
    for i, plane in enumerate(planes):
        def on_tile(done: int, total: int, i: int = i) -> None:
            if on_progress is not None and total:
                on_progress((i + done / total) / n)

        out.append(model.predict(plane, outputs=(output,), gamma=gamma, tile=tile, overlap=overlap,
                                 on_tile=on_tile)[output])
        if on_progress is not None:
            on_progress((i + 1) / n)
    return np.stack(out).reshape(a.shape)


def denoise(image: np.ndarray, run: str | os.PathLike, *, output: Output = "denoised", tile: int | None = None,
            overlap: int = 32, gamma: float | None = None, device: str = "cpu", force: bool = False) -> np.ndarray:
    """Denoise ``image`` with the model in ``run``: a run folder, a checkpoint folder or a zoo package (``.zip``).

    ``iscl.load(run).denoise(image)`` for any number of leading axes (see :func:`denoise_array` for
    ``output``, ``tile``, ``overlap``, ``gamma``); ``force`` uses a model marked collapsed. Returns an
    array of the input's shape and dtype (``noise``: float32).
    """
    return denoise_array(load(Path(run), device=device, force=force), image, output=output, tile=tile,
                         overlap=overlap, gamma=gamma)
