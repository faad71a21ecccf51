"""The "Train (ISCL)" dock widget: unpaired clean and noisy images in, a run folder out.

Training runs on a worker thread through :func:`iscl.api.train`; every step's record comes back to
the GUI thread for the loss plot and the progress bar, with a denoised preview of a crop every few
steps. Stop asks the trainer to end after the current step (:meth:`~iscl.training.trainer.Trainer.request_stop`),
which leaves a resumable ``checkpoint/`` as ``iscl train`` does.
"""

from __future__ import annotations

import threading
from pathlib import Path

import napari
import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from iscl.api import train
from iscl.config import Config, load_config, parse_duration, preset
from iscl.errors import IsclError
from iscl.napari_plugin._qt import LayerCombo, PathField, Relay, layer_array, notify_error, notify_info
from iscl.napari_plugin.functions import devices
from iscl.training.checkpoint import read_checkpoint_config
from iscl.training.plots import plot_losses
from iscl.training.runlog import LOG_FILE
from iscl.training.trainer import CHECKPOINT_DIR, Trainer

__all__ = ["TrainWidget", "PREVIEW_LAYER"]

PREVIEW_LAYER = "ISCL preview"
#: the loss curves drawn: the discriminators, F and G together, the noise extractor H
CURVES = {"d_total": "D", "g_total": "F, G", "h_total": "H"}


def _planes(image: np.ndarray) -> list[np.ndarray]:
    a = np.asarray(image)
    if a.ndim < 2:
        raise ValueError(f"expected an image (..., H, W), got shape {a.shape}")
    return list(a.reshape(-1, *a.shape[-2:]))


class _Crop:
    """The preview window: plane ``index`` of the noisy pool, rows y0:y0+size, columns x0:x0+size."""

    def __init__(self, planes: list[np.ndarray], index: int, center: tuple[float, float], size: int):
        self.index = min(max(index, 0), len(planes) - 1)
        h, w = planes[self.index].shape
        self.size = min(size, h, w)
        self.y0 = int(np.clip(round(center[0] - self.size / 2), 0, h - self.size))
        self.x0 = int(np.clip(round(center[1] - self.size / 2), 0, w - self.size))

    def take(self, planes: list[np.ndarray]) -> np.ndarray:
        return planes[self.index][self.y0 : self.y0 + self.size, self.x0 : self.x0 + self.size]


class _LossPlot(QWidget):
    """A small matplotlib canvas with one curve per network group (log scale of the step losses)."""

    def __init__(self):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self.lines = {k: self.axes.plot([], [], lw=1, label=label)[0] for k, label in CURVES.items()}
        self.axes.set_xlabel("step", fontsize=8)
        self.axes.set_ylabel("loss", fontsize=8)
        self.axes.tick_params(labelsize=7)
        self.axes.legend(fontsize=7, loc="upper right")
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {k: [] for k in CURVES}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.setMinimumHeight(170)

    def clear(self) -> None:
        self.steps.clear()
        for v in self.values.values():
            v.clear()
        self.draw()

    def add(self, record: dict) -> None:
        self.steps.append(int(record["step"]))
        for k in CURVES:
            self.values[k].append(float(record.get(k, np.nan)))

    def draw(self) -> None:
        for k, line in self.lines.items():
            line.set_data(self.steps, self.values[k])
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()


