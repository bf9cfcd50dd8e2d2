"""The paper's gradient check of Condition 1 (appendix B.2), recorded during training when asked.

Every K steps, on one fixed held-out batch (validation patches, no augmentation) with the model in eval
mode, the loss gradient of the first convolution's kernel is taken twice: under the joint input
[image, features] and under the features-only input [0, features]. The check records the cosine between
the two gradients restricted to the kernel slices that read the feature channels: overall, and per
feature channel. Above zero means what the network learns from the features with the image present
also serves it when the image is absent. ``maskgen analyze gradients`` plots them (the paper's Figure 8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskgen.data.sampling import PatchSampler
from maskgen.steplog import StepLog, truncate_step_log

FILE = "grad_check.csv"  # one row per check: step, all, feature_0, feature_1, ...


def first_convolution(method: nn.Module, in_channels: int) -> nn.Conv3d:
    """The network's first 3D convolution that reads all ``in_channels`` input channels."""
    for m in method.modules():
        if isinstance(m, nn.Conv3d) and m.in_channels == in_channels:
            return m
    raise ValueError(f"method {getattr(method, 'name', '?')!r} has no convolution reading its {in_channels} inputs")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")


class GradientCheck:
    def __init__(self, method, extractor, volumes: list[dict[str, torch.Tensor]], patch_size, batch_size: int,
                 criterion, device: torch.device, run_dir: Path, resume: bool, step: int, seed: int = 0):
        if not method.uses_features or extractor is None:
            raise ValueError(f"--grad-check-every needs a method that reads stable features; {method.name!r} does not")
        sampler = PatchSampler(volumes, patch_size, augmentation=None, seed=seed)
        rng = np.random.default_rng(seed)
        batch = [sampler.sample(rng) for _ in range(batch_size)]
        self.image = torch.stack([b["image"] for b in batch]).to(device)
        self.target = torch.stack([b["label"] for b in batch]).to(device).long()
        with torch.no_grad():
            self.features = extractor(self.image)
        self.method, self.criterion = method, criterion
        self.image_channels = self.image.shape[1]
        self.conv = first_convolution(method, self.image_channels + self.features.shape[1])
        fields = ["step", "all", *(f"feature_{c}" for c in range(self.features.shape[1]))]
        path = run_dir / FILE
        if resume:
            truncate_step_log(path, step, fields)
        self.log = StepLog(path, fields, resume)

    def _feature_grad(self, image: torch.Tensor) -> torch.Tensor:
        loss = self.criterion(self.method(image, self.features), self.target)
        (grad,) = torch.autograd.grad(loss, self.conv.weight)
        return grad[:, self.image_channels:]  # (out, feature channels, k, k, k)

    def __call__(self, step: int) -> dict[str, Any]:
        was_training = self.method.training
        self.method.eval()
        try:
            joint = self._feature_grad(self.image)
            alone = self._feature_grad(torch.zeros_like(self.image))
        finally:
            self.method.train(was_training)
        result = {"all": _cosine(joint, alone)}
        result.update({f"feature_{c}": _cosine(joint[:, c], alone[:, c]) for c in range(joint.shape[1])})
        self.log.write({"step": step, **{k: f"{v:.6f}" for k, v in result.items()}})
        return result

    def close(self) -> None:
        self.log.close()
