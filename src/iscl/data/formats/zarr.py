"""Zarr (``*.zarr`` directories, v2 and v3) and OME-Zarr images, read through the :mod:`zarr` package (optional).

A plain Zarr array is read as it is stored: ``(H, W)`` or ``(Z, H, W)``. An OME-Zarr image (a group with
OME-NGFF ``multiscales`` metadata: NGFF 0.4 in ``attrs["multiscales"]``, usually a Zarr v2 store; NGFF 0.5
in ``attrs["ome"]["multiscales"]``, a Zarr v3 store) is read through the full-resolution level of its first
multiscale, ``datasets[0].path``. Its axes must be ``(y, x)`` or ``(z, y, x)``, optionally after time and
channel axes of size 1 (``(t, c, z, y, x)`` with ``t = c = 1``); those leading axes are dropped on
reading (:class:`Planes`) and kept on writing.

This module only recognises, opens and reads; planning blocks over a volume and writing the denoised
store or OME-Zarr group (optionally on Dask) is :mod:`iscl.volumes`' job.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iscl.errors import ImageReadError

from . import Format, register
from ._common import (
    ImageInfo,
    ImageSlices,
    _check_channel,
    _check_fits_in_memory,
    _info,
    _make_layout,
)

_METADATA_FILES = (".zarray", "zarr.json", ".zgroup")


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a Zarr v2/v3 array or group directory (``*.zarr``, or one holding Zarr metadata)."""
    p = Path(path)
    return p.is_dir() and (p.suffix == ".zarr" or any((p / n).exists() for n in _METADATA_FILES))


def zarr_module() -> Any:
    """The :mod:`zarr` package, or an ImportError that says how to install it."""
    try:
        import zarr
    except ImportError:
        raise ImportError("Zarr volumes need the zarr package: pip install 'iscl[zarr]'") from None
    return zarr


@dataclass(frozen=True)
class OmeImage:
    """The OME-NGFF metadata of an OME-Zarr image group, as far as iscl reads and writes it.

    Attributes
    ----------
    group : pathlib.Path
        The group directory.
    version : str
        ``"0.4"``, ``"0.5"``, ... as stated in the metadata (``""`` when it states none).
    nested : bool
        True when ``multiscales`` sits under ``attrs["ome"]`` (NGFF 0.5), False for ``attrs["multiscales"]``.
    attrs : dict
        The group's attributes as stored (JSON-like).
    multiscale : dict
        The first ``multiscales`` entry, the one iscl reads.
    axes : list
        That entry's ``axes`` as stored (dicts with ``name``/``type``/``unit``, or names in NGFF 0.3).
    names : tuple of str
        The axis names, e.g. ``("z", "y", "x")``.
    dataset : str
        ``datasets[0].path``: the full-resolution array, relative to the group.
    transforms : list of dict
        ``datasets[0].coordinateTransformations`` (``scale``, then optionally ``translation``).
    """

    group: Path
    version: str
    nested: bool
    attrs: dict = field(repr=False)
    multiscale: dict = field(repr=False)
    axes: list
    names: tuple[str, ...]
    dataset: str
    transforms: list


class Planes:
    """A Zarr array seen without its leading size-1 (t, c) axes: shape ``(Z, H, W)`` or ``(H, W)``.

    Indexing (read and write) works as on the stored array, with the leading axes fixed at 0, and
    reads only the chunks touched.

    Attributes
    ----------
    array : zarr.Array
        The stored array (``lead`` more dimensions than ``shape``).
    path : pathlib.Path
        The array's own store directory (``group/0`` for an OME-Zarr image), which Dask workers open.
    lead : int
        Leading size-1 axes dropped (0 for a plain array).
    ome : OmeImage or None
        The OME-Zarr metadata when the array is an OME-Zarr image's full-resolution level.
    shape, chunks : tuple of int
        Without the leading axes.
    ndim : int
        2 or 3.
    dtype : numpy.dtype
    """

    def __init__(self, array: Any, path: str | os.PathLike, lead: int = 0, ome: OmeImage | None = None) -> None:
        self.array = array
        self.path = Path(path)
        self.lead = lead
        self.ome = ome
        self.shape = tuple(int(n) for n in array.shape[lead:])
        self.chunks = tuple(int(n) for n in array.chunks[lead:])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)

    @property
    def attrs(self) -> Any:
        return self.array.attrs

    @property
    def metadata(self) -> Any:
        return self.array.metadata

    def _index(self, idx: Any) -> tuple[Any, ...]:
        return (0,) * self.lead + (idx if isinstance(idx, tuple) else (idx,))

    def __getitem__(self, idx: Any) -> Any:
        return self.array[self._index(idx)]

    def __setitem__(self, idx: Any, value: Any) -> None:
        self.array[self._index(idx)] = value

    def __repr__(self) -> str:
        return f"Planes({str(self.path)!r}, shape={self.shape}, chunks={self.chunks}, dtype={self.dtype})"


