"""The spectrum source of the flat-noise term: power spectra, Gaussian fields drawn from one, and the
running noise spectrum (noisy power minus clean power)."""

import pytest
import torch

from iscl.engine.iscl import ISCL
from iscl.engine.spectral_noise import NoiseSpectrum, power_spectrum, spectral_noise


def test_power_spectrum_of_white_noise_is_its_variance_at_every_frequency():
    g = torch.Generator().manual_seed(0)
    s = power_spectrum(0.3 * torch.randn(256, 1, 32, 32, generator=g))
    assert s.shape == (32, 32)
    away = s.clone()
    away[:2, :2] = away[-1:, :2] = away[:2, -1:] = away[-1:, -1:] = float("nan")  # the window's leakage at 0
    assert away.nanmean().item() == pytest.approx(0.09, rel=0.03)
    assert (away.nan_to_num(0.09) - 0.09).abs().max().item() < 0.09 * 0.5
    with pytest.raises(ValueError, match="N, 1, H, W"):
        power_spectrum(torch.zeros(2, 32, 32))


def test_a_spectrum_on_the_zero_column_draws_lines_constant_along_the_rows():
    spectrum = torch.zeros(16, 24)
    spectrum[1:, 0] = 2.0  # power only where the frequency along the rows is zero
    field = spectral_noise(spectrum, 64, torch.Generator().manual_seed(1))
    assert field.shape == (64, 1, 16, 24) and field.dtype == torch.float32
    assert torch.allclose(field, field[..., :1].expand_as(field), atol=1e-5)  # every row is one offset
    # ... which changes from row to row, with the spectrum's mean as its expected variance
    assert field.var(dim=-2, unbiased=False).mean().item() == pytest.approx(spectrum.mean().item(), rel=0.2)
    # the expected variance is the spectrum's mean
    white = spectral_noise(torch.full((16, 24), 0.25), 256, torch.Generator().manual_seed(2))
    assert white.var().item() == pytest.approx(0.25, rel=0.05)
    # and the same generator seed draws the same fields
    assert torch.equal(field, spectral_noise(spectrum, 64, torch.Generator().manual_seed(1)))


def test_the_noise_spectrum_is_noisy_power_minus_clean_power_averaged_over_steps():
    g = torch.Generator().manual_seed(3)

    def scenes(n):  # smooth scenes: their power lies at low frequencies
        return torch.nn.functional.avg_pool2d(torch.randn(n, 1, 40, 40, generator=g), 9, 1)[..., :32, :32] * 3

    est = NoiseSpectrum(momentum=0.5)
    with pytest.raises(RuntimeError, match="before any update"):
        _ = est.noise
    first_x = scenes(64) + 0.2 * torch.randn(64, 1, 32, 1, generator=g).expand(64, 1, 32, 32)  # line offsets
    first_y = scenes(64)
    est.update(first_x, first_y)
    assert torch.equal(est.noisy, power_spectrum(first_x)) and torch.equal(est.clean, power_spectrum(first_y))
    x2, y2 = scenes(64) + 0.2 * torch.randn(64, 1, 32, 1, generator=g).expand(64, 1, 32, 32), scenes(64)
    est.update(x2, y2)
    assert torch.allclose(est.noisy, 0.5 * power_spectrum(first_x) + 0.5 * power_spectrum(x2))
    noise = est.noise
    assert noise.min().item() >= 0 and noise[0, 0].item() == 0
    # the line noise's power sits on the zero column (and, through the window, its two neighbours)
    assert noise[:, 0].sum().item() > 0.5 * noise.sum().item()
    assert noise[:, [0, 1, -1]].sum().item() > 0.9 * noise.sum().item()
    # at its level: 0.04 per row over the 32 frequencies of a column, 2/3 of it on the column itself (Hann); the
    # lowest frequency across the rows is lost under the scenes' power there
    assert noise[2:-1, 0].mean().item() == pytest.approx(2 / 3 * 0.04 * 32, rel=0.25)
    other = NoiseSpectrum()
    other.load_state_dict(est.state_dict())
    assert torch.equal(other.noise, noise) and other.momentum == 0.5
    with pytest.raises(ValueError, match="differ in size"):
        est.update(x2, y2[..., :16, :16])
    with pytest.raises(ValueError, match="after patches of"):
        est.update(x2[..., :16, :16], y2[..., :16, :16])


def test_the_engine_draws_the_known_noise_from_the_running_spectrum_and_resumes_it(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.extractor_flat_noise_weight = 1.0
    cfg.train.extractor_flat_noise_source = "spectrum"
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 1, 32, 32, generator=g) * 0.3, torch.randn(2, 1, 32, 32, generator=g) * 0.1
    noisy = m._flat_noisy(x, y)
    spectrum = (power_spectrum(x) - power_spectrum(y)).clamp(min=0)
    spectrum[0, 0] = 0
    n = spectral_noise(spectrum, 2, torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 500_009))
    assert torch.allclose(noisy, (y + n).clamp(-1, 1), atol=1e-6)
    rec = m.h_step(x, y)
    assert rec["h_flat_noise"].item() > 0
    m.step = 5
    state = m.state_dict()
    assert "noise_spectrum" in state
    resumed = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(9))
    resumed.load_state_dict(state)
    assert torch.equal(resumed._flat_noisy(x, y), m._flat_noisy(x, y))
    assert "noise_spectrum" not in ISCL(tiny_config.network, tiny_config.train).state_dict()


