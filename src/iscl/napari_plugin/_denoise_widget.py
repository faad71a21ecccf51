"""The "Denoise (ISCL)" dock widget: an image layer and a model in, a new layer out, on a worker thread."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtWidgets import QComboBox, QFormLayout, QProgressBar, QPushButton, QSpinBox, QWidget

from iscl.api import load
from iscl.napari_plugin._qt import LayerCombo, PathField, Relay, layer_array, notify_error
from iscl.napari_plugin.functions import OUTPUTS, denoise_array, devices

__all__ = ["DenoiseWidget"]

_PROGRESS_STEPS = 1000


class DenoiseWidget(QWidget):
    """Denoise an image layer with a trained model (a run folder, a checkpoint or a ``.zip`` zoo package).

    The result is added as a new image layer with the input's scale and translation, named
    ``"<input> (ISCL <output>)"``; the model and the prediction run on a worker thread, so the viewer
    stays responsive. Errors are shown as notifications.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.image = LayerCombo(napari_viewer)
        self.run = PathField("run folder, checkpoint folder or model .zip", file_filter="Zoo package (*.zip)")
        self.output = QComboBox()
        for key, label in OUTPUTS.items():
            self.output.addItem(label, key)
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("auto")  # 0: whole planes up to 2048², tiles of 512 above
        self.tile.setToolTip("tile side in pixels; auto: whole images up to 2048², tiles of 512 above")
        self.device = QComboBox()
        self.device.addItems(devices())
        self.button = QPushButton("Denoise")
        self.button.clicked.connect(self.start)
        self.progress = QProgressBar()
        self.progress.setRange(0, _PROGRESS_STEPS)
        self.progress.setValue(0)
        form = QFormLayout(self)
        form.addRow("image", self.image)
        form.addRow("model", self.run)
        form.addRow("output", self.output)
        form.addRow("tile size", self.tile)
        form.addRow("device", self.device)
        form.addRow(self.button)
        form.addRow(self.progress)
        self.relay = Relay()
        self.relay.progress.connect(lambda f: self.progress.setValue(round(f * _PROGRESS_STEPS)))
        self.worker = None

    def start(self) -> None:
        """Check the inputs, then denoise on a worker thread (the button's action)."""
        try:
            layer = self.image.layer()
            if layer is None:
                raise ValueError("choose an image layer to denoise")
            run = self.run.text()
            if not run:
                raise ValueError("choose a model: a run folder, a checkpoint folder or a .zip zoo package")
            image = layer_array(layer)
            output = self.output.currentData()
            tile = self.tile.value()
            job = (image, Path(run).expanduser(), output, None if tile == 0 else tile, self.device.currentText())
        except Exception as exc:  # noqa: BLE001 - shown to the user, never raised into napari
            notify_error(exc)
            return
        self.button.setEnabled(False)
        self.progress.setValue(0)
        # errors connected here, at creation: otherwise superqt re-raises them into the Qt event loop
        self.worker = create_worker(self._work, *job, _start_thread=False, _connect={"errored": notify_error})
        self.worker.returned.connect(lambda result: self._add_layer(layer, output, result, str(run)))
        self.worker.finished.connect(lambda: self.button.setEnabled(True))
        self.worker.start()

    def _work(self, image: np.ndarray, run: Path, output: str, tile: int | None, device: str) -> np.ndarray:
        model = load(run, device=device)
        return denoise_array(model, image, output=output, tile=tile, on_progress=self.relay.progress.emit)

    def _add_layer(self, layer, output: str, result: np.ndarray, run: str) -> None:
        self.progress.setValue(_PROGRESS_STEPS)
        name = f"{layer.name} (ISCL {output})"
        # the noise map is signed: a diverging colour map, zero in its middle
        extra = {}
        if output == "noise":
            bound = float(np.abs(result).max()) or 1.0
            extra = {"colormap": "coolwarm", "contrast_limits": (-bound, bound)}
        self.viewer.add_image(result, name=name, scale=layer.scale, translate=layer.translate,
                              **({"colormap": "gray"} | extra),
                              metadata={"iscl": {"model": run, "output": output, "source": layer.name}})
