"""Stable features of a volume, a slab at a time along the sliding window's stream axis.

For an extractor with a bounded receptive radius r, the features of slices [a, b) computed from slices
[a - r, b + r) equal those computed from the whole volume, so inference gets the once-per-volume cost of
``--feature-pass volume`` while holding only one window's depth of features (12 float32 MIND-SSC channels
of a 512 x 512 x 300 CT: 3.8 GB for the volume, 0.9 GB for a 128-deep slab). Each slice's features are
computed once: the part of the last slab that the next one shares is kept, only the new slices are computed.
Exact for local extractors; MIND-SSC clamps its variance by the mean over its input, so where that clamp
binds (flat regions) a slab's features follow the slab's mean rather than the volume's.
"""

from __future__ import annotations

import torch

from maskgen.extractors.base import StableExtractor


class SlabFeatures:
    """``slab_channels`` for ``streamed_sliding_window``: un-normalised features over ``[start, stop)``."""

    def __init__(self, extractor: StableExtractor, image: torch.Tensor):
        if extractor.receptive_radius is None:
            raise ValueError(f"extractor {extractor.name!r} has no bounded receptive radius: slabs would differ")
        self.extractor, self.image, self.halo = extractor, image, int(extractor.receptive_radius)
        self.axis: int | None = None
        self.kept: torch.Tensor | None = None  # features of [kept_lo, kept_lo + its depth)
        self.kept_lo = 0

    def _compute(self, axis: int, start: int, stop: int) -> torch.Tensor:
        n = self.image.shape[axis + 2]
        lo, hi = max(start - self.halo, 0), min(stop + self.halo, n)
        feats = self.extractor(self.image.narrow(axis + 2, lo, hi - lo), normalize=False)
        return feats.narrow(axis + 2, start - lo, stop - start).to(self.image.dtype)

    def __call__(self, axis: int, start: int, stop: int) -> torch.Tensor:
        kept_hi = self.kept_lo + (self.kept.shape[axis + 2] if self.kept is not None else 0)
        if self.axis != axis or self.kept is None or not self.kept_lo <= start < kept_hi:
            slab = self._compute(axis, start, stop)
        else:
            reuse = self.kept.narrow(axis + 2, start - self.kept_lo, min(kept_hi, stop) - start)
            slab = reuse if kept_hi >= stop else torch.cat([reuse, self._compute(axis, kept_hi, stop)], dim=axis + 2)
        self.axis, self.kept, self.kept_lo = axis, slab, start
        return slab
