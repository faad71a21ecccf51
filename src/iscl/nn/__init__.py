"""Networks of ISCL (plain ``nn.Module``s; no training logic, no file I/O)."""

from iscl.nn.discriminator import PatchDiscriminator
from iscl.nn.extractor import NoiseExtractor
from iscl.nn.generator import Generator
from iscl.nn.layers import ConvTranspose2dSame, SymmetricPad2d, symmetric_pad, tf_same_pad
from iscl.nn.norm import BatchInstanceNorm, clamp_rho_

__all__ = [
    "BatchInstanceNorm",
    "ConvTranspose2dSame",
    "Generator",
    "NoiseExtractor",
    "PatchDiscriminator",
    "SymmetricPad2d",
    "clamp_rho_",
    "symmetric_pad",
    "tf_same_pad",
]
