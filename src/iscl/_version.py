"""The installed package's version, in a leaf module so that any layer may record it."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("iscl")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
