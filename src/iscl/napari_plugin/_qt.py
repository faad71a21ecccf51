"""Small Qt pieces shared by the two widgets: a layer chooser, a path field, a thread-to-GUI relay, errors."""

from __future__ import annotations

import logging

import numpy as np
from napari.layers import Image
from napari.utils import notifications
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from iscl.napari_plugin.functions import error_text

log = logging.getLogger("iscl.napari")


def notify_error(exc: BaseException | str) -> None:
    """Show one line in napari's notifications (never raise: a widget's error must not escape)."""
    text = exc if isinstance(exc, str) else error_text(exc)
    if not isinstance(exc, str):
        log.debug("iscl widget error", exc_info=exc)
    notifications.show_error(text)


def notify_info(text: str) -> None:
    notifications.show_info(text)


class Relay(QObject):
    """Signals emitted from a worker thread and delivered in the GUI thread (Qt queues them)."""

    progress = Signal(float)  # fraction done, 0..1
    record = Signal(object)  # a training step's record (dict), with a preview or not


class LayerCombo(QComboBox):
    """Chooses one of the viewer's image layers by name; follows layers added, removed and renamed."""

    def __init__(self, viewer, parent: QWidget | None = None, *, optional: bool = False):
        super().__init__(parent)
        self.viewer = viewer
        self.optional = optional
        self.refresh()
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)

    def _on_layers_changed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and hasattr(layer, "events"):
            layer.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, event=None) -> None:
        current = self.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.blockSignals(True)
        self.clear()
        if self.optional:
            self.addItem("")
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)

    def layer(self) -> Image | None:
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None


def layer_array(layer: Image) -> np.ndarray:
    """The layer's pixels as a NumPy array (the full resolution of a multiscale layer); RGB is refused."""
    if layer.rgb:
        raise ValueError(f"layer {layer.name!r} is RGB(A); iscl denoises single-channel images: split its channels "
                         "first (right-click the layer > Split RGB)")
    data = layer.data[0] if layer.multiscale else layer.data
    return np.asarray(data)


class PathField(QWidget):
    """A line edit with a "…" button that opens a folder (and optionally a file) dialog."""

    def __init__(self, placeholder: str = "", *, file_filter: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.file_filter = file_filter
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        folder = QPushButton("folder…")
        folder.clicked.connect(self._choose_folder)
        layout.addWidget(folder)
        if file_filter:
            file = QPushButton("file…")
            file.clicked.connect(self._choose_file)
            layout.addWidget(file)

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.text())
        if path:
            self.edit.setText(path)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.text(), self.file_filter or "")
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's naming
        self.edit.setText(str(text))
