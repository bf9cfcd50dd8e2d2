"""Gaussian-blended sliding-window inference (MONAI's windows and weights, streamed along one axis:
streaming_windows.py), shared by validation during training and by prediction."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskgen.data.volumes import plain_tensor
from maskgen.device import autocast
from maskgen.extractors.base import StableExtractor, instance_normalize
from maskgen.methods.base import Method
from maskgen.runtime.slab_features import SlabFeatures
from maskgen.runtime.streaming_windows import streamed_sliding_window


def make_predictor(method: Method, extractor: StableExtractor | None, feature_mask: str | torch.Tensor | None = None):
    """A function window -> logits. ``feature_mask`` ('image' or 'features') zeroes one source (Fig. 4); a
    tensor of one factor per input channel (image first, then features) scales each, as training's masking
    does (``maskgen predict --qc``)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        feats = extractor(x) if (method.uses_features and extractor is not None) else None
        if isinstance(feature_mask, torch.Tensor):
            keep = feature_mask.to(device=x.device, dtype=x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
            n_img = x.shape[1]
            x = x * keep[:, :n_img]
            feats = feats * keep[:, n_img:] if feats is not None else None
        elif feature_mask == "image":
            x = torch.zeros_like(x)
        elif feature_mask == "features" and feats is not None:
            feats = torch.zeros_like(feats)
        return method(x, feats).float()

    return predict


#: how inference computes the stable features: ``window`` runs the extractor on every sliding window (each
#: voxel about 8 times at overlap 0.5, as training sees patches); ``volume`` computes it once per voxel (slab
#: by slab with a halo where the extractor's receptive radius is bounded: slab_features.py; else on the whole
#: volume) and instance-normalises each window's slice by that window's statistics (training's
#: normalisation); ``volume-norm`` normalises once over the whole volume. docs/benchmarks.md measures them.
FEATURE_PASSES = ("window", "volume", "volume-norm")
DEFAULT_FEATURE_PASS = "window"


def _precomputed_predictor(method: Method, n_image: int, normalise_window: bool,
                           feature_mask: str | torch.Tensor | None):
    """Window of [image, precomputed features] -> logits, with the same masking as ``make_predictor``."""

    def predict(w: torch.Tensor) -> torch.Tensor:
        x, feats = w[:, :n_image], w[:, n_image:]
        if normalise_window:
            feats = instance_normalize(feats)
        if isinstance(feature_mask, torch.Tensor):
            keep = feature_mask.to(device=w.device, dtype=w.dtype).view(1, -1, *([1] * (w.ndim - 2)))
            x, feats = x * keep[:, :n_image], feats * keep[:, n_image:]
        elif feature_mask == "image":
            x = torch.zeros_like(x)
        elif feature_mask == "features":
            feats = torch.zeros_like(feats)
        return method(x, feats).float()

    return predict


@torch.no_grad()
def sliding_window_probs(
    method: Method,
    extractor: StableExtractor | None,
    image: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    device: torch.device | str = "cpu",
    amp: bool = False,
    sw_batch_size: int = 2,
    feature_mask: str | torch.Tensor | None = None,
    feature_pass: str = DEFAULT_FEATURE_PASS,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Softmax probabilities (C, D, H, W) on the CPU, stored as ``out_dtype``, for one preprocessed image
    (1, D, H, W), Gaussian-blended; memory beyond them: one window's depth of float32 logits."""
    if feature_pass not in FEATURE_PASSES:
        raise ValueError(f"feature pass must be one of {FEATURE_PASSES}, got {feature_pass!r}")
    device = torch.device(device)
    was_training = method.training
    method.eval()
    x = plain_tensor(image).float().unsqueeze(0).to(device)
    once = feature_pass != "window" and method.uses_features and extractor is not None
    slabs = (once and feature_pass == "volume" and extractor.receptive_radius is not None
             and all(s >= r for s, r in zip(x.shape[2:], roi_size)))
    slab_channels = None
    try:
        with autocast(device, amp):
            if slabs:  # once per voxel, one window's depth at a time
                inputs, slab_channels = x, SlabFeatures(extractor, x)
                predictor = _precomputed_predictor(method, x.shape[1], extractor.normalize, feature_mask)
            elif once:
                normalise_once = feature_pass == "volume-norm" and extractor.normalize
                feats = extractor(x, normalize=normalise_once).to(x.dtype)
                inputs = torch.cat([x, feats], dim=1)
                del feats
                predictor = _precomputed_predictor(method, x.shape[1],
                                                   feature_pass == "volume" and extractor.normalize, feature_mask)
            else:
                inputs, predictor = x, make_predictor(method, extractor, feature_mask)
            probs = streamed_sliding_window(inputs, roi_size, predictor, overlap=overlap, sw_batch_size=sw_batch_size,
                                            out_dtype=out_dtype, slab_channels=slab_channels)
    finally:
        method.train(was_training)
    return probs
