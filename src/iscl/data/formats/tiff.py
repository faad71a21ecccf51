"""TIFF (``.tif``, ``.tiff``): 2-D images and 3-D stacks, classic and BigTIFF, plain, ImageJ and OME-TIFF,
via :mod:`tifffile`. Uncompressed contiguous stacks are memory-mapped for slice access, other TIFFs are
decoded page by page; written stacks are laid out uncompressed so slices can be written in place.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
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
    ImageSlices,
    PathLike,
    SliceReader,
    _check_channel,
    _check_dtype,
    _check_fits_in_memory,
    _describe_exc,
    _gib,
    _info,
    _make_layout,
    _native,
    _same_format,
    _take_channel,
)

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both orders

#: Above this many bytes of pixel data a TIFF is written as BigTIFF. The classic format can address
#: 4 GiB, but headers, metadata and alignment come on top, so switch early.
BIGTIFF_THRESHOLD = 2**31

_TIFF_COMPRESSIONS_KEPT = {8, 32946, 34925, 50000}  # deflate (both codes), lzma, zstd: lossless


class _TiffLog(logging.Handler):
    """Collect tifffile's log records: it logs (rather than raises) some corruptions, e.g. an IFD
    offset past the end of the file, and then silently returns fewer pages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage())


@contextmanager
def _tiff_log() -> Iterator[_TiffLog]:
    logger = logging.getLogger("tifffile")
    handler = _TiffLog()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _tiff_corrupt(path: PathLike, exc_or_text: BaseException | str) -> ImageReadError:
    text = exc_or_text if isinstance(exc_or_text, str) else _describe_exc(exc_or_text)
    text = re.sub(r"<tifffile\.[^>]*>\s*", "", text)  # drop object reprs from tifffile's log lines
    return ImageReadError(path, f"corrupt or truncated TIFF ({text})")


def _open_tiff(path: Path):  # -> tuple[tifffile.TiffFile, series, _Layout, dict]
    """Open a TIFF, validate its first series and header extents. Caller closes the TiffFile."""
    import tifffile

    size = path.stat().st_size
    with _tiff_log() as log:
        try:
            tf = tifffile.TiffFile(path)
        except Exception as exc:
            raise _tiff_corrupt(path, exc) from None
        try:
            try:
                series_list = tf.series
            except Exception as exc:
                raise _tiff_corrupt(path, exc) from None
            if log.errors:
                raise _tiff_corrupt(path, log.errors[0])
            if not series_list:
                raise ImageReadError(path, "TIFF contains no images")
            series = series_list[0]
            layout = _make_layout(path, series.shape, series.axes)
            page = series.keyframe
            dtype = series.dtype
            if dtype is None:
                raise ImageReadError(path, "TIFF pixel type is not supported by tifffile")
            _check_dtype(path, np.dtype(dtype))
            _check_tiff_extent(path, tf, series, size)
            if page.compression != 1:
                try:
                    tifffile.TIFF.DECOMPRESSORS[page.compression]
                except KeyError:
                    name = getattr(page.compression, "name", str(page.compression))
                    raise ImageReadError(
                        path,
                        f"TIFF uses {name} compression, which needs the optional 'imagecodecs' package "
                        "(pip install imagecodecs) or an uncompressed copy of the file",
                    ) from None
            meta = _tiff_meta(tf, series)
        except BaseException:
            tf.close()
            raise
    return tf, series, layout, meta


def _check_tiff_extent(path: Path, tf: Any, series: Any, size: int) -> None:
    # A header can claim any amount of data. Checking that the claimed pixel data lie inside the file
    # is cheap (header only) and turns truncated files and absurd sizes into a clear error before
    # anything is allocated.
    expected = int(series.nbytes)
    if series.dataoffset is not None:  # contiguous, uncompressed: one extent for the whole series
        end = int(series.dataoffset) + expected
        if end > size:
            raise ImageReadError(
                path,
                f"truncated TIFF (pixel data should end at byte {end} but the file has {size} bytes)",
            )
        return
    for i, page in enumerate(series.pages):
        if page is None:
            continue
        offsets, counts = page.dataoffsets, page.databytecounts
        if not offsets:
            continue
        end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
        if end > size:
            raise ImageReadError(
                path,
                f"truncated TIFF (page {i} data should end at byte {end} but the file has {size} bytes)",
            )
        keyframe = series.keyframe
        if keyframe.compression == 1 and keyframe.bitspersample % 8 == 0:
            if sum(int(c) for c in counts) < keyframe.nbytes:
                raise ImageReadError(
                    path,
                    f"corrupt TIFF (page {i} claims {keyframe.nbytes} bytes of pixels "
                    f"but stores {sum(int(c) for c in counts)})",
                )


