"""Presets: ``paper`` is the official method with every iscl option off; ``fast`` differs only where it says."""

from __future__ import annotations

import pytest

from iscl.config import FAST_CHANGES, Config, load_config, parse_duration, preset

# every option iscl adds to the method, with the value that switches it off (the official behaviour)
OFF = {
    "network.residual_generators": False,
    "network.residual_noise_generator": False,
    "network.noise_generator_channels": 0,
    "network.extractor_zero_head": False,
    "network.extractor_dilations": (),
    "train.schedule": "linear",
    "train.warmup_steps": 0,
    "train.d_lr_scale": 1.0,
    "train.identity_weight": 0.0,
    "train.cycle_without_draw": False,
    "train.lowpass_weight": 0.0,
    "train.pseudo_noise_weight": 1.0,
    "train.noise_consistency_weight": 1.0,
    "train.extractor_renoise_weight": 0.0,
    "train.extractor_identity_weight": 0.0,
    "train.extractor_adversarial_weight": 0.0,
    "train.extractor_transplant_weight": 0.0,
    "train.extractor_flat_noise_weight": 0.0,
    "train.extractor_flat_steps": 0,
    "normalization.headroom": 0.0,
    "train.augment": "dihedral",
    "train.min_patch_std": 0.0,
    "train.collapse_guard": False,
    "train.select_prediction": False,
    "train.time_budget": None,
    "train.axis": "z",
    "predict.tta": False,
}
OFFICIAL = {"network.generator_width": 32, "network.generator_res_blocks": 3, "network.extractor_width": 32,
            "network.extractor_layers": 20, "network.discriminator_width": 32, "train.steps": 8000,
            "train.batch_size": 64, "train.patch_size": 64, "train.lr": 1e-4, "train.min_lr": 1e-7,
            "train.cycle_weight": 30.0, "train.swa_start": 0.6, "train.lookahead_k": 6, "train.lookahead_alpha": 0.5,
            "predict.gamma": 0.5}


SECTIONS = ("network", "train", "predict", "normalization")


def get(cfg: Config, key: str):
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


def test_every_new_option_is_off_in_paper_and_paper_is_official():
    cfg = preset("paper")
    assert {k: get(cfg, k) for k in OFF} == OFF
    assert {k: get(cfg, k) for k in OFFICIAL} == OFFICIAL
    # every field a Config has is either listed here or an execution setting (or a parameter of an option
    # that is off, as lowpass_sigma): a new option must be added to OFF (and so be checked) to pass
    execution = {"train.betas", "train.eps", "train.seed", "train.checkpoint_every", "train.init_std",
                 "train.precision", "train.channels_last", "train.compile", "train.nonfinite",
                 "train.guard_patience", "train.guard_max_restarts", "train.lowpass_sigma",
                 "train.extractor_flat_noise_block", "train.extractor_flat_noise_width",
                 "train.extractor_flat_noise_guide", "train.extractor_flat_noise_source",
                 "train.extractor_flat_noise_levels", "predict.weights",
                 "predict.precision", "normalization.mode", "normalization.low", "normalization.high",
                 "normalization.percentiles", "normalization.center", "normalization.width"}
    fields = {f"{s}.{f}" for s in SECTIONS for f in type(getattr(cfg, s)).model_fields}
    assert fields == set(OFF) | set(OFFICIAL) | execution


def test_fast_differs_from_paper_exactly_in_its_listed_changes():
    paper, fast = preset("paper"), preset("fast")
    changed = {k for k in (f"{s}.{f}" for s in SECTIONS
                           for f in type(getattr(paper, s)).model_fields) if get(paper, k) != get(fast, k)}
    assert changed == set(FAST_CHANGES) | {"train.steps"}
    assert all(get(fast, k) == v for k, (v, _) in FAST_CHANGES.items())
    assert all(k.split(".")[1] in fast.notes for k in FAST_CHANGES)


def test_presets_round_trip_through_json(tmp_path):
    for name in ("paper", "cpu", "fast"):
        path = tmp_path / f"{name}.json"
        path.write_text(preset(name).model_dump_json())
        assert load_config(path) == preset(name)


def test_old_boolean_augment_still_loads():
    d = preset("paper").model_dump()
    d["train"]["augment"] = True
    assert Config.model_validate(d).train.augment == "dihedral"
    d["train"]["augment"] = False
    assert Config.model_validate(d).train.augment == "none"


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("90s", 90), ("1h30m", 5400),
                                               ("45", 45), ("10min", 600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0s", "-3", "3x"])
def test_parse_duration_rejects_nonsense(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