class TrainWidget(QWidget):
    """Train ISCL on unpaired clean and noisy images (layers or folders) into a run folder.

    The run folder receives what ``iscl train`` writes (``checkpoint/``, ``log.jsonl``,
    ``loss.png``). A folder that already holds a run is refused unless "resume" is ticked; Stop
    ends after the current step and saves a checkpoint that "resume" (or ``iscl train --resume``)
    continues.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.clean = LayerCombo(napari_viewer, optional=True)
        self.clean_files = PathField("…or a folder / file of clean images")
        self.noisy = LayerCombo(napari_viewer, optional=True)
        self.noisy_files = PathField("…or a folder / file of noisy images")
        self.preset = QComboBox()
        self.preset.addItems(["fast", "cpu", "paper"])
        self.config_file = PathField("optional: a config .json (replaces the preset)", file_filter="JSON (*.json)")
        self.budget = QLineEdit()
        self.budget.setPlaceholderText("e.g. 5m, 30m, 1h (empty: train a number of steps)")
        self.steps = QSpinBox()
        self.steps.setRange(0, 10_000_000)
        self.steps.setSpecialValueText("preset's")
        self.run = PathField("run folder (created)")
        self.resume = QCheckBox("resume the run in this folder")
        self.device = QComboBox()
        self.device.addItems(devices())
        self.preview_size = QSpinBox()
        self.preview_size.setRange(16, 1024)
        self.preview_size.setValue(128)
        self.preview_size.setToolTip("a square of this side at the centre of the view when training starts")
        self.preview_every = QSpinBox()
        self.preview_every.setRange(1, 100_000)
        self.preview_every.setValue(25)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.plot = _LossPlot()

        form = QFormLayout(self)
        form.addRow("clean", self.clean)
        form.addRow("", self.clean_files)
        form.addRow("noisy", self.noisy)
        form.addRow("", self.noisy_files)
        form.addRow("preset", self.preset)
        form.addRow("config", self.config_file)
        form.addRow("time budget", self.budget)
        form.addRow("steps", self.steps)
        form.addRow("run folder", self.run)
        form.addRow("", self.resume)
        form.addRow("device", self.device)
        form.addRow("preview crop", self.preview_size)
        form.addRow("preview every", self.preview_every)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.stop_button)
        form.addRow(buttons)
        form.addRow(self.progress)
        form.addRow(self.status)
        form.addRow(self.plot)

        self.relay = Relay()
        self.relay.record.connect(self._on_record)
        self._stop = threading.Event()
        self._preview_layer_source = None  # the noisy layer the preview is drawn over
        self.worker = None
        self.result: dict | None = None  # what the last run reached: step, total, run folder

    # ------------------------------------------------------------------ inputs
    def _config(self) -> Config:
        path = self.config_file.text()
        config = load_config(Path(path).expanduser()) if path else preset(self.preset.currentText())
        if self.steps.value():
            config.train.steps = self.steps.value()
        if self.budget.text():
            config.train.time_budget = parse_duration(self.budget.text())
        return config

    def _source(self, combo: LayerCombo, files: PathField, what: str):
        """(layer, planes or None, path or None): a folder/file wins over a layer."""
        if files.text():
            return None, None, Path(files.text()).expanduser()
        layer = combo.layer()
        if layer is None:
            raise ValueError(f"choose a {what} image layer, or a folder of {what} images")
        return layer, _planes(layer_array(layer)), None

    def _run_config(self, run: Path, resume: bool) -> Config:
        """A resumed run continues with its saved settings; a new run needs an empty (or new) folder."""
        if resume:  # a one-line error when there is nothing to resume
            return read_checkpoint_config(run / CHECKPOINT_DIR)[0]
        if run.exists() and (not run.is_dir() or any(run.iterdir())):
            raise IsclError(run, "already holds a run (or is not a folder); tick 'resume' to continue it, or "
                                 "choose a new folder")
        return self._config()

    def _crop(self, layer, planes: list[np.ndarray]) -> _Crop:
        """The preview window: centred on the view's centre when the noisy layer is shown there."""
        h, w = planes[0].shape
        center, index = (h / 2, w / 2), 0
        if layer is not None:
            point = list(self.viewer.dims.point)
            point[-2:] = list(self.viewer.camera.center)[-2:]
            data = layer.world_to_data(point[-layer.ndim :] if len(point) >= layer.ndim else point)
            center = (float(data[-2]), float(data[-1]))
            if layer.ndim > 2:
                lead = layer_array(layer).shape[:-2]
                index = int(np.ravel_multi_index(tuple(int(np.clip(round(c), 0, n - 1))
                                                       for c, n in zip(data[:-2], lead)), lead))
        return _Crop(planes, index, center, self.preview_size.value())

    # ------------------------------------------------------------------ actions
    def start(self) -> None:
        """Check the inputs and start training on a worker thread (the Train button's action)."""
        try:
            _, clean, clean_path = self._source(self.clean, self.clean_files, "clean")
            noisy_layer, noisy, noisy_path = self._source(self.noisy, self.noisy_files, "noisy")
            if not self.run.text():
                raise ValueError("choose a run folder: the checkpoint and the loss log are written there")
            run = Path(self.run.text()).expanduser()
            resume = self.resume.isChecked()
            config = self._run_config(run, resume)
            crop = self._crop(noisy_layer, noisy) if noisy is not None else None
        except Exception as exc:  # noqa: BLE001 - shown to the user, never raised into napari
            notify_error(exc)
            return
        self._stop.clear()
        self._preview_layer_source = noisy_layer
        self.plot.clear()
        self.progress.setRange(0, max(config.train.steps, 1))
        self.progress.setValue(0)
        self.status.setText("starting…")
        self.train_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.result = None
        self.worker = create_worker(self._work, config, clean, clean_path, noisy, noisy_path, run, resume,
                                    self.device.currentText(), crop, self.preview_size.value(),
                                    self.preview_every.value(), _start_thread=False,
                                    _connect={"errored": self._on_error})  # else superqt re-raises them
        self.worker.returned.connect(self._on_done)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def stop(self) -> None:
        """Ask the training to end after the current step; the checkpoint it saves can be resumed."""
        self._stop.set()
        self.stop_button.setEnabled(False)
        self.status.setText("stopping after this step…")

    # ------------------------------------------------------------------ worker thread
    def _work(self, config: Config, clean, clean_path, noisy, noisy_path, run: Path, resume: bool, device: str,
              crop: _Crop | None, preview_size: int, every: int) -> dict:
        from iscl.jobs import read_images  # files are read here, off the GUI thread

        clean = read_images([clean_path]) if clean is None else clean
        noisy = read_images([noisy_path]) if noisy is None else noisy
        if crop is None:
            crop = _Crop(noisy, 0, (noisy[0].shape[0] / 2, noisy[0].shape[1] / 2), preview_size)
        window = crop.take(noisy)

        def on_step(trainer: Trainer, record: dict) -> None:
            stopping = self._stop.is_set()
            if stopping:
                trainer.request_stop()
            total = trainer.config.train.steps
            out = {"step": record["step"], "total": total, **{k: record.get(k) for k in CURVES}}
            if stopping or record["step"] % every == 0 or record["step"] == total:
                out["preview"] = self._preview(trainer, window)
                out["preview_at"] = (crop.y0, crop.x0)
            self.relay.record.emit(out)

        model = train(clean, noisy, config, run_dir=run, device=device, resume=resume, progress=False,
                      on_step=on_step, tensorboard=False)
        plot_losses(run / LOG_FILE, run / "loss.png")
        return {"step": model.info["step"], "total": model.config.train.steps, "run": str(run)}

    @staticmethod
    def _preview(trainer: Trainer, window: np.ndarray) -> np.ndarray:
        """The current prediction of the crop, in image units (between steps, on the training thread)."""
        norm = trainer.normalizer
        return norm.inverse(trainer.predict(norm.forward(window))["denoised"], window.dtype)

    # ------------------------------------------------------------------ GUI thread
    def _on_record(self, rec: dict) -> None:
        self.progress.setRange(0, max(rec["total"], 1))
        self.progress.setValue(rec["step"])
        self.status.setText(f"step {rec['step']} / {rec['total']}")
        self.plot.add(rec)
        if "preview" in rec or rec["step"] % 5 == 0:
            self.plot.draw()
        if "preview" in rec:
            self._show_preview(rec["preview"], rec["preview_at"])

    def _show_preview(self, image: np.ndarray, at: tuple[int, int]) -> None:
        """Draw the preview over the crop it shows (the noisy layer's scale and translation)."""
        layer = self._preview_layer_source
        scale, translate = np.ones(2), np.zeros(2)
        if layer is not None:
            scale, translate = np.asarray(layer.scale[-2:]), np.asarray(layer.translate[-2:])
        translate = translate + np.asarray(at) * scale
        if PREVIEW_LAYER in self.viewer.layers:
            target = self.viewer.layers[PREVIEW_LAYER]
            target.data = image
            target.scale, target.translate = scale, translate
        else:
            self.viewer.add_image(image, name=PREVIEW_LAYER, scale=scale, translate=translate)

    def _on_done(self, result: dict) -> None:
        self.result = result
        stopped = result["step"] < result["total"]
        text = (f"stopped at step {result['step']} of {result['total']}: tick 'resume' to continue"
                if stopped else f"trained {result['total']} steps")
        self.status.setText(f"{text}; model in {result['run']}")
        notify_info(f"ISCL: {text}; model in {result['run']}")

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText("failed (see the notification)")
        notify_error(exc)

    def _on_finished(self) -> None:
        self.train_button.setEnabled(True)
        self.stop_button.setEnabled(False)
