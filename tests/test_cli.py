"""CLI end to end on tiny files: train → denoise round trips in every format, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

import iscl
from iscl.cli import app
from iscl.errors import ImageReadError
from iscl.training import tensorboard as tb
from synthetic import shapes_image, structured_noise

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    text = (result.stderr if hasattr(result, "stderr") else result.output).strip()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("iscl: error:")]
    assert lines, text
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tiny_run) -> Path:
    """The shared tiny trained run (conftest.tiny_run)."""
    return tiny_run


def _write_pools(folder: Path) -> None:
    """Two 72x72 TIFFs in each of folder/clean and folder/noisy."""
    rng = np.random.default_rng(0)
    for pool in ("clean", "noisy"):
        (folder / pool).mkdir()
        for i in range(2):
            tifffile.imwrite(folder / pool / f"{i}.tif", shapes_image(rng, 72))


def test_train_command_writes_run(tmp_path):
    _write_pools(tmp_path)
    r = invoke("train", "--clean", tmp_path / "clean", "--noisy", tmp_path / "noisy", "--out", tmp_path / "run",
               "--steps", "2", "--batch-size", "2", "--seed", "1", "--quiet")
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    assert (run / "checkpoint" / "weights.safetensors").is_file() and (run / "loss.png").is_file()
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    cfg = json.loads((run / "checkpoint" / "config.json").read_text())
    assert cfg["config"]["train"]["steps"] == 2 and cfg["config"]["preset"] == "fast"  # the CPU default
    # a second train into the same folder is refused without --resume/--overwrite
    r = invoke("train", "--clean", tmp_path / "clean", "--noisy", tmp_path / "noisy", "--out", run, "--steps", "2",
               "--quiet")
    assert r.exit_code == 1 and "already holds a run" in error_line(r)


def _write(path: Path, array: np.ndarray) -> None:
    if path.suffix == ".png":
        Image.fromarray(array).save(path)
    elif path.suffix == ".npy":
        np.save(path, array)
    else:
        tifffile.imwrite(path, array, photometric="minisblack")  # a 3-slice stack, not RGB


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("u8.tif", (np.random.default_rng(0).random((40, 52)) * 255).astype(np.uint8)),
        ("u16.tif", (np.random.default_rng(1).random((37, 45)) * 60000).astype(np.uint16)),
        ("f32.tif", np.random.default_rng(2).random((33, 64)).astype(np.float32)),
        ("stack.tif", (np.random.default_rng(3).random((3, 32, 36)) * 255).astype(np.uint8)),
        ("p8.png", (np.random.default_rng(4).random((30, 30)) * 255).astype(np.uint8)),
        ("p16.png", (np.random.default_rng(5).random((30, 30)) * 65535).astype(np.uint16)),
        ("a.npy", np.random.default_rng(6).random((20, 24)).astype(np.float32)),
    ],
)
def test_denoise_round_trip_keeps_format_shape_dtype(model_dir, tmp_path, name, array):
    src = tmp_path / "in" / name
    src.parent.mkdir()
    _write(src, array)
    r = invoke("denoise", model_dir, src, "--out", tmp_path / "out", "--quiet")
    assert r.exit_code == 0, r.output
    out_path = tmp_path / "out" / name
    from iscl.data.io import read_image

    out, _ = read_image(out_path)
    assert out.shape == array.shape and out.dtype == array.dtype
    assert not np.array_equal(out, array)  # it did something
    if array.ndim == 3:  # a stack is denoised slice by slice: slice 1 equals denoising it alone
        alone = iscl.load(model_dir).denoise(array[1])
        assert np.array_equal(out[1], alone)


def test_denoise_dicom_keeps_header_and_units(model_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    r = invoke("denoise", model_dir, src, "--out", tmp_path / "out", "--quiet", "--save-noise-map")
    assert r.exit_code == 0, r.output
    a, b = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "out" / src.name)
    assert b.pixel_array.shape == a.pixel_array.shape and b.pixel_array.dtype == a.pixel_array.dtype
    for tag in ("PatientName", "StudyInstanceUID", "SeriesInstanceUID", "RescaleSlope", "RescaleIntercept",
                "PixelSpacing", "Rows", "Columns"):
        assert b.get(tag) == a.get(tag), tag
    assert b.SOPInstanceUID != a.SOPInstanceUID  # a new image, so a new instance UID
    assert (tmp_path / "out" / "CT_small_noise.tif").is_file()


def test_tiled_denoise_matches_whole_image(model_dir, tmp_path):
    img = np.random.default_rng(7).random((150, 170)).astype(np.float32)
    np.save(tmp_path / "big.npy", img)
    assert invoke("denoise", model_dir, tmp_path / "big.npy", "--out", tmp_path / "whole", "--tile", "0",
                  "--quiet").exit_code == 0
    assert invoke("denoise", model_dir, tmp_path / "big.npy", "--out", tmp_path / "tiled", "--tile", "96",
                  "--overlap", "48", "--quiet").exit_code == 0
    a, b = np.load(tmp_path / "whole" / "big.npy"), np.load(tmp_path / "tiled" / "big.npy")
    assert 10 * np.log10(1 / np.mean((a - b) ** 2)) > 45


# ------------------------------------------------------------------------------------------- bad inputs
def _bad_inputs(d: Path) -> dict[str, Path]:
    d.mkdir(exist_ok=True)
    files = {
        "missing": d / "missing.tif",
        "empty": d / "empty.tif",
        "truncated": d / "truncated.tif",
        "text": d / "notes.txt",
        "fake_tif": d / "fake.tif",
        "tiny": d / "tiny.npy",
        "nan": d / "nan.npy",
    }
    files["empty"].write_bytes(b"")
    tifffile.imwrite(files["truncated"], np.zeros((64, 64), np.uint16))
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:3000])
    files["text"].write_text("hello")
    files["fake_tif"].write_text("not an image")
    np.save(files["tiny"], np.zeros((3, 3), np.float32))
    nan = np.zeros((16, 16), np.float32)
    nan[2, 3] = np.nan
    np.save(files["nan"], nan)
    return files


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "text", "fake_tif", "tiny", "nan"])
def test_bad_input_one_line_error_nothing_written(model_dir, tmp_path, case):
    files = _bad_inputs(tmp_path / "in")
    out = tmp_path / "out"
    r = invoke("denoise", model_dir, files[case], "--out", out, "--quiet")
    assert r.exit_code == 1
    line = error_line(r)
    assert files[case].name in line
    assert not out.exists() or not any(out.iterdir())


def test_keep_going_processes_the_good_inputs(model_dir, tmp_path):
    files = _bad_inputs(tmp_path / "in")
    good = tmp_path / "in" / "good.npy"
    np.save(good, np.random.default_rng(0).random((24, 24)).astype(np.float32))
    r = invoke("denoise", model_dir, files["truncated"], good, files["nan"], "--out", tmp_path / "out",
               "--keep-going", "--quiet")
    assert r.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.npy"]
    assert "truncated.tif" in r.output and "nan.npy" in r.output


def test_existing_output_is_not_overwritten_without_flag(model_dir, tmp_path):
    src = tmp_path / "a.npy"
    np.save(src, np.random.default_rng(0).random((24, 24)).astype(np.float32))
    (tmp_path / "out").mkdir()
    np.save(tmp_path / "out" / "a.npy", np.zeros((2, 2)))
    before = (tmp_path / "out" / "a.npy").read_bytes()
    r = invoke("denoise", model_dir, src, "--out", tmp_path / "out", "--quiet")
    assert r.exit_code == 1 and "--overwrite" in error_line(r)
    assert (tmp_path / "out" / "a.npy").read_bytes() == before
    assert invoke("denoise", model_dir, src, "--out", tmp_path / "out", "--overwrite", "--quiet").exit_code == 0
    assert np.load(tmp_path / "out" / "a.npy").shape == (24, 24)


def test_mismatched_checkpoint_is_refused(model_dir, tmp_path):
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(model_dir, bad)
    cfg_path = bad / "checkpoint" / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["config"]["network"]["extractor_layers"] = 7
    cfg_path.write_text(json.dumps(doc))
    src = tmp_path / "a.npy"
    np.save(src, np.zeros((16, 16), np.float32))
    r = invoke("denoise", bad, src, "--out", tmp_path / "out", "--quiet")
    assert r.exit_code == 1 and "do not match the configured architecture" in error_line(r)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_a_clear_error(model_dir, tmp_path):
    target = Path("/sys/iscl-test-output")  # sysfs refuses new entries, even for root
    try:
        target.mkdir()
    except OSError:
        pass
    else:
        target.rmdir()
        pytest.skip("needs a directory this process cannot write to")
    src = tmp_path / "a.npy"
    np.save(src, np.zeros((16, 16), np.float32))
    r = invoke("denoise", model_dir, src, "--out", target, "--quiet")
    assert r.exit_code == 1 and "iscl-test-output" in error_line(r)


def test_debug_shows_the_traceback(model_dir, tmp_path):
    args = ["denoise", str(model_dir), str(tmp_path / "nope.tif"), "--out", str(tmp_path / "o")]
    # without --debug: the one-line error and exit status 1 (the runner records that as SystemExit(1))
    plain = runner.invoke(app, args)
    assert plain.exit_code == 1 and isinstance(plain.exception, SystemExit)
    message = error_line(plain).removeprefix("iscl: error: ")
    assert "nope.tif" in message
    # with --debug: the original exception itself propagates (with its traceback), not a SystemExit
    r = runner.invoke(app, ["--debug", *args])
    assert r.exception is not None and not isinstance(r.exception, SystemExit), repr(r.exception)
    assert isinstance(r.exception, ImageReadError), repr(r.exception)
    assert " ".join(str(r.exception).split()) == message  # the very error the one-line message reported
    assert r.exc_info is not None and r.exc_info[2] is not None  # the traceback Python prints
    text = r.output + (r.stderr if hasattr(r, "stderr") else "")
    assert "iscl: error:" not in text


def test_evaluate_trained_run_on_paired_folders(model_dir, tmp_path):
    rng = np.random.default_rng(9)
    for pool in ("clean", "noisy"):
        (tmp_path / pool).mkdir()
    for i in range(2):
        c = shapes_image(rng, 48)
        tifffile.imwrite(tmp_path / "clean" / f"{i}.tif", c)
        tifffile.imwrite(tmp_path / "noisy" / f"{i}.tif", structured_noise(c, rng))
    r = invoke("evaluate", model_dir, "--clean", tmp_path / "clean", "--noisy", tmp_path / "noisy",
               "--out", tmp_path / "report")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "PSNR" in r.output and np.isfinite(report["psnr"])


def test_more_hostile_inputs(model_dir, tmp_path):
    d = tmp_path / "in dir ü"  # spaces and non-ASCII in the path
    d.mkdir()
    tifffile.imwrite(d / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    np.save(d / "one.npy", np.zeros((1, 1), np.float32))
    np.save(d / "three_by_five.npy", np.zeros((3, 5), np.float32))
    np.save(d / "four_d.npy", np.zeros((2, 2, 8, 8), np.float32))
    np.save(d / "constant é.npy", np.full((20, 20), 0.5, np.float32))
    (tmp_path / "empty dir").mkdir()
    out = tmp_path / "out"
    for name, expected in (("rgb.tif", "colour"), ("one.npy", "too small"), ("three_by_five.npy", "too small"),
                           ("four_d.npy", "4-D")):
        r = invoke("denoise", model_dir, d / name, "--out", out, "--quiet")
        assert r.exit_code == 1, name
        line = error_line(r)
        assert name in line and expected in line, line
    assert not out.exists()
    r = invoke("denoise", model_dir, tmp_path / "empty dir", "--out", out, "--quiet")
    assert r.exit_code == 1 and "empty dir" in error_line(r)
    # a constant image is legal: it is denoised, into a path with spaces and non-ASCII characters
    r = invoke("denoise", model_dir, d / "constant é.npy", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert np.isfinite(np.load(out / "constant é.npy")).all()
    # --channel picks one channel of a colour image
    r = invoke("denoise", model_dir, d / "rgb.tif", "--out", out, "--channel", "1", "--quiet")
    assert r.exit_code == 0, r.output


def test_file_size_limit_during_denoise_and_checkpointing(model_dir, tmp_path):
    """A real limit (RLIMIT_FSIZE): writes fail with EFBIG; one-line errors, nothing half-written."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = tmp_path / "big.npy"
    np.save(src, np.random.default_rng(0).random((128, 128)).astype(np.float32))  # 64 KiB output
    cmd = [sys.executable, "-m", "iscl", "denoise", str(model_dir), str(src), "--out", str(tmp_path / "out"),
           "--quiet"]
    r = subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "big.npy" in r.stderr and "File too large" in r.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

    data = tmp_path / "data"
    for pool in ("clean", "noisy"):
        (data / pool).mkdir(parents=True)
        tifffile.imwrite(data / pool / "a.tif", shapes_image(np.random.default_rng(1)))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(json.loads((model_dir / "checkpoint" / "config.json").read_text())["config"]))
    cmd = [sys.executable, "-m", "iscl", "train", "--config", str(config), "--clean", str(data / "clean"),
           "--noisy", str(data / "noisy"), "--out", str(tmp_path / "run"), "--quiet"]
    r = subprocess.run(cmd + ["--no-tensorboard"], preexec_fn=limit, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "could not write the checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["log.jsonl"]
    if tb.available():  # TensorBoard's event file hits the limit first: one warning line, then the same error
        r = subprocess.run(cmd + ["--tensorboard", "--overwrite"], preexec_fn=limit, capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2 and "TensorBoard output stops" in lines[0] and "File too large" in lines[0]
        assert "could not write the checkpoint" in lines[1]


def test_train_time_budget_and_config_file_flags(tmp_path):
    _write_pools(tmp_path)
    from iscl.config import preset

    cfg = preset("fast")
    cfg.network = type(cfg.network)(generator_width=4, generator_res_blocks=1, extractor_width=4, extractor_layers=3,
                                    discriminator_width=4)
    cfg.train.checkpoint_every, cfg.train.nonfinite, cfg.train.batch_size = 3, "skip", 2
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    # a config file's values survive when no flag is given
    r = invoke("train", "--config", tmp_path / "config.json", "--clean", tmp_path / "clean", "--noisy",
               tmp_path / "noisy", "--out", tmp_path / "run", "--time-budget", "10s", "--quiet")
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert saved["config"]["train"]["checkpoint_every"] == 3 and saved["config"]["train"]["nonfinite"] == "skip"
    assert saved["config"]["train"]["time_budget"] == 10.0
    assert saved["info"]["time_budget"]["steps"] == saved["config"]["train"]["steps"] == saved["info"]["step"]
    # the exact arithmetic is tested with a fake clock (tests/training); here only that it is wired up
    assert saved["info"]["train_seconds"] < 15.0
    r = invoke("train", "--clean", tmp_path / "clean", "--noisy", tmp_path / "noisy", "--out", tmp_path / "r2",
               "--time-budget", "soon", "--quiet")
    assert r.exit_code == 1 and "duration" in error_line(r)
    r = invoke("train", "--clean", tmp_path / "clean", "--noisy", tmp_path / "noisy", "--out", tmp_path / "r3",
               "--time-budget", "1m", "--steps", "5", "--quiet")
    assert r.exit_code == 1 and "not both" in error_line(r)


def test_two_denoise_processes_writing_one_output(model_dir, tmp_path):
    """Two real `iscl denoise` processes started together on the same --out: one wins, the other refuses
    with a one-line error and a non-zero exit, and the output is one complete, valid result."""
    import os
    import subprocess
    import sys

    src = tmp_path / "a.npy"
    np.save(src, np.random.default_rng(0).random((24, 24)).astype(np.float32))
    out = tmp_path / "same.npy"
    cmd = [sys.executable, "-m", "iscl", "denoise", str(model_dir), str(src), "--out", str(out), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    err = next(text for code, text in results if code == 1).strip()
    assert err == f"iscl: error: {out}: exists; pass --overwrite to replace it", err
    expected = iscl.load(model_dir).predict(np.load(src))["denoised"]
    result = np.load(out)  # a complete .npy (np.load would fail on a truncated one)
    assert result.shape == (24, 24) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)  # thread counts differ: not bitwise
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "same.npy"]  # no temporary file left