def open_planes(path: str | os.PathLike, lead: int = 0, mode: str = "r") -> Planes:
    """Open the Zarr array stored at ``path`` (no checks) as :class:`Planes` with ``lead`` leading axes."""
    return Planes(zarr_module().open_array(str(path), mode=mode), path, lead)


def _open_node(p: Path) -> Any:
    zarr = zarr_module()
    try:
        return zarr.open(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for a missing/corrupt store
        raise ImageReadError(p, f"cannot open as Zarr ({type(exc).__name__}: {exc})") from None


def _multiscales(attrs: dict) -> tuple[Any, str, bool] | None:
    """(multiscales, version, nested) from a group's attributes, or None without OME-NGFF multiscales."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:  # NGFF 0.5
        return ome["multiscales"], str(ome.get("version", "")), True
    if "multiscales" in attrs:  # NGFF 0.4 and earlier
        ms = attrs["multiscales"]
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
        return ms, str(first.get("version", "")), False
    return None


def _axis_kind(axis: Any) -> str:
    """'time', 'channel', 'space' or '' (another type) for one NGFF axis (a dict, or a name in NGFF 0.3)."""
    name = str(axis.get("name", "") if isinstance(axis, dict) else axis).lower()
    kind = axis.get("type") if isinstance(axis, dict) else None
    if kind is None:  # the type is optional; the conventional names say it
        kind = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}.get(name, "")
    return str(kind)


def _leading_axes(group: Path, axes: list, names: tuple[str, ...], shape: tuple[int, ...]) -> int:
    """How many leading (t, c) axes of size 1 precede 2 or 3 space axes; a one-line error otherwise."""
    kinds = [_axis_kind(a) for a in axes]
    n_space = 0
    while n_space < len(kinds) and kinds[len(kinds) - 1 - n_space] == "space":
        n_space += 1
    lead = len(kinds) - n_space
    ok = (n_space in (2, 3) and kinds[:lead] in ([], ["time"], ["channel"], ["time", "channel"])
          and all(n == 1 for n in shape[:lead]))
    if not ok:
        raise ImageReadError(group, f"OME-Zarr axes ({', '.join(names)}) with shape {shape} are not supported; "
                                    "iscl denoises (y, x) or (z, y, x) images, optionally after t and c axes of size 1")
    return lead


def open_ome(path: str | os.PathLike, node: Any = None) -> Planes | None:
    """The full-resolution level of the OME-Zarr image at ``path`` as :class:`Planes`, or None when
    ``path`` is not a Zarr group with OME-NGFF ``multiscales`` metadata.

    Raises ``ImageReadError`` (one line, naming the group) for malformed metadata, a dataset that is
    missing or not an array, axes that do not match the array, and unsupported axes.
    """
    p = Path(path)
    node = _open_node(p) if node is None else node
    if hasattr(node, "shape"):
        return None
    attrs = dict(node.attrs)
    found = _multiscales(attrs)
    if found is None:
        return None
    multiscales, version, nested = found
    where = "attrs['ome']['multiscales']" if nested else "attrs['multiscales']"
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise ImageReadError(p, f"OME-Zarr {where} is not a non-empty list of multiscale entries")
    ms = multiscales[0]
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict) \
            or not isinstance(datasets[0].get("path"), str):
        raise ImageReadError(p, f"OME-Zarr {where}[0] has no datasets[0].path naming its full-resolution array")
    axes = ms.get("axes")
    if not isinstance(axes, list) or not axes:
        raise ImageReadError(p, f"OME-Zarr {where}[0] has no axes (NGFF before 0.3 is not supported)")
    names = tuple(str(a.get("name", "?") if isinstance(a, dict) else a) for a in axes)
    dataset = datasets[0]["path"]
    try:
        array = node[dataset]
    except KeyError:
        raise ImageReadError(p, f"OME-Zarr {where}[0] names dataset {dataset!r}, which is missing "
                                f"(no Zarr array at {p / dataset})") from None
    except Exception as exc:  # corrupt metadata of the dataset
        raise ImageReadError(p, f"cannot open OME-Zarr dataset {dataset!r} ({type(exc).__name__}: {exc})") from None
    if not hasattr(array, "shape"):
        raise ImageReadError(p, f"OME-Zarr dataset {dataset!r} is a group, not an array")
    shape = tuple(int(n) for n in array.shape)
    if len(shape) != len(axes):
        raise ImageReadError(p, f"OME-Zarr axes ({', '.join(names)}) do not match dataset {dataset!r} of "
                                f"shape {shape}")
    lead = _leading_axes(p, axes, names, shape)
    transforms = datasets[0].get("coordinateTransformations") or []
    ome = OmeImage(p, version, nested, attrs, ms, axes, names, dataset, list(transforms))
    return Planes(array, p / dataset, lead, ome)


def open_array(path: str | os.PathLike) -> Planes:
    """Open a Zarr array, or an OME-Zarr image's full-resolution level, read-only.

    Returns :class:`Planes`: ``(Z, H, W)`` or ``(H, W)``, real dtype. Raises ``ImageReadError``.
    """
    p = Path(path)
    node = _open_node(p)
    if hasattr(node, "shape"):
        planes = Planes(node, p)
    else:
        planes = open_ome(p, node)
        if planes is None:  # a plain group: name what it holds so the user can pick
            names = sorted(k for k, v in node.arrays())
            if names:
                raise ImageReadError(p, "is a Zarr group, not an array; denoise one of its arrays, "
                                        f"e.g. {p / names[0]}")
            images = sorted(k for k, g in node.groups() if _multiscales(dict(g.attrs)) is not None)
            hint = f"; its group {images[0]!r} is an OME-Zarr image: denoise {p / images[0]}" if images else ""
            raise ImageReadError(p, f"is a Zarr group with no arrays and no OME-Zarr multiscales metadata{hint}")
    where = f"OME-Zarr dataset {planes.ome.dataset!r}" if planes.ome is not None else "Zarr array"
    if planes.ndim not in (2, 3):
        raise ImageReadError(p, f"{where} of shape {planes.shape}: expected (H, W) or (Z, H, W)")
    if planes.dtype.kind not in "uif":
        raise ImageReadError(p, f"{where} of dtype {planes.dtype}: expected integer or floating-point pixels")
    return planes


def _plan(path: Path) -> tuple[Any, Any, ImageInfo]:
    node = open_array(path)
    axes = "ZYX" if node.ndim == 3 else "YX"
    layout = _make_layout(path, tuple(node.shape), axes)
    fmt = getattr(getattr(node, "metadata", None), "zarr_format", None)
    meta = {"axes": axes, "chunks": tuple(node.chunks), "zarr_format": fmt, "attrs": dict(node.attrs)}
    if node.ome is not None:
        meta["ome"] = {"version": node.ome.version, "dataset": node.ome.dataset, "axes": node.ome.names}
    return node, layout, _info(path, "zarr", layout, np.dtype(node.dtype).newbyteorder("="), meta)


def _probe(path: Path, size: int) -> ImageInfo:
    return _plan(path)[2]


def _read(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    node, layout, info = _plan(path)
    _check_channel(path, layout, channel)
    _check_fits_in_memory(path, math.prod(layout.stored_shape) * info.dtype.itemsize)
    try:
        arr = np.ascontiguousarray(np.asarray(node[...]))
    except Exception as exc:
        raise ImageReadError(path, f"cannot read Zarr chunks ({type(exc).__name__}: {exc})") from None
    return arr.astype(arr.dtype.newbyteorder("="), copy=False), info


def _open_slices(path: Path, size: int, channel: int | None) -> ImageSlices:
    node, layout, info = _plan(path)
    _check_channel(path, layout, channel)
    info.meta["channel"] = channel
    slices = ImageSlices(path, info, layout, channel)
    slices._array = node  # zarr arrays index like numpy and read only the chunks touched
    return slices


FORMAT = register(
    Format(
        name="zarr",
        title="Zarr",
        suffixes=(".zarr",),
        probe=_probe,
        read=_read,
        open_slices=_open_slices,
        directory=True,
        detect_dir=is_zarr,
        open_array=open_array,
    )
)
