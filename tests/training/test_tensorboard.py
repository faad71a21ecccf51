"""TensorBoard output: the scalars equal log.jsonl, previews are written, resume and overwrite keep it clean."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import iscl
from iscl.training import tensorboard as tb
from iscl.training.runlog import read_log

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _events(run):
    acc = EventAccumulator(str(run / tb.TB_DIR), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc) -> dict[tuple[str, int], float]:
    return {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


def _expected(run) -> dict[tuple[str, int], float]:
    return {(name, r["step"]): value for r in read_log(run / "log.jsonl") if "step" in r and "d_total" in r
            for name, value in tb._scalars(r)}


def test_scalars_equal_the_log_and_previews_are_written(tmp_path, tiny_pair, tiny_config):
    clean, noisy = tiny_pair
    tiny_config.train.steps = 5
    run = tmp_path / "run"
    iscl.train(clean[:2], noisy, tiny_config, run_dir=run, progress=False, tensorboard=True, tensorboard_every=2,
               validation=(clean[2:], noisy[2:]))
    acc = _events(run)
    got, want = _scalars(acc), _expected(run)
    assert len(want) > 5 * 10 and {"d_total", "val_psnr"} <= {name for name, _ in want}
    assert got.keys() == want.keys()  # every scalar of every step, under the same names, nothing else
    np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=1e-6)  # float32 events
    images = acc.Images(tb.PREVIEW_TAG)
    assert [e.step for e in images] == [2, 4, 5]  # every 2 steps and at the last one
    assert (images[0].height, images[0].width) == (64, 5 * 64)  # noisy | F | x - H | blend | clean


def test_preview_panel_shows_the_crop_and_the_prediction(tmp_path, tiny_pair, tiny_config):
    clean, noisy = tiny_pair
    tiny_config.train.steps = 2
    model = iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "run", progress=False, tensorboard=False)
    crop = np.linspace(-1, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    panel = tb.TensorBoardWriter(tmp_path / "tb", crop).panel(model.trainer)
    assert panel.shape == (48, 4 * 40) and panel.min() >= 0 and panel.max() <= 1
    np.testing.assert_allclose(panel[:, :40], (crop + 1) / 2, atol=1e-6)  # the noisy crop, mapped to [0, 1]
    assert not np.allclose(panel[:, 40:80], panel[:, :40])  # F(x) is not the input
    # the preview follows the choice made on validation pairs: gamma 0 makes the blend the bypass x - H(x)
    model.trainer.prediction_choice = {"gamma": 0.0, "weights": "raw"}
    chosen = tb.TensorBoardWriter(tmp_path / "tb", crop).panel(model.trainer)
    np.testing.assert_allclose(chosen[:, 120:160], np.clip(chosen[:, 80:120], 0, 1), atol=1e-6)
    assert not np.allclose(panel[:, 120:160], panel[:, 80:120])  # with the configured gamma it is not


def test_resume_does_not_repeat_steps(tmp_path, tiny_pair, tiny_config):
    clean, noisy = tiny_pair
    tiny_config.train.steps = 4
    tiny_config.train.checkpoint_every = 2
    run = tmp_path / "run"
    iscl.train(clean, noisy, tiny_config, run_dir=run, progress=False, tensorboard=True, stop_at=3)
    iscl.train(clean, noisy, tiny_config, run_dir=run, progress=False, tensorboard=True, resume=True)
    acc = _events(run)
    steps = [e.step for e in acc.Scalars("d_total")]
    assert steps == [1, 2, 3, 4]  # each step once, whatever the first session wrote past the checkpoint
    assert _scalars(acc) == pytest.approx(_expected(run), rel=1e-6)


def test_default_follows_run_dir_and_flag(tmp_path, tiny_pair, tiny_config):
    clean, noisy = tiny_pair
    tiny_config.train.steps = 1
    iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "on", progress=False)
    iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "off", progress=False, tensorboard=False)
    assert any((tmp_path / "on" / tb.TB_DIR).iterdir()) and not (tmp_path / "off" / tb.TB_DIR).exists()
    with pytest.raises(ValueError, match="needs a run_dir"):
        iscl.train(clean, noisy, tiny_config, progress=False, tensorboard=True)


def test_missing_package_names_the_extra(tmp_path, tiny_pair, tiny_config, monkeypatch):
    for name in ("tensorboard", "tensorboard.summary.writer.record_writer", "torch.utils.tensorboard",
                 "torch.utils.tensorboard.summary"):
        monkeypatch.setitem(sys.modules, name, None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match=r"pip install 'iscl\[tensorboard\]'"):
        tb.TensorBoardWriter(tmp_path / "tb", np.zeros((8, 8), np.float32))


def test_cli_flag_and_overwrite_clears_old_events(tmp_path, tiny_pair):
    import tifffile
    from typer.testing import CliRunner

    from iscl.cli import app

    clean, noisy = tiny_pair
    for name, pool in (("clean", clean), ("noisy", noisy)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(pool):
            tifffile.imwrite(tmp_path / name / f"{i}.tif", im.astype(np.float32))
    args = ["train", "--clean", str(tmp_path / "clean"), "--noisy", str(tmp_path / "noisy"), "--out",
            str(tmp_path / "run"), "--preset", "cpu", "--steps", "2", "--batch-size", "2", "--quiet"]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--tensorboard-every", "1"])
    assert result.exit_code == 0, result.output
    assert [e.step for e in _events(tmp_path / "run").Images(tb.PREVIEW_TAG)] == [1, 2]
    result = runner.invoke(app, [*args, "--overwrite", "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / tb.TB_DIR).exists()  # the old run's curves went with it
