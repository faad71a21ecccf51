"""The networks of a :class:`~iscl.config.NetworkConfig` (one place that maps its fields to constructors)."""

from __future__ import annotations

from typing import Any

from iscl.nn.discriminator import PatchDiscriminator
from iscl.nn.extractor import NoiseExtractor
from iscl.nn.generator import Generator

__all__ = ["make_generator", "make_extractor", "make_discriminator"]


def make_generator(net: Any) -> Generator:
    """F or G: ``Generator(1, generator_width, generator_res_blocks, residual=residual_generators)``."""
    return Generator(1, net.generator_width, net.generator_res_blocks, residual=net.residual_generators)


def make_extractor(net: Any) -> NoiseExtractor:
    """H: ``NoiseExtractor(extractor_width, extractor_layers, zero_head=extractor_zero_head)``."""
    return NoiseExtractor(net.extractor_width, net.extractor_layers, zero_head=net.extractor_zero_head)


def make_discriminator(net: Any) -> PatchDiscriminator:
    """D_X or D_Y: ``PatchDiscriminator(discriminator_width)``."""
    return PatchDiscriminator(net.discriminator_width)