def _tiff_meta(tf: Any, series: Any) -> dict[str, Any]:
    page = series.keyframe
    tags = page.tags
    resolution = None
    resolution_unit = None
    if 282 in tags and 283 in tags:  # XResolution, YResolution
        resolution = tuple(float(v) for v in page.resolution)
        unit = tags.valueof(296)  # ResolutionUnit
        resolution_unit = None if unit is None else int(unit)
    description = None
    if not (tf.is_imagej or tf.is_ome or tf.is_shaped):
        description = page.description or None
    predictor = tags.valueof(317)
    return {
        "axes": series.axes,
        "photometric": getattr(page.photometric, "name", str(page.photometric)).lower(),
        "resolution": resolution,
        "resolution_unit": resolution_unit,
        "imagej_metadata": dict(tf.imagej_metadata) if tf.is_imagej and tf.imagej_metadata else None,
        "ome_xml": tf.ome_metadata if tf.is_ome else None,
        "description": description,
        "bigtiff": bool(tf.is_bigtiff),
        "compression": int(page.compression),
        "predictor": 1 if predictor is None else int(predictor),
        "byteorder": tf.byteorder,
    }
def _probe_tiff(path: Path, size: int) -> ImageInfo:
    tf, series, layout, meta = _open_tiff(path)
    tf.close()
    return _info(path, "tiff", layout, np.dtype(series.dtype).newbyteorder("="), meta)


