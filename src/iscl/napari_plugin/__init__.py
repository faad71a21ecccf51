"""iscl in napari: the "Denoise (ISCL)" and "Train (ISCL)" widgets, sample data, and a plain ``denoise``.

A thin shell over the Python API (:mod:`iscl.api`); napari finds it through the ``napari.manifest``
entry point (``napari.yaml`` here). Install with ``pip install 'iscl[napari]'``.

* :func:`denoise` (``functions.py``): array in, array out, for scripts and napari-workflows; no Qt.
* ``_denoise_widget.py``, ``_train_widget.py``: the two dock widgets (Qt, imported by napari on use).
* ``sample_data.py``: small simulated EM and CT images (:mod:`iscl.simulate`).
"""

from __future__ import annotations

from iscl.napari_plugin.functions import denoise

__all__ = ["denoise"]
