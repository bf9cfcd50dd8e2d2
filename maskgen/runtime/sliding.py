"""Gaussian-blended sliding-window inference (MONAI), shared by validation during training and by prediction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference

from maskgen.device import autocast
from maskgen.extractors.base import StableExtractor
from maskgen.methods.base import Method


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
) -> torch.Tensor:
    """Softmax probabilities (C, D, H, W) for one preprocessed image (1, D, H, W), Gaussian-blended."""
    device = torch.device(device)
    was_training = method.training
    method.eval()
    x = torch.as_tensor(image).float().unsqueeze(0).to(device)
    try:
        with autocast(device, amp):
            logits = sliding_window_inference(
                x,
                roi_size=tuple(int(r) for r in roi_size),
                sw_batch_size=sw_batch_size,
                predictor=make_predictor(method, extractor, feature_mask),
                overlap=overlap,
                mode="gaussian",
            )
    finally:
        method.train(was_training)
    return torch.softmax(torch.as_tensor(logits).float(), dim=1)[0].cpu()
