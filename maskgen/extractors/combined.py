"""Several stable sources at once: ``--extractor mind+maskgen-synth`` (any list joined by ``+``).

Each member computes (and instance-normalises) its own features; the result is their concatenation, so
MaskGen masks every channel of every source independently, as it does for one source. ``weights`` is
one path when only one member takes a weights file, else ``NAME=PATH`` pairs joined by commas
(``anatomix=anatomix.pth,maskgen-synth=extractor.pt``); ``layer`` goes to the members that take one.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from maskgen.extractors.base import EXTRACTORS, StableExtractor
from maskgen.extractors.base import build_extractor as build_registered

SEPARATOR = "+"


def member_names(name: str) -> list[str]:
    """The extractors a combined name lists; each must be registered and listed once."""
    names = [n.strip() for n in name.split(SEPARATOR)]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"extractor {name!r}: list distinct extractors joined by '+', e.g. mind+maskgen-synth")
    for n in names:
        EXTRACTORS.lookup(n)
        if n == "none":
            raise ValueError(f"extractor {name!r}: 'none' cannot be combined")
    return names


def _takes(cls: type, arg: str) -> bool:
    return arg in inspect.signature(cls.__init__).parameters


def weight_pairs(weights: str | Path) -> dict[str, str] | None:
    """The ``NAME=PATH,...`` pairs of a weights setting, or None when it is one path."""
    text = str(weights)
    if "=" not in text.split(",")[0] or Path(text).exists():
        return None
    pieces = [p for p in text.split(",") if p]
    if not all("=" in p for p in pieces):
        raise ValueError(f"--extractor-weights {text!r}: give one path, or NAME=PATH pairs joined by commas")
    return dict(p.split("=", 1) for p in pieces)


def weight_files(weights: str | Path) -> dict[str, str]:
    """Each file of a weights setting by member name ("" for a single path)."""
    return weight_pairs(weights) or {"": str(weights)}


def map_weight_paths(weights: str | Path, fn: Callable[[str], str]) -> str:
    """The weights setting with ``fn`` applied to each of its paths (one path, or each of its pairs)."""
    pairs = weight_pairs(weights)
    if pairs is None:
        return fn(str(weights))
    return ",".join(f"{name}={fn(path)}" for name, path in pairs.items())


def split_weights(names: list[str], weights: str | Path | None) -> dict[str, str]:
    """Member -> weights file, from one path (one member takes weights) or ``NAME=PATH,...``."""
    if weights is None:
        return {}
    takers = [n for n in names if _takes(EXTRACTORS[n], "weights")]
    text = str(weights)
    pairs = weight_pairs(text)
    if pairs is not None:
        unknown = sorted(set(pairs) - set(takers))
        if unknown:
            raise ValueError(f"--extractor-weights names {unknown}, which take no weights here (those that do: {takers})")
        return pairs
    if len(takers) != 1:
        raise ValueError(f"--extractor-weights: {len(takers)} of {names} take a weights file ({takers}); give "
                         "NAME=PATH pairs joined by commas")
    return {takers[0]: text}


class CombinedExtractor(StableExtractor):
    name = "combined"

    def __init__(self, names: list[str], weights: str | Path | None = None, layer: int | str | None = None):
        super().__init__()
        per_member = split_weights(names, weights)
        members = []
        for n in names:
            cls = EXTRACTORS[n]
            kw = {}
            if n in per_member:
                kw["weights"] = per_member[n]
            if layer is not None and _takes(cls, "layer"):
                kw["layer"] = layer
            members.append(cls(**kw).freeze())
        self.members = nn.ModuleList(members)
        self.name = SEPARATOR.join(names)
        self.out_channels = sum(m.out_channels for m in members)
        self.size_multiple = math.lcm(*(m.size_multiple for m in members))
        self.min_size = max(m.min_size for m in members)
        self.normalize = all(m.normalize for m in members)
        radii = [m.receptive_radius for m in members]
        self.receptive_radius = None if None in radii else max(radii)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        return torch.cat([m(x, normalize=normalize) for m in self.members], dim=1)


def build_extractor(name: str, **kwargs) -> StableExtractor:
    """The registered extractor ``name``, or several at once for ``a+b``."""
    if SEPARATOR in name:
        return CombinedExtractor(member_names(name), **kwargs).freeze()
    return build_registered(name, **kwargs)


def extractor_name(name: str) -> str:
    """argparse type: a registered extractor, or registered ones joined by '+'."""
    import argparse

    try:
        member_names(name) if SEPARATOR in name else EXTRACTORS.lookup(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name
