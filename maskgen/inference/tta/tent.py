"""TENT (Wang et al., ICLR 2021): entropy minimisation of BatchNorm affine parameters on each test volume.

Why: a shifted domain mostly changes low-level statistics; re-normalising with the test data's own
BatchNorm statistics and nudging only the BN scales and shifts (a tiny, well-conditioned set of parameters)
towards confident (low-entropy) predictions adapts the model without labels and without moving the filters.
The MaskGen paper applies it to ERM and to the unmasked image+features model (p = 0) (appendix C.6).

Per volume: reset to the trained weights; K SGD steps, each on one random crop (the run's patch size) of
the volume, minimising the mean softmax entropy, with every BN layer in train mode (batch statistics) and
only BN weight/bias trainable; then sliding-window prediction; then the trained weights are restored.

Choices the paper leaves open (its K and learning rate did not survive the text extraction; it tuned them on
validation): K = 10, SGD lr 1e-3 with momentum 0.9 (TENT's optimiser for ImageNet, SGD+momentum 0.9).
TENT predicts with the statistics of the current test batch; here the test "batch" is one volume seen window
by window, so after the last step the BN statistics are re-estimated over the K adaptation crops (no grad,
cumulative average) and the volume is predicted in eval mode with them, so every window is normalised alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from maskgen.data.volumes import plain_tensor
from maskgen.inference.tta.base import (
    TTA,
    Restore,
    Segmenter,
    TTAOption,
    batchnorm_layers,
    crop,
    entropy_map,
    model_logits,
    pad_to,
    random_starts,
    register_tta,
)


@register_tta("tent")
class Tent(TTA):
    SUMMARY = "BatchNorm entropy minimisation per volume"
    OPTIONS = {
        "steps": TTAOption("--tta-steps", int, "gradient steps per volume"),
        "lr": TTAOption("--tta-lr", float, "SGD learning rate"),
        "seed": TTAOption("--tta-seed", int, "seed of the random crops"),
    }

    def __init__(self, steps: int = 10, lr: float = 1e-3, momentum: float = 0.9, seed: int = 0):
        if steps < 1:
            raise ValueError(f"--tta-steps must be at least 1, got {steps}")
        if lr <= 0:
            raise ValueError(f"--tta-lr must be positive, got {lr}")
        self.steps, self.lr, self.momentum, self.seed = int(steps), float(lr), float(momentum), int(seed)
        self.cases: dict[str, dict[str, float]] = {}

    def setup(self, predictor: Segmenter) -> None:
        if not any(bn.affine for bn in batchnorm_layers(predictor.method)):
            raise ValueError(f"tta 'tent' adapts BatchNorm affine parameters, and run {predictor.run_dir} has none")

    def adapt(self, predictor: Segmenter, image: torch.Tensor) -> dict[str, float]:
        """Adapt ``predictor.method`` in place to ``image`` (1, D, H, W); the caller restores it (``Restore``).

        Returns the mean entropy over the adaptation crops before and after adaptation (both with batch
        statistics, as during the steps). Crops are drawn with a generator seeded per volume, so a volume
        gets the same adaptation whatever came before it."""
        method, device = predictor.method, predictor.device
        patch = tuple(int(p) for p in predictor.cfg.patch_size)
        x, valid = pad_to(plain_tensor(image).float().to(device), patch)
        rng = np.random.default_rng(self.seed)
        starts = random_starts(tuple(x.shape[1:]), patch, self.steps, rng)

        bns = batchnorm_layers(method)
        method.eval()
        for p in method.parameters():
            p.requires_grad_(False)
        params = []
        for bn in bns:
            bn.train()
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)

        def crop_entropy(s: tuple) -> torch.Tensor:
            ent = entropy_map(model_logits(predictor, crop(x, s, patch)[None]))[0]
            return ent[crop(valid, s, patch)].mean()

        with torch.no_grad():
            before = float(np.mean([float(crop_entropy(s)) for s in starts]))
        for s in starts:
            loss = crop_entropy(s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        # statistics of this volume under the adapted parameters, for eval-mode sliding windows
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the crops
        with torch.no_grad():
            after = float(np.mean([float(crop_entropy(s)) for s in starts]))
        method.eval()
        return {"entropy_before": before, "entropy_after": after}

    def predict_volume(self, predictor: Segmenter, image: torch.Tensor, name: str | None = None) -> torch.Tensor:
        with Restore(predictor.method):
            stats = self.adapt(predictor, image)
            probs = predictor.window_probs(image)
        self.cases[name or f"volume{len(self.cases)}"] = stats
        return probs

    def report(self) -> dict[str, Any]:
        return {"tta": self.name, "steps": self.steps, "lr": self.lr, "momentum": self.momentum, "seed": self.seed,
                "optimizer": "SGD", "cases": self.cases}
