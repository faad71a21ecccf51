"""Parameter counts (the official TF model's), shapes and output ranges of the five networks."""

from __future__ import annotations

import pytest
import torch

from iscl.engine.iscl import ISCLNetworks
from iscl.nn import BatchInstanceNorm, Generator, NoiseExtractor, PatchDiscriminator


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_official_model():
    assert n_params(Generator()) == 1_148_225
    assert n_params(NoiseExtractor()) == 168_801
    assert n_params(PatchDiscriminator()) == 2_790_177
    assert n_params(ISCLNetworks()) == 8_045_605


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 37, 50), (1, 1, 4, 4), (3, 1, 66, 70)])
def test_generator_shape_and_tanh_range(shape):
    torch.manual_seed(0)
    g = Generator(width=8, n_res=1)
    x = torch.rand(shape) * 2 - 1
    y = g(x)
    assert y.shape == x.shape
    assert y.abs().max() < 1.0


def test_extractor_is_linear_output_same_shape():
    torch.manual_seed(0)
    h = NoiseExtractor(width=8, n_layers=4)
    x = torch.randn(2, 1, 33, 17)
    n = h(x)
    assert n.shape == x.shape
    # unbounded output: scaling the last conv's bias moves it past [-1, 1]
    with torch.no_grad():
        h.body[-1].bias.fill_(5.0)
    assert h(x).min() > 1.0


@pytest.mark.parametrize(("hw", "out"), [((64, 64), (1, 1)), ((96, 128), (3, 5)), ((65, 81), (2, 3))])
def test_discriminator_patch_map_size(hw, out):
    d = PatchDiscriminator(width=4)
    assert d(torch.randn(2, 1, *hw)).shape == (2, 1, *out)


def test_discriminator_single_64_image_gives_constant():
    # BIN on a 1x1 map with one image normalizes everything away (method.md §1)
    torch.manual_seed(0)
    d = PatchDiscriminator(width=4)
    a, b = d(torch.randn(1, 1, 64, 64)), d(torch.randn(1, 1, 64, 64))
    assert torch.allclose(a, b, atol=1e-5)


def test_truncated_normal_init():
    torch.manual_seed(0)
    g = Generator()
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.Conv2d)])
    assert w.abs().max() <= 0.1 + 1e-7  # truncated at 2 std
    assert 0.03 < w.std() < 0.05  # std of a N(0, 0.05) truncated at ±2σ is ≈ 0.044
    biases = [m.bias for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(torch.count_nonzero(b) == 0 for b in biases)
    bins = [m for m in g.modules() if isinstance(m, BatchInstanceNorm)]
    assert all(torch.all(m.rho == 1) and torch.all(m.gamma == 1) and torch.all(m.beta == 0) for m in bins)


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 37, 50)])
def test_residual_generator_starts_as_the_identity_and_returns_its_input_with_zero_weights(shape):
    torch.manual_seed(0)
    g = Generator(width=4, n_res=1, residual=True)
    x = torch.rand(shape) * 2 - 1
    assert torch.equal(g.head.weight, torch.zeros_like(g.head.weight))  # initialised at zero
    with torch.no_grad():
        assert torch.allclose(g(x), x, atol=1e-7) and torch.allclose(g(x.clone()), x, atol=1e-7)
        for p in g.parameters():
            p.zero_()
        assert torch.allclose(g(x), x, atol=1e-7)
    # and it is a correction, not a tanh: a non-zero head moves the output past [-1, 1]
    with torch.no_grad():
        g.head.bias.fill_(3.0)
    assert g(x).min() > 1.0


def test_zero_head_extractor_starts_with_no_noise():
    torch.manual_seed(0)
    h = NoiseExtractor(width=4, n_layers=4, zero_head=True)
    x = torch.randn(2, 1, 33, 17)
    assert torch.count_nonzero(h(x)) == 0
    # the other layers got the same draws as without the option
    torch.manual_seed(0)
    plain = NoiseExtractor(width=4, n_layers=4)
    assert torch.equal(plain.body[0].weight, h.body[0].weight) and torch.count_nonzero(plain.body[-1].weight) > 0


def test_residual_noise_generator_makes_only_G_residual():
    from iscl.config import NetworkConfig

    net = NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4, extractor_layers=3,
                        discriminator_width=4, residual_noise_generator=True)
    nets = ISCLNetworks(net, torch.Generator().manual_seed(0))
    y = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(nets.G(y), y, atol=1e-7)  # G starts as the identity: it adds no noise yet
        assert not torch.allclose(nets.F(y), y, atol=1e-2)  # F is the official tanh generator
    assert nets.G.residual and not nets.F.residual
    # without the option both are the official generator
    plain = ISCLNetworks(net.model_copy(update={"residual_noise_generator": False}), torch.Generator().manual_seed(0))
    assert not plain.G.residual and not plain.F.residual


def test_noise_channels_draw_anew_each_call_and_repeat_after_reseed():
    torch.manual_seed(0)
    g = Generator(width=4, n_res=1, residual=True, noise_channels=2)
    y = torch.rand(2, 1, 37, 50) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(g(y), y, atol=1e-7)  # zero head: the identity whatever z is
        for p in g.parameters():  # give the head something to do
            p.add_(0.05 * torch.randn_like(p))
        g.reseed(3)
        a, b = g(y), g(y)
        g.reseed(3)
        c = g(y)
        global_state = torch.get_rng_state()
        g(y)
        assert torch.equal(torch.get_rng_state(), global_state)  # its own RNG, never torch's global one
    assert a.shape == y.shape and not torch.allclose(a, b) and torch.equal(a, c)
    assert g.encoder[0][1].in_channels == 3 and g.head.in_channels == 4 + 2


def test_draw_false_feeds_zero_noise():
    torch.manual_seed(0)
    g = Generator(width=4, n_res=1, noise_channels=1)
    y = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = g(y, draw=False), g(y, draw=False)
        # the same as the network with its noise weights removed and z = 0
        assert torch.equal(a, b) and not torch.equal(a, g(y))


def _support(net, size=97):
    # columns/rows where the output responds to a centred impulse, relative to the response to zero
    x = torch.zeros(1, 1, size, size)
    with torch.no_grad():
        base = net(x)
        x[0, 0, size // 2, size // 2] = 1.0
        diff = (net(x) - base).abs()[0, 0]
    rows = torch.nonzero(diff.sum(1) > 0).flatten()
    return int(rows.max() - rows.min() + 1)


def test_dilated_extractor_widens_the_receptive_field_with_the_same_weights():
    from iscl.nn import NoiseExtractor

    torch.manual_seed(0)
    plain = NoiseExtractor(8, 6)
    dilated = NoiseExtractor(8, 6, dilations=(1, 2, 4, 2))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in dilated.parameters())
    from iscl.nn.norm import BatchInstanceNorm

    for net in (plain, dilated):  # BIN's whole-image statistics spread any change everywhere: the
        # receptive field is the convolutions' geometry, so measure it without them
        net.body = torch.nn.Sequential(*[torch.nn.Identity() if isinstance(m, BatchInstanceNorm) else m
                                         for m in net.body])
    assert _support(plain) == 2 * 6 + 1
    assert _support(dilated) == 3 + 2 * (1 + 2 + 4 + 2) + 2
    with pytest.raises(ValueError, match="4 dilations"):
        NoiseExtractor(8, 6, dilations=(1, 2))
