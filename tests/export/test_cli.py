"""`iscl export` on the command line and bad input: one-line errors, nothing written; `iscl denoise` on a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

import iscl
from iscl import exporters
from iscl.cli import app
from iscl.exporters import ExportError, MissingExportDependency

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    text = (result.stderr if hasattr(result, "stderr") else result.output).strip()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("iscl: error:")]
    assert len(lines) == 1, text
    return lines[0]


def listing(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


def test_cli_exports_and_refuses_to_overwrite(export_run, sample, tmp_path):
    tifffile.imwrite(tmp_path / "sample.tif", sample)
    out = tmp_path / "out" / "model.pt"
    r = invoke("export", export_run, "--format", "torchscript", "--out", out)  # synthetic sample
    assert r.exit_code == 0, r.output
    assert f"exported torchscript model to {out}" in r.output
    before = out.read_bytes()
    r = invoke("export", export_run, "--format", "torchscript", "--out", out, "--sample", tmp_path / "sample.tif")
    assert r.exit_code == 1 and error_line(r) == (
        f"iscl: error: {out}: already exists; pass --overwrite (overwrite=True) to replace it")
    assert out.read_bytes() == before and listing(out.parent) == ["model.pt"]
    r = invoke("export", export_run, "--format", "torchscript", "--out", out, "--sample", tmp_path / "sample.tif",
               "--overwrite", "--gamma", "1")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() != before and listing(out.parent) == ["model.pt"]
    # gamma 1: F alone; the traced module equals F's output clipped to [-1, 1]
    model = iscl.load(export_run)
    x = torch.from_numpy(model.normalizer.forward(sample))[None, None]
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(out))(x), model.F_swa(x).clamp(-1, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["missing", "empty", "format"])
def test_cli_bad_input_is_one_line_and_writes_nothing(export_run, tmp_path, case):
    (tmp_path / "empty").mkdir()
    run = {"missing": tmp_path / "no-such-run", "empty": tmp_path / "empty", "format": export_run}[case]
    fmt = "keras" if case == "format" else "onnx"
    out = tmp_path / "exports" / "model.onnx"
    r = invoke("export", run, "--format", fmt, "--out", out)
    line = error_line(r)
    assert r.exit_code == 1
    expected = {"missing": f"{run}: no such checkpoint directory",
                "empty": f"{run}: not an iscl checkpoint",
                "format": "unknown export format 'keras'; expected one of bmz, onnx, torchscript"}[case]
    assert expected in line
    assert not out.exists() and (not out.parent.exists() or listing(out.parent) == [])


def test_out_that_is_a_folder_is_refused(export_run, tmp_path):
    with pytest.raises(ExportError, match="is a folder"):
        iscl.export(export_run, "torchscript", tmp_path)


def test_a_failed_check_leaves_nothing(export_run, tmp_path, monkeypatch):
    monkeypatch.setattr(exporters, "TOLERANCE", -1.0)  # every exported model now "differs" from PyTorch
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"model\.onnx: the exported ONNX model differs from PyTorch"):
        iscl.export(export_run, "onnx", out)
    assert listing(tmp_path) == []


def test_missing_libraries_name_the_extra(export_run, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingExportDependency,
                       match=r"onnxruntime is needed to export ONNX: pip install 'iscl\[export\]'"):
        iscl.export(export_run, "onnx", tmp_path / "model.onnx")
    assert listing(tmp_path) == []
    assert issubclass(MissingExportDependency, ImportError)


def test_denoise_command_takes_a_package(export_run, exported, noisy, tmp_path):
    package = exported["bmz"]
    image = noisy(37, 53)
    tifffile.imwrite(tmp_path / "in.tif", image)
    r = invoke("denoise", package, tmp_path / "in.tif", "--out", tmp_path / "out.tif", "--quiet")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), iscl.load(export_run).denoise(image))


def test_loading_a_foreign_zip_is_one_line(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("rdf.yaml", "type: model\n")
    with pytest.raises(ValueError, match=r"other\.zip: no iscl_config\.json .* not a model package written by iscl"):
        iscl.load(tmp_path / "other.zip")
