"""iscl: unpaired image denoising (ISCL, Lee & Jeong, IEEE TMI 2021) in PyTorch.

The public surface is small; heavy modules (torch networks, simulators) are imported on first use so
that ``import iscl`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iscl._version import __version__

__all__ = ["Config", "load", "train", "denoise", "export", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from iscl.api import denoise, load, train
    from iscl.config import Config
    from iscl.exporters import export


def __getattr__(name: str) -> Any:
    if name in ("load", "train", "denoise"):
        from iscl import api

        return getattr(api, name)
    if name == "export":
        from iscl.exporters import export

        return export
    if name == "Config":
        from iscl.config import Config

        return Config
    raise AttributeError(f"module 'iscl' has no attribute {name!r}")
