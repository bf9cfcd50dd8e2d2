"""Frozen, domain-stable feature extractors behind one interface (see ``base``)."""

from maskgen.extractors import mind  # noqa: F401  (registers "mind")
from maskgen.extractors.base import EXTRACTORS, StableExtractor, register_extractor

try:  # anatomix registers itself on import
    from maskgen.extractors import anatomix  # noqa: F401
except ImportError:  # pragma: no cover - module being added
    pass
else:  # our own pretrained UNet ("maskgen-synth") and TorchScript files ("torchscript")
    from maskgen.extractors import pretrained  # noqa: F401

from maskgen.extractors.combined import build_extractor, extractor_name  # noqa: E402  (after registration)

__all__ = ["EXTRACTORS", "StableExtractor", "build_extractor", "extractor_name", "register_extractor"]
