"""Checkpoints: bit-identical predictions after save/load, exact resume, and safe refusal of bad ones."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import iscl
from iscl.training.checkpoint import CheckpointError, load_train_state, read_checkpoint_config


def test_save_load_gives_bit_identical_predictions(tiny_pair, tiny_config, tmp_path):
    clean, noisy = tiny_pair
    model = iscl.train(clean, noisy, tiny_config, progress=False)
    path = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "train_state.pt", "weights.safetensors"]
    loaded = iscl.load(path)
    for output in ("denoised", "generator", "bypass", "noise"):
        for weights in ("swa", "raw"):
            a = model.denoise(noisy[0], output=output, weights=weights)
            b = loaded.denoise(noisy[0], output=output, weights=weights)
            assert np.array_equal(a, b), (output, weights)
    config, normalizer, info = read_checkpoint_config(path)
    assert config == tiny_config and normalizer == model.normalizer
    # int(0.6·6) = 3 → SWA snapshots after updates 4, 5, 6
    assert info["step"] == tiny_config.train.steps and info["swa_snapshots"] == 3


def _all_params(model) -> list[torch.Tensor]:
    m = model.trainer.model
    return [p.detach().clone() for p in [*m.nets.parameters(), *m.swa_F.parameters(), *m.swa_G.parameters()]]


@pytest.mark.parametrize("variant", ["official-G", "random-input-G", "flat-steps"])
def test_stop_and_resume_equals_straight_run(tiny_pair, tiny_config, tmp_path, variant):
    clean, noisy = tiny_pair
    if variant == "random-input-G":  # G draws noise: the resumed run must draw what the straight one drew
        tiny_config.network.noise_generator_channels = 2
        tiny_config.network.residual_noise_generator = True
    if variant == "flat-steps":  # extra batches and flat-noise draws per step: resumed, the same ones
        tiny_config.train.extractor_flat_steps = 2
    straight = iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "straight", progress=False)
    iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "split", progress=False, stop_at=4)
    assert read_checkpoint_config(tmp_path / "split")[2]["step"] == 4
    resumed = iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "split", progress=False, resume=True)
    assert resumed.info["step"] == tiny_config.train.steps
    for a, b in zip(_all_params(straight), _all_params(resumed)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    # the loss log has one line per step, no duplicates from the interrupted part
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, tiny_config.train.steps + 1))
    straight_log = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(straight_log, resumed_log):
        assert a["g_cycle"] == pytest.approx(b["g_cycle"], abs=1e-6)


def test_resume_with_different_settings_is_refused(tiny_pair, tiny_config, tmp_path):
    clean, noisy = tiny_pair
    iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "run", progress=False, stop_at=2)
    other = tiny_config.model_copy(deep=True)
    other.train.batch_size = 3
    with pytest.raises(CheckpointError, match="batch_size"):
        iscl.train(clean, noisy, other, run_dir=tmp_path / "run", progress=False, resume=True)
    other = tiny_config.model_copy(deep=True)
    other.train.precision = "bf16"
    with pytest.raises(CheckpointError, match="precision"):
        iscl.train(clean, noisy, other, run_dir=tmp_path / "run", progress=False, resume=True)
    # the memory format only changes how the same arithmetic runs: resuming NHWC is allowed
    other = tiny_config.model_copy(deep=True)
    other.train.channels_last = True
    model = iscl.train(clean, noisy, other, run_dir=tmp_path / "run", progress=False, resume=True)
    assert model.info["step"] == tiny_config.train.steps


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_planted_as_train_state_is_not_executed(tiny_pair, tiny_config, tmp_path):
    clean, noisy = tiny_pair
    model = iscl.train(clean, noisy, tiny_config, progress=False)
    path = model.save(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    with open(path / "train_state.pt", "wb") as fh:
        pickle.dump({"iscl": _Payload(marker)}, fh)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_train_state(path)
    assert not marker.exists()
    torch.save({"x": _Payload(marker)}, path / "train_state.pt")  # the torch zip format too
    with pytest.raises(CheckpointError, match="refused to load"):
        load_train_state(path)
    assert not marker.exists()


def test_wrong_format_version_architecture_or_shapes_are_refused(tiny_pair, tiny_config, tmp_path):
    clean, noisy = tiny_pair
    path = iscl.train(clean, noisy, tiny_config, progress=False).save(tmp_path / "ckpt")
    doc = json.loads((path / "config.json").read_text())

    bad = dict(doc, format_version=99)
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="format version 99"):
        iscl.load(path)

    bad = json.loads(json.dumps(doc))
    bad["config"]["network"]["generator_width"] = 8  # weights were trained at width 4
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="do not match the configured architecture"):
        iscl.load(path)

    bad = json.loads(json.dumps(doc))
    bad["config"]["method"] = "noise2void"
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="invalid configuration"):
        iscl.load(path)

    (path / "config.json").write_text(json.dumps(doc))
    (path / "weights.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        iscl.load(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        iscl.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an iscl checkpoint"):
        iscl.load(tmp_path / "empty")


def test_checkpoint_replacement_is_atomic(tiny_pair, tiny_config, tmp_path, monkeypatch):
    clean, noisy = tiny_pair
    model = iscl.train(clean, noisy, tiny_config, progress=False)
    path = model.save(tmp_path / "ckpt")
    before = (path / "weights.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="could not write the checkpoint .*No space.*previous checkpoint is kept"):
        model.save(path)
    # the previous checkpoint is intact and no temporary directory is left behind
    assert (path / "weights.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
