"""Read back the BioImage Model Zoo packages that ``iscl export --format bmz`` writes.

Such a package (a ``.zip``, or the folder it was unpacked into) holds, besides the zoo's own files,
the attachment :data:`PACKAGE_CONFIG`: the run's configuration, its fitted normalizer and the name
of the ``pytorch_state_dict`` weights file (:class:`iscl.exporters.module.IsclPredictor`'s state
dict, keys ``F.*`` and ``H.*``). That is all :func:`iscl.load` needs, so reading a package needs
neither ``bioimageio.core`` nor ``bioimageio.spec`` (the ``export`` extra), and executes no code:
the weights are loaded with ``torch.load(weights_only=True)``.

This unit sits below :mod:`iscl.api` (which calls it) and above :mod:`iscl.config`; the writer,
which needs the API, is :mod:`iscl.exporters.bmz`.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from iscl._version import __version__
from iscl.config import FORMAT_VERSION, Config
from iscl.data.normalize import Normalizer
from iscl.errors import IsclError

__all__ = ["PACKAGE_CONFIG", "PackageError", "is_package", "read_package", "package_document"]

#: the attachment with iscl's configuration, normalizer and weights file name
PACKAGE_CONFIG = "iscl_config.json"


class PackageError(IsclError, ValueError):
    """A model package cannot be used by iscl; ``str()`` is one line naming the package."""


def is_package(path: str | os.PathLike) -> bool:
    """True for a zip file, or a folder holding :data:`PACKAGE_CONFIG` (an unpacked package)."""
    p = Path(path)
    if p.is_dir():
        return (p / PACKAGE_CONFIG).is_file()
    return p.is_file() and zipfile.is_zipfile(p)


def package_document(config: Config, normalizer: Normalizer, info: dict[str, Any],
                     weights_file: str | None = None) -> dict:
    """The JSON content of :data:`PACKAGE_CONFIG` (written by the exporter, read by :func:`read_package`).

    ``weights_file``: the package's ``pytorch_state_dict`` file; None where the document describes
    a TorchScript or ONNX file (stored inside it) instead of a package.
    """
    doc = {
        "format_version": FORMAT_VERSION,
        "iscl_version": __version__,
        "config": config.model_dump(mode="json"),
        "normalizer": normalizer.model_dump(mode="json"),
        "info": info,
    }
    if weights_file is not None:
        doc["weights"] = weights_file
    return doc


def read_package(path: str | os.PathLike) -> tuple[Config, Normalizer, dict[str, Any], dict[str, torch.Tensor]]:
    """Read an iscl model package.

    Returns
    -------
    config, normalizer, info : as :func:`iscl.training.checkpoint.read_checkpoint_config` returns them.
    weights : the flat ``F.*`` / ``F_raw.*`` / ``H.*`` tensor map that
        :meth:`iscl.api.Denoiser.from_weights` takes; the package stores one F (the exported one), so
        ``F_raw.*`` are the same tensors as ``F.*``.

    Raises
    ------
    PackageError
        Not a zip, not an iscl package (no :data:`PACKAGE_CONFIG`: a zoo model from elsewhere), a
        configuration of another format version, or weights that are not a state dict of tensors.
    """
    p = Path(path)
    try:
        doc = json.loads(_read_member(p, PACKAGE_CONFIG, what="iscl configuration").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(p, f"{PACKAGE_CONFIG} is unreadable ({exc})") from None
    if not isinstance(doc, dict):
        raise PackageError(p, f"{PACKAGE_CONFIG} is not a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise PackageError(p, f"iscl configuration format version {version!r} is not supported (this iscl "
                              f"{__version__} reads version {FORMAT_VERSION}); use the iscl version that wrote it")
    try:
        config = Config.model_validate(doc["config"])
        normalizer = Normalizer.model_validate(doc["normalizer"])
        weights_file = str(doc["weights"])
    except (KeyError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PackageError(p, f"invalid {PACKAGE_CONFIG} ({first})") from None
    raw = _read_member(p, weights_file, what="pytorch_state_dict weights")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file, or pickled objects that weights_only refuses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PackageError(p, f"{weights_file}: refused to load ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PackageError(p, f"{weights_file}: not a state dict of tensors")
    weights = dict(state)
    weights.update({"F_raw." + k[2:]: v for k, v in state.items() if k.startswith("F.")})
    info = dict(doc.get("info", {}))
    info["package"] = str(p)
    return config, normalizer, info, weights


def _read_member(package: Path, name: str, what: str) -> bytes:
    """The bytes of file ``name`` of a zip package or an unpacked package folder."""
    if package.is_dir():
        f = package / name
        if not f.is_file():
            raise PackageError(package, f"no {name} ({what}); not a model package written by iscl export")
        return f.read_bytes()
    try:
        with zipfile.ZipFile(package) as zf:
            names = zf.namelist()
            if name not in names:
                raise PackageError(package, f"no {name} ({what}) in the package; not a model package written by "
                                            "iscl export (run other zoo models with bioimageio.core)")
            return zf.read(name)
    except FileNotFoundError:
        raise PackageError(package, "no such file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(package, f"not a readable zip file ({exc})") from None
