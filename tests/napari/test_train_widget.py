"""The "Train (ISCL)" widget: start, Stop after step 3, and the checkpoint it leaves resumes through the API."""

from __future__ import annotations

import json

import numpy as np

import iscl
from iscl.napari_plugin._train_widget import PREVIEW_LAYER, TrainWidget
from iscl.training.checkpoint import read_checkpoint_config


def test_stop_leaves_a_checkpoint_the_api_resumes(make_viewer, qtbot, tmp_path, tiny_pair, tiny_config,
                                                  errors):
    viewer = make_viewer()
    clean, noisy = tiny_pair
    viewer.add_image(np.stack(clean), name="clean")
    viewer.add_image(np.stack(noisy), name="noisy", scale=(1.0, 2.0, 2.0))
    config = tiny_config.model_copy(deep=True)
    config.train.steps = 200  # far more than it will run: Stop ends it
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json())
    run = tmp_path / "run"

    widget = TrainWidget(viewer)
    widget.clean.setCurrentText("clean")
    widget.noisy.setCurrentText("noisy")
    widget.config_file.setText(str(config_file))
    widget.run.setText(str(run))
    widget.preview_every.setValue(2)
    seen = []

    def press_stop_after_step_3(record):
        seen.append(record["step"])
        if record["step"] == 3:
            widget.stop_button.click()

    widget.relay.record.connect(press_stop_after_step_3)
    widget.start()
    qtbot.waitUntil(lambda: widget.result is not None or bool(errors), timeout=30_000)
    assert not errors
    step = read_checkpoint_config(run / "checkpoint")[2]["step"]
    assert 3 <= step < 200 and widget.result == {"step": step, "total": 200, "run": str(run)}
    assert seen == list(range(1, step + 1)) and widget.plot.steps == seen  # every step reached the loss plot
    preview = viewer.layers[PREVIEW_LAYER]  # the crop (at most 128 px; these images are 64 px) over the noisy layer
    assert preview.data.shape == (64, 64) and tuple(preview.scale) == (2.0, 2.0)
    assert (run / "loss.png").is_file()
    qtbot.waitUntil(widget.train_button.isEnabled, timeout=5_000)

    model = iscl.train(clean, noisy, config, run_dir=run, resume=True, progress=False, stop_at=step + 2)
    assert model.info["step"] == step + 2
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == list(
        range(1, step + 3))


def test_a_folder_holding_a_run_is_refused_without_resume(make_viewer, tiny_run, errors):
    viewer = make_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="clean")
    viewer.add_image(np.ones((64, 64), np.float32), name="noisy")
    widget = TrainWidget(viewer)
    widget.clean.setCurrentText("clean")
    widget.noisy.setCurrentText("noisy")
    widget.run.setText(str(tiny_run))
    widget.start()
    assert errors == [f"{tiny_run}: already holds a run (or is not a folder); tick 'resume' to continue it, or "
                      "choose a new folder"]
    assert widget.worker is None
