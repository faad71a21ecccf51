"""The networks of a :class:`~iscl.config.NetworkConfig` (one place that maps its fields to constructors)."""

from __future__ import annotations

from typing import Any

from iscl.nn.discriminator import PatchDiscriminator
from iscl.nn.extractor import NoiseExtractor
from iscl.nn.generator import Generator

__all__ = ["make_generator", "make_extractor", "make_discriminator"]


def make_generator(net: Any, role: str = "F") -> Generator:
    """F (``role="F"``) or G (``"G"``): ``Generator(1, generator_width, generator_res_blocks, residual=...)``,
    residual when ``residual_generators`` is set, and for G also when ``residual_noise_generator`` is; G takes
    ``noise_generator_channels`` channels of random noise."""
    if role not in ("F", "G"):
        raise ValueError(f"role must be 'F' or 'G', got {role!r}")
    is_g = role == "G"
    residual = net.residual_generators or (is_g and getattr(net, "residual_noise_generator", False))
    noise = getattr(net, "noise_generator_channels", 0) if is_g else 0
    return Generator(1, net.generator_width, net.generator_res_blocks, residual=residual, noise_channels=noise)


def make_extractor(net: Any) -> NoiseExtractor:
    """H: ``NoiseExtractor(extractor_width, extractor_layers, zero_head=extractor_zero_head,
    dilations=extractor_dilations)``."""
    return NoiseExtractor(net.extractor_width, net.extractor_layers, zero_head=net.extractor_zero_head,
                          dilations=getattr(net, "extractor_dilations", ()))


def make_discriminator(net: Any) -> PatchDiscriminator:
    """D_X or D_Y: ``PatchDiscriminator(discriminator_width)``."""
    return PatchDiscriminator(net.discriminator_width)
