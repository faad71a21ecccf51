"""Not a test: regenerates docs/figures/napari_train.png and napari_denoise.png from a real (tiny) run.

    QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=1 python tests/napari/screenshots.py [--steps 120] [--out docs/figures]

Opens the em-film sample, trains the ``fast`` preset for ``--steps`` steps through the Train widget
into a temporary run folder, denoises the test image through the Denoise widget, and saves a
screenshot of the viewer (widgets included) after each, reduced to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _wait(condition, timeout: float) -> None:
    from qtpy.QtWidgets import QApplication

    app, t0 = QApplication.instance(), time.time()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")


def _save(viewer, path: Path) -> None:
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.instance().processEvents()
    image = Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)[..., :3])
    image.quantize(256).save(path, optimize=True)
    print(f"{path}: {image.size[0]}x{image.size[1]}, {path.stat().st_size / 1024:.0f} kB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", default="docs/figures")
    args = parser.parse_args()
    import napari

    from iscl.napari_plugin._denoise_widget import DenoiseWidget
    from iscl.napari_plugin._train_widget import TrainWidget

    out = Path(args.out)
    run = Path(tempfile.mkdtemp(prefix="iscl-napari-")) / "run"
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1300, 900)
    viewer.open_sample("iscl", "em-film")

    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train (ISCL)", area="right")
    train.clean.setCurrentText("em-film clean (train)")
    train.noisy.setCurrentText("em-film noisy (train)")
    train.steps.setValue(args.steps)
    train.run.setText(str(run))
    train.preview_every.setValue(10)
    viewer.layers["em-film noisy (train)"].visible = True
    viewer.layers["em-film noisy (test)"].visible = False
    t0 = time.time()
    train.start()
    _wait(lambda: train.result is not None, 1800)
    print(f"trained {train.result} in {time.time() - t0:.0f} s")
    _save(viewer, out / "napari_train.png")

    viewer.window.remove_dock_widget("all")
    keep = ("em-film noisy (test)", "em-film clean (test, ground truth)")
    for name in [layer.name for layer in viewer.layers if layer.name not in keep]:
        viewer.layers.remove(name)
    for layer in viewer.layers:
        layer.visible = True
    denoise = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(denoise, name="Denoise (ISCL)", area="right")
    denoise.image.setCurrentText("em-film noisy (test)")
    denoise.run.setText(str(run))
    denoise.start()
    _wait(lambda: "em-film noisy (test) (ISCL denoised)" in viewer.layers, 600)
    viewer.canvas.grid.enabled = True
    _save(viewer, out / "napari_denoise.png")
    viewer.close()


if __name__ == "__main__":
    main()
