"""PNG (``.png``): 8- and 16-bit grayscale (colour with ``channel=``), via Pillow. One 2-D image per file."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from iscl.errors import ImageReadError, ImageWriteError

from . import Format, register
from ._common import (
    ImageInfo,
    _check_channel,
    _describe_exc,
    _info,
    _Layout,
    _make_layout,
    _read_head,
    _same_format,
    _take_channel,
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@contextmanager
def _pil_open(path: Path) -> Iterator[Any]:
    from PIL import Image

    # Pillow refuses images above ~179 Mpixel as "decompression bombs". Large EM montages are
    # legitimately that big; _check_fits_in_memory is our guard instead.
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(path, formats=["PNG"])
            except Exception as exc:
                raise ImageReadError(path, f"corrupt PNG ({_describe_exc(exc)})") from None
            with im:
                yield im
    finally:
        Image.MAX_IMAGE_PIXELS = old


# Pillow mode -> (converted mode, dtype, stored axes)
_PNG_MODES = {
    "1": ("L", np.uint8, "YX"),  # bilevel: read as 0/255 uint8
    "L": ("L", np.uint8, "YX"),
    "I;16": ("I;16", np.uint16, "YX"),
    "I;16B": ("I;16", np.uint16, "YX"),
    "I": ("I", np.uint16, "YX"),  # older Pillow opens 16-bit grayscale as 32-bit 'I'
    "LA": ("LA", np.uint8, "YXS"),
    "RGB": ("RGB", np.uint8, "YXS"),
    "RGBA": ("RGBA", np.uint8, "YXS"),
    "P": ("RGB", np.uint8, "YXS"),
    "PA": ("RGBA", np.uint8, "YXS"),
}


def _png_plan(path: Path, im: Any) -> tuple[str, np.dtype, _Layout, dict[str, Any]]:
    head = _read_head(path, 29)
    bit_depth, colour_type = head[24], head[25]  # from the IHDR chunk, which must come first
    if bit_depth == 16 and colour_type != 0:
        raise ImageReadError(
            path, "16-bit colour PNG is not supported (Pillow reduces it to 8 bits); convert it to TIFF"
        )
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        mode = "PA"
    if mode not in _PNG_MODES:
        raise ImageReadError(path, f"unsupported PNG pixel mode {im.mode!r}")
    target, dtype, axes = _PNG_MODES[mode]
    w, h = im.size
    n = {"LA": 2, "RGB": 3, "RGBA": 4}.get(target)
    shape = (h, w) if n is None else (h, w, n)
    layout = _make_layout(path, shape, axes)
    meta = {"axes": axes, "bit_depth": int(bit_depth), "mode": im.mode, "dpi": im.info.get("dpi")}
    return target, np.dtype(dtype), layout, meta


def _probe_png(path: Path, size: int) -> ImageInfo:
    with _pil_open(path) as im:
        _target, dtype, layout, meta = _png_plan(path, im)
    return _info(path, "png", layout, dtype, meta)


def _read_png(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    with _pil_open(path) as im:
        target, dtype, layout, meta = _png_plan(path, im)
        _check_channel(path, layout, channel)
        try:
            im.load()
            if im.mode != target and target in ("L", "RGB", "RGBA"):
                im = im.convert(target)
            arr = np.asarray(im)
        except Exception as exc:
            raise ImageReadError(path, f"corrupt or truncated PNG ({_describe_exc(exc)})") from None
    arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
    if arr.shape != layout.stored_shape:
        raise ImageReadError(path, f"corrupt PNG (decoded shape {arr.shape}, header says {layout.stored_shape})")
    return _take_channel(path, arr, layout, channel), _info(path, "png", layout, dtype, meta)

def _write_png(f: IO[bytes], arr: np.ndarray, like: ImageInfo | None) -> None:
    from PIL import Image

    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        im = Image.fromarray(arr.astype("<u2", copy=False))  # mode I;16 -> 16-bit grayscale PNG
    else:
        im = Image.fromarray(arr)  # mode L -> 8-bit grayscale PNG
    kwargs: dict[str, Any] = {}
    dpi = like.meta.get("dpi") if like is not None else None
    if dpi:
        kwargs["dpi"] = tuple(float(d) for d in dpi)
    im.save(f, format="PNG", **kwargs)

def _check_write(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None,
                 streaming: bool) -> None:
    if streaming:
        if len(shape) != 2 or dtype not in (np.uint8, np.uint16):
            raise ImageWriteError(path, f"PNG holds only 2-D uint8/uint16 images, not shape {shape} {dtype}")
        return
    if len(shape) != 2:
        raise ImageWriteError(path, f"PNG cannot hold a stack (shape {shape}); write .tif or .npy instead")
    if dtype not in (np.uint8, np.uint16):
        raise ImageWriteError(
            path, f"PNG stores only uint8 or uint16 pixels, not {dtype}; convert, or write .tif instead"
        )


def _encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    return lambda f: _write_png(f, arr, _same_format(like, "png"))


FORMAT = register(
    Format(
        name="png",
        title="PNG",
        suffixes=(".png",),
        probe=_probe_png,
        read=_read_png,
        sniff=lambda head: head.startswith(_PNG_MAGIC),
        check_write=_check_write,
        encode=_encode,
    )
)
