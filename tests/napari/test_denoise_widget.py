"""The "Denoise (ISCL)" widget and the plain ``denoise`` function give what the Python API gives."""

from __future__ import annotations

import numpy as np
import pytest

import iscl
from iscl.napari_plugin import denoise
from iscl.napari_plugin._denoise_widget import DenoiseWidget
from synthetic import shapes_image, structured_noise


def _noisy_stack() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.stack([structured_noise(shapes_image(rng), rng) for _ in range(2)])


@pytest.mark.parametrize("output", ["denoised", "noise"])
def test_widget_adds_the_layer_the_api_gives(make_viewer, qtbot, tiny_run, errors, output):
    viewer = make_viewer()
    stack = _noisy_stack()
    viewer.add_image(stack, name="noisy", scale=(3.0, 0.5, 0.25), translate=(0, 10, 20))
    widget = DenoiseWidget(viewer)
    widget.image.setCurrentText("noisy")
    widget.run.setText(str(tiny_run))
    widget.output.setCurrentIndex(widget.output.findData(output))
    widget.start()
    name = f"noisy (ISCL {output})"
    qtbot.waitUntil(lambda: name in viewer.layers or bool(errors), timeout=30_000)
    assert not errors
    result = viewer.layers[name]
    np.testing.assert_array_equal(result.data, iscl.load(tiny_run).denoise(stack, output=output))
    assert tuple(result.scale) == (3.0, 0.5, 0.25) and tuple(result.translate) == (0, 10, 20)
    assert widget.progress.value() == widget.progress.maximum()
    qtbot.waitUntil(widget.button.isEnabled, timeout=5_000)


@pytest.mark.parametrize("bad", ["missing", "empty-folder"])
def test_a_bad_model_path_is_a_notification_not_an_exception(make_viewer, qtbot, tmp_path, errors, bad):
    viewer = make_viewer()
    viewer.add_image(_noisy_stack()[0], name="noisy")
    run = tmp_path / bad
    if bad == "empty-folder":
        run.mkdir()
    widget = DenoiseWidget(viewer)
    widget.run.setText(str(run))
    widget.start()  # the model is loaded on the worker thread: its error comes back as a notification
    qtbot.waitUntil(lambda: bool(errors), timeout=10_000)
    assert errors == [f"{run}: " + ("no such checkpoint directory" if bad == "missing" else
                                    f"not an iscl checkpoint (no config.json here or in {run / 'checkpoint'})")]
    qtbot.waitUntil(widget.button.isEnabled, timeout=5_000)
    assert [layer.name for layer in viewer.layers] == ["noisy"]


def test_no_model_chosen_is_a_notification(make_viewer, errors):
    viewer = make_viewer()
    viewer.add_image(_noisy_stack()[0], name="noisy")
    DenoiseWidget(viewer).start()
    assert len(errors) == 1 and "choose a model" in errors[0]


def test_plain_function_loops_over_leading_axes(tiny_run):
    hyper = _noisy_stack()[None].repeat(2, axis=0)  # (T, Z, H, W)
    model = iscl.load(tiny_run)
    out = denoise(hyper, tiny_run, output="bypass")
    assert out.shape == hyper.shape and out.dtype == hyper.dtype
    np.testing.assert_array_equal(out[1], model.denoise(hyper[1], output="bypass"))
