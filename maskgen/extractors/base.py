"""The stable-extractor interface: a frozen network or descriptor g(x) whose features resist domain shift.

Every extractor states its output channels and its input-size constraints; ``StableExtractor.forward``
pads the input to satisfy them, crops back, and applies per-sample, per-channel instance normalisation
(zero mean, unit std, no affine), as the MaskGen reference does. Extractors are always frozen and in
eval mode, and run under ``torch.no_grad``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskgen.registry import Registry

EXTRACTORS: Registry = Registry("extractor")
register_extractor = EXTRACTORS.register


def build_extractor(name: str, **kwargs) -> StableExtractor:
    """One registered extractor (``maskgen.extractors.build_extractor`` also builds combinations ``a+b``)."""
    return EXTRACTORS.lookup(name)(**kwargs).freeze()


class StableExtractor(nn.Module):
    """Base class. Subclasses implement ``compute(x)`` on inputs that already meet the constraints."""

    name: str = "base"
    #: number of feature channels produced
    out_channels: int = 0
    #: every spatial size must be a multiple of this ...
    size_multiple: int = 1
    #: ... and at least this large
    min_size: int = 1
    #: instance-normalise each channel of each sample (the MaskGen reference does)
    normalize: bool = True
    #: voxels on each side that a feature depends on, or None when unknown or unbounded (a UNet); with a
    #: radius, inference computes the features slab by slab with this halo (``predict --feature-pass volume``)
    receptive_radius: int | None = None

    def compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def freeze(self) -> StableExtractor:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> StableExtractor:
        # Frozen: BatchNorm statistics must never update, whatever the caller does.
        return super().train(False)

    def padded_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        m = self.size_multiple
        return tuple(max(self.min_size, -(-s // m) * m) for s in shape)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """Features for ``x`` of shape (B, 1, D, H, W), returned with the same spatial size; ``normalize``
        False skips the instance normalisation (for features computed once and normalised per window)."""
        if x.ndim != 5:
            raise ValueError(f"extractor {self.name!r} expects (B, C, D, H, W), got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        target = self.padded_shape(spatial)
        pads: list[int] = []
        for s, t in zip(reversed(spatial), reversed(target)):
            extra = t - s
            pads += [extra // 2, extra - extra // 2]
        xp = F.pad(x, pads, mode="reflect" if max(pads) < min(spatial) else "replicate") if any(pads) else x
        feats = self.compute(xp.float())
        if any(pads):
            sl = [slice(None), slice(None)]
            for s, t in zip(spatial, target):
                lo = (t - s) // 2
                sl.append(slice(lo, lo + s))
            feats = feats[tuple(sl)]
        if self.normalize if normalize is None else normalize:
            feats = instance_normalize(feats)
        return feats.to(x.dtype)


def instance_normalize(f: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per sample and channel: zero mean, unit std (InstanceNorm3d without affine)."""
    dims = tuple(range(2, f.ndim))
    mean = f.mean(dim=dims, keepdim=True)
    var = f.var(dim=dims, keepdim=True, unbiased=False)
    return (f - mean) / torch.sqrt(var + eps)


@register_extractor("none")
class NoExtractor(StableExtractor):
    """No stable source (ERM and other image-only methods)."""

    out_channels = 0
    receptive_radius = 0

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], 0, *x.shape[2:]))