def _read_tiff(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    tf, series, layout, meta = _open_tiff(path)
    with tf:
        info = _info(path, "tiff", layout, np.dtype(series.dtype).newbyteorder("="), meta)
        _check_channel(path, layout, channel)  # fail before reading a huge colour file
        _check_fits_in_memory(path, int(series.nbytes))
        with _tiff_log() as log:
            try:
                arr = series.asarray()
            except MemoryError:
                raise ImageReadError(path, f"not enough memory to read {_gib(int(series.nbytes))}") from None
            except Exception as exc:
                raise _tiff_corrupt(path, _tiff_read_reason(exc)) from None
            if log.errors:
                raise _tiff_corrupt(path, log.errors[0])
    if tuple(arr.shape) != layout.stored_shape:
        raise _tiff_corrupt(path, f"read shape {arr.shape} but the header says {layout.stored_shape}")
    arr = _native(arr)
    arr = _take_channel(path, arr, layout, channel)
    return arr, info


def _tiff_read_reason(exc: BaseException) -> str:
    reason = _describe_exc(exc)
    if "imagecodecs" in reason:
        reason += "; pip install imagecodecs"
    return f"cannot read pixel data: {reason}"

# --------------------------------------------------------------------------------------------------
# Slice access
# --------------------------------------------------------------------------------------------------


class _PageReader(SliceReader):
    """Decode the page(s) holding the requested slice; the last page is cached."""

    def __init__(self, path: Path, tf: Any, series: Any, grid: tuple[int, ...]) -> None:
        self.path, self._tf, self._series, self._grid = path, tf, series, grid
        self._cache: tuple[int, np.ndarray] | None = None

    def __call__(self, index: tuple[Any, ...]) -> np.ndarray:
        full = list(index)
        n_grid = len(self._grid)
        page_no = int(np.ravel_multi_index(tuple(full[:n_grid]), self._grid)) if n_grid else 0
        if self._cache is not None and self._cache[0] == page_no:
            data = self._cache[1]
        else:
            page = self._series.pages[page_no]
            with _tiff_log() as log:
                try:
                    data = page.asarray()
                except Exception as exc:
                    raise _tiff_corrupt(
                        self.path,
                        _tiff_read_reason(exc).replace("cannot read pixel data", f"cannot read page {page_no}"),
                    ) from None
                if log.errors:
                    raise _tiff_corrupt(self.path, f"cannot read page {page_no}: {log.errors[0]}")
            self._cache = (page_no, data)
        return data[tuple(full[n_grid:])]

    def close(self) -> None:
        self._tf.close()
        self._cache = None


def _open_tiff_slices(path: Path, size: int, channel: int | None) -> ImageSlices:
    import tifffile

    tf, series, layout, meta = _open_tiff(path)
    try:
        _check_channel(path, layout, channel)
        info = _info(path, "tiff", layout, np.dtype(series.dtype).newbyteorder("="), meta)
        info.meta["channel"] = channel
        slices = ImageSlices(path, info, layout, channel)
        mm = None
        if series.dataoffset is not None and series.keyframe.is_memmappable:
            try:
                mm = tifffile.memmap(path, series=0, mode="r")
            except Exception:  # e.g. mmap unsupported on this filesystem: fall back to pages
                mm = None
        if mm is not None and tuple(mm.shape) == layout.stored_shape:
            tf.close()
            slices._array = mm
            return slices
        page_shape = tuple(series.keyframe.shape)
        n_grid = len(layout.stored_shape) - len(page_shape)
        grid = layout.stored_shape[:n_grid]
        if n_grid < 0 or layout.stored_shape[n_grid:] != page_shape or math.prod(grid) != len(series.pages):
            # Unusual page structure (e.g. volumetric tiles): read the series once instead.
            tf.close()
            arr, _ = _read_tiff(path, size, None)
            slices._array = arr
            return slices
        slices._reader = _PageReader(path, tf, series, grid)
        return slices
    except BaseException:
        tf.close()
        raise


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _ome_physical_sizes(xml: str) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            keys = [f"PhysicalSize{a}{u}" for a in "XYZ" for u in ("", "Unit")] + ["TimeIncrement"]
            out: dict[str, Any] = {}
            for k in keys:
                if k in el.attrib:
                    v = el.attrib[k]
                    try:
                        out[k] = v if k.endswith("Unit") else float(v)
                    except ValueError:
                        pass
            return out
    return {}


def _ome_xml_for(xml: str, final_name: str) -> str | None:
    """Original OME-XML made safe to reuse for a new single file, or None if it cannot be."""
    names = set(re.findall(r"<(?:\w+:)?UUID\b[^>]*\bFileName=\"([^\"]*)\"", xml))
    if len(names) > 1 or xml.count("<Image ") + len(re.findall(r"<\w+:Image ", xml)) > 1:
        return None  # multi-file or multi-image OME: cannot describe our one-image file
    new_uuid = f"urn:uuid:{uuid.uuid4()}"
    m = re.search(r"<(?:\w+:)?OME\b[^>]*\bUUID=\"([^\"]+)\"", xml)
    if m:
        xml = xml.replace(m.group(1), new_uuid)  # root attribute and TiffData/UUID text alike
    escaped = final_name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    # The FileName must name this file: a reader following it to the input would read the wrong data.
    return re.sub(
        r"(<(?:\w+:)?UUID\b[^>]*\bFileName=\")[^\"]*(\")", lambda mm: mm.group(1) + escaped + mm.group(2), xml
    )


_IJ_DROP = {
    "ImageJ",
    "images",
    "channels",
    "slices",
    "frames",
    "hyperstack",
    "mode",
    "loop",
    "min",
    "max",
    "Ranges",
    "LUTs",
    "axes",
}  # derived from the data by tifffile, or stale after denoising


def _tiff_options(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None, allow_compression: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (TiffWriter kwargs, TiffWriter.write kwargs) reproducing ``like`` where possible."""
    import tifffile

    meta = like.meta if like is not None else {}
    nbytes = math.prod(shape) * dtype.itemsize
    ndim = len(shape)
    kw: dict[str, Any] = {"photometric": "minisblack", "software": "iscl"}
    if meta.get("photometric") in ("minisblack", "miniswhite"):
        kw["photometric"] = meta["photometric"]
    if meta.get("resolution"):
        kw["resolution"] = tuple(meta["resolution"])
        if meta.get("resolution_unit") is not None:
            kw["resolutionunit"] = meta["resolution_unit"]
    if allow_compression and meta.get("compression") in _TIFF_COMPRESSIONS_KEPT:
        try:
            tifffile.TIFF.COMPRESSORS[meta["compression"]]
            kw["compression"] = meta["compression"]
            if meta.get("predictor") == 2 and dtype.kind in "iu":
                kw["predictor"] = 2
        except KeyError:  # encoder not available without imagecodecs: write uncompressed
            pass
    slice_letter = "Z"
    axes = str(meta.get("axes", ""))
    if ndim == 3 and like is not None and like.is_stack:
        letters = [a for a in axes if a not in "SCYX"]
        if letters and letters[0] == "T":
            slice_letter = "T"  # keep a time series a time series
    out_axes = (slice_letter if ndim == 3 else "") + "YX"
    writer: dict[str, Any] = {"bigtiff": nbytes > BIGTIFF_THRESHOLD or bool(meta.get("bigtiff")), "byteorder": "<"}
    ij = meta.get("imagej_metadata")
    if ij is not None and dtype.char in "BHhf":
        md = {k: v for k, v in ij.items() if k not in _IJ_DROP}
        labels = md.get("Labels")
        if labels is not None and (ndim != 3 or len(labels) != shape[0]):
            md.pop("Labels")
        md["axes"] = out_axes
        writer.update(imagej=True, bigtiff=bool(meta.get("bigtiff")))
        kw["metadata"] = md
        kw.pop("compression", None)  # ImageJ cannot read compressed TIFF
        kw.pop("predictor", None)
        return writer, kw
    ome = meta.get("ome_xml")
    if ome:
        same = (
            like is not None
            and like.n_channels == 1
            and tuple(like.shape) == tuple(shape)
            and np.dtype(like.dtype) == dtype
        )
        xml = _ome_xml_for(ome, path.name) if same else None
        if xml is not None:
            writer["ome"] = False
            kw.update(description=xml.encode("utf-8"), metadata=None)
        else:
            writer["ome"] = True
            kw["metadata"] = {"axes": out_axes, **_ome_physical_sizes(ome)}
        return writer, kw
    if path.name.lower().endswith((".ome.tif", ".ome.tiff")) and not meta.get("description"):
        writer["ome"] = True  # the name promises OME-TIFF: let tifffile describe the data
        kw["metadata"] = {"axes": out_axes}
        return writer, kw
    writer["ome"] = False
    if meta.get("description"):
        desc = meta["description"]
        kw.update(description=desc.encode("utf-8") if isinstance(desc, str) else desc, metadata=None)
    return writer, kw


def _write_tiff(f: IO[bytes], path: Path, arr: np.ndarray, like: ImageInfo | None) -> None:
    import tifffile

    writer_kw, write_kw = _tiff_options(path, arr.shape, arr.dtype, like, allow_compression=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "truncating ImageJ file" (>4 GiB, by design)
        with tifffile.TiffWriter(f, **writer_kw) as tw:
            tw.write(arr, **write_kw)



def _encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    return lambda f: _write_tiff(f, path, arr, _same_format(like, "tiff"))


def _stack_header(f: IO[bytes], path: Path, shape: tuple[int, ...], file_dtype: np.dtype,
                  like: ImageInfo | None) -> int:
    """Write the header of an uncompressed, contiguous TIFF; return where slice 0's pixels start."""
    import tifffile

    writer_kw, write_kw = _tiff_options(path, shape, np.dtype(file_dtype).newbyteorder("="),
                                        _same_format(like, "tiff"), allow_compression=False)
    writer_kw["byteorder"] = "<"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with tifffile.TiffWriter(f, **writer_kw) as tw:
            result = tw.write(shape=shape, dtype=file_dtype, returnoffset=True, **write_kw)
    if result is None:
        raise ImageWriteError(path, "tifffile could not lay out the TIFF contiguously")
    return int(result[0])


FORMAT = register(
    Format(
        name="tiff",
        title="TIFF",
        suffixes=(".tif", ".tiff"),
        probe=_probe_tiff,
        read=_read_tiff,
        sniff=lambda head: head[:4] in _TIFF_MAGICS,
        open_slices=_open_tiff_slices,
        encode=_encode,
        stack_header=_stack_header,
    )
)
