"""A tiny trained run exported to TorchScript, ONNX and a BioImage Model Zoo package, checked against PyTorch."""

from __future__ import annotations

import json
import socket
import zipfile

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import iscl
from iscl.exporters import bmz
from iscl.predict import predict_image

SIZES = [(48, 40), (37, 53)]  # the traced size, and one with sides that are not multiples of 4


@pytest.fixture(scope="module")
def model(export_run):
    return iscl.load(export_run)


def _reference(model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(network input (1, 1, H, W), Denoiser's own whole-image prediction (H, W)), both on [-1, 1]."""
    x = model.normalizer.forward(image)
    want = predict_image(model.F_swa, model.H, x, gamma=model.config.predict.gamma)["denoised"]
    return x[None, None], want


@pytest.mark.parametrize("size", SIZES)
def test_torchscript_equals_pytorch(exported, model, noisy, size):
    ts = torch.jit.load(str(exported["torchscript"]))
    x, want = _reference(model, noisy(*size))
    with torch.no_grad():
        got = ts(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 1, *size)
    np.testing.assert_allclose(got[0, 0], want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", SIZES)
def test_onnx_equals_pytorch(exported, model, noisy, size):
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    x, want = _reference(model, noisy(*size))
    (got,) = session.run(None, {"noisy": x})
    assert got.shape == (1, 1, *size)
    np.testing.assert_allclose(got[0, 0], want, rtol=0, atol=1e-4)


def test_onnx_graph_has_dynamic_sides_opset_and_normalizer(exported, model):
    m = onnx.load(str(exported["onnx"]))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [18]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, "height", "width"]
    doc = json.loads({p.key: p.value for p in m.metadata_props}["iscl_config.json"])
    assert doc["normalizer"] == model.normalizer.model_dump(mode="json")


def test_torchscript_file_holds_the_normalizer(exported, model):
    extra = {"iscl_config.json": ""}
    torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    doc = json.loads(extra["iscl_config.json"])
    assert doc["normalizer"] == model.normalizer.model_dump(mode="json")
    assert doc["config"]["network"]["residual_generators"] is True


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a host fails (and is recorded)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_package_passes_the_zoo_test_offline(exported, no_network):
    summary = bmz.run_zoo_test(exported["bmz"])
    names = [d.name for d in summary.details]
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    for weights in ("pytorch_state_dict", "torchscript"):  # both weight formats reproduce the test output
        assert f"Reproduce test outputs from test inputs ({weights})" in names
    assert no_network == []


def test_package_description(exported, model, sample):
    from bioimageio.spec import load_model_description

    descr = load_model_description(exported["bmz"])  # read back with the zoo's own library
    with zipfile.ZipFile(exported["bmz"]) as zf:
        readme = zf.read("README.md").decode()
        test_in = np.load(zf.open("test_input.npy"))
        assert {"cover.png", "iscl_config.json", "weights.pt", "weights_torchscript.pt"} <= set(zf.namelist())
    assert descr.type == "model" and descr.format_version.startswith("0.5")
    assert [str(c.doi) for c in descr.cite] == ["10.1109/TMI.2021.3096142"]
    assert str(descr.license) == "MIT" and [a.name for a in descr.authors] == ["iscl developers"]  # pyproject
    (inp,), (out,) = descr.inputs, descr.outputs
    assert inp.axes[0].type == "batch" and inp.axes[0].size == 1
    np.testing.assert_array_equal(test_in, sample[None, None])
    # pre-processing is the run's normalizer, post-processing its inverse
    pre = next(p.kwargs for p in inp.preprocessing if p.id == "scale_linear")
    post = next(p.kwargs for p in out.postprocessing if p.id == "scale_linear")
    low, high = model.normalizer.low, model.normalizer.high
    np.testing.assert_allclose(np.array([low, high]) * pre.gain + pre.offset, model.normalizer.forward([low, high]))
    np.testing.assert_allclose(np.array([-1.0, 1.0]) * post.gain + post.offset, [low, high])
    arch = descr.weights.pytorch_state_dict.architecture
    assert (arch.import_from, arch.callable) == ("iscl.exporters.module", "IsclPredictor")
    assert descr.weights.torchscript.parent == "pytorch_state_dict"
    assert "batch 1" in readme.lower() and "iscl denoise" in readme and "its own statistics" in readme


def test_package_round_trip_equals_the_run(exported, model, noisy):
    package = iscl.load(exported["bmz"])
    for image in (noisy(37, 53), np.stack([noisy(40, 44, seed=s) for s in (1, 2)])):
        np.testing.assert_array_equal(package.denoise(image), model.denoise(image))
    u16 = np.clip(noisy(33, 47), 0, None).astype(np.uint16)  # integer input: rounded and clipped alike
    np.testing.assert_array_equal(package.denoise(u16), model.denoise(u16))
    assert package.normalizer == model.normalizer and package.config.network == model.config.network


def test_an_unpacked_package_loads_too(exported, model, noisy, tmp_path):
    with zipfile.ZipFile(exported["bmz"]) as zf:
        zf.extractall(tmp_path / "unpacked")
    image = noisy(20, 24)
    np.testing.assert_array_equal(iscl.load(tmp_path / "unpacked").denoise(image), model.denoise(image))


def test_pydantic_that_breaks_bioimageio_spec_is_refused_in_one_line(monkeypatch):
    import importlib.metadata

    fake = {"pydantic": "2.14.1", "bioimageio.spec": "0.5.12.0"}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: fake[name])
    with pytest.raises(ImportError, match=r"pydantic 2\.14\.1; pip install 'pydantic<2\.14'"):
        bmz._check_pydantic()
    fake["pydantic"] = "2.13.5"
    bmz._check_pydantic()  # the pinned pair passes