def _lines_both_ways(g: torch.Generator, n: int = 8, size: int = 32) -> torch.Tensor:
    """Line offsets along the rows, half of the patches turned a quarter (what the 8 rotations/flips do)."""
    lines = 0.2 * torch.randn(n, 1, size, 1, generator=g).expand(n, 1, size, size)
    turned = torch.rand(n, generator=g) < 0.5
    return torch.where(turned[:, None, None, None], lines.transpose(-2, -1), lines).contiguous()


def _line_share(fields: torch.Tensor) -> torch.Tensor:
    """(N, 2): the share of each field's variance in its row means (lines along the rows) and its column means."""
    f = fields[:, 0]
    var = f.var(dim=(-2, -1), unbiased=False)
    return torch.stack([f.mean(-1).var(-1, unbiased=False) / var, f.mean(-2).var(-1, unbiased=False) / var], dim=1)


def test_the_oriented_spectrum_keeps_lines_one_way_where_the_plain_one_draws_crosses():
    g = torch.Generator().manual_seed(5)
    plain, oriented = NoiseSpectrum(momentum=None), NoiseSpectrum(momentum=None, oriented=True)
    for _ in range(20):
        x = _lines_both_ways(g)
        plain.update(x, torch.zeros_like(x))
        oriented.update(x, torch.zeros_like(x))
    # the oriented estimate holds the lines on the zero column only; the plain one splits them over both axes
    assert oriented.noise[1:, 0].sum().item() > 100 * oriented.noise[0, 1:].sum().item()
    assert plain.noise[0, 1:].sum().item() > 0.5 * plain.noise[1:, 0].sum().item()
    draw = torch.Generator().manual_seed(6)
    one_way = _line_share(spectral_noise(oriented.noise, 64, draw, turn=True))
    # each field's lines run one way (rows or columns, about half each) ...
    assert (one_way.min(dim=1).values < 0.05).all() and (one_way.max(dim=1).values > 0.4).all()
    along_rows = (one_way[:, 0] > one_way[:, 1]).float().mean().item()
    assert 0.3 < along_rows < 0.7
    # ... where a field drawn from the plain estimate has lines both ways
    crosses = _line_share(spectral_noise(plain.noise, 64, torch.Generator().manual_seed(6)))
    assert (crosses.min(dim=1).values > 0.1).float().mean().item() > 0.9
    with pytest.raises(ValueError, match="square"):
        oriented.update(torch.zeros(2, 1, 16, 32), torch.zeros(2, 1, 16, 32))
    with pytest.raises(ValueError, match="square"):
        spectral_noise(torch.ones(16, 32), 2, draw, turn=True)


def test_momentum_none_averages_every_batch_alike_and_the_clean_spectrum_is_symmetrized():
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(4, 1, 16, 16, generator=g) * (k + 1), torch.randn(4, 1, 16, 16, generator=g))
               for k in range(3)]
    est = NoiseSpectrum(momentum=None)
    for x, y in batches:
        est.update(x, y)
    assert est.count == 3
    assert torch.allclose(est.noisy, torch.stack([power_spectrum(x) for x, _ in batches]).mean(0), atol=1e-6)
    oriented = NoiseSpectrum(momentum=None, oriented=True)
    oriented.update(*batches[0])
    assert torch.allclose(oriented.clean, oriented.clean.T) and not torch.allclose(est.clean, est.clean.T)
    other = NoiseSpectrum()
    other.load_state_dict(oriented.state_dict())
    assert other.momentum is None and other.oriented and other.count == 1
    assert torch.equal(other.noise, oriented.noise)
    with pytest.raises(ValueError, match="after patches of"):
        est.update(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8))
    assert est.count == 3  # a refused batch is not counted
    with pytest.raises(ValueError, match="or be None"):
        NoiseSpectrum(momentum=1.0)


def test_the_engine_orients_the_spectrum_only_with_the_rotations(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.extractor_flat_noise_weight = 1.0
    cfg.train.extractor_flat_noise_source = "oriented"
    cfg.train.augment = "dihedral"
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    assert m.noise_spectrum.oriented and m.noise_spectrum.momentum is None
    g = torch.Generator().manual_seed(8)
    x, y = _lines_both_ways(g, 4), torch.zeros(4, 1, 32, 32)
    noisy = m._flat_noisy(x, y)
    ref = NoiseSpectrum(momentum=None, oriented=True)
    ref.update(x, y)
    n = spectral_noise(ref.noise, 4, torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 500_009), turn=True)
    assert torch.allclose(noisy, n.clamp(-1, 1), atol=1e-6)
    m.step = 3
    resumed = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(9))
    resumed.load_state_dict(m.state_dict())
    assert resumed.noise_spectrum.count == 1
    assert torch.equal(resumed._flat_noisy(x, y), m._flat_noisy(x, y))
    cfg.train.augment = "flips"
    assert not ISCL(cfg.network, cfg.train).noise_spectrum.oriented
