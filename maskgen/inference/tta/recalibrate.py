"""BatchNorm statistics re-estimated on unmasked training patches (``--tta recalibrate-bn``).

Why: MaskGen trains on masked inputs (whole channels zeroed, the kept ones scaled by 1/(1-p) in the
reference's ``rescale`` mode) but predicts on unmasked ones, so the running statistics its BatchNorm layers
collected during training describe inputs it never sees at inference: the variance shift of dropout before
BatchNorm (Li et al., CVPR 2019). Issue 17 asks whether that explains part of MaskGen's gap to ERM on
real scans. This adaptation answers it without retraining: once, before any test volume, every BatchNorm
layer's statistics are reset and re-estimated (cumulative average, no gradients, no weight changes) over
``batches`` batches of the run's training patches, drawn as training draws them (its patch and batch size,
its foreground oversampling, no augmentation) but never masked; the volumes are then predicted in eval mode.
The training volumes are held in memory while the patches are drawn, as training holds them.
No test data are used, so it is a source-side correction (like precise BN), not an adaptation to the test
domain; it sits with the adaptations because it changes the model once, before prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from maskgen.inference.tta.base import (
    TTA,
    Segmenter,
    TTAOption,
    batchnorm_layers,
    model_logits,
    register_tta,
    validation_volumes,
)


def recalibrate_batchnorm(predictor: Segmenter, volumes: list[dict[str, Any]], batches: int, seed: int = 0
                          ) -> int:
    """Reset and re-estimate the BatchNorm statistics of ``predictor.method`` on ``batches`` unmasked batches of
    training patches from ``volumes``; returns the number of patches seen. The method is left in eval mode."""
    from maskgen.data.sampling import PatchSampler

    cfg, method = predictor.cfg, predictor.method
    bns = batchnorm_layers(method)
    if not bns:
        raise ValueError(f"tta 'recalibrate-bn' re-estimates BatchNorm statistics, and run {predictor.run_dir} "
                         "has no BatchNorm layer")
    sampler = PatchSampler(volumes, cfg.patch_size, None, fg_fraction=cfg.fg_fraction, seed=seed,
                           ignore_index=cfg.ignore_index)
    rng = np.random.default_rng(seed)
    momenta = [bn.momentum for bn in bns]
    method.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    seen = 0
    try:
        with torch.no_grad():
            for _ in range(batches):
                x = torch.stack([sampler.sample(rng)["image"] for _ in range(cfg.batch_size)])
                model_logits(predictor, x.to(predictor.device))
                seen += x.shape[0]
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        method.eval()
    return seen


@register_tta("recalibrate-bn")
class RecalibrateBatchNorm(TTA):
    SUMMARY = "BatchNorm statistics re-estimated on unmasked training patches"
    OPTIONS = {
        "batches": TTAOption("--recalibration-batches", int, "batches of training patches (the run's batch size)"),
        "seed": TTAOption("--tta-seed", int, "seed of the random crops"),
    }

    def __init__(self, batches: int = 50, seed: int = 0):
        if batches < 1:
            raise ValueError(f"--recalibration-batches must be at least 1, got {batches}")
        self.batches, self.seed = int(batches), int(seed)
        self.patches = 0
        self.train_cases: list[str] = []

    def setup(self, predictor: Segmenter) -> None:
        vols = validation_volumes(predictor, split="train")
        self.train_cases = [v["case"] for v in vols]
        for v in vols:
            v["label"] = v["label"][None]  # (1, D, H, W), as the sampler takes it
        self.patches = recalibrate_batchnorm(predictor, vols, self.batches, self.seed)

    def report(self) -> dict[str, Any]:
        return {"tta": self.name, "batches": self.batches, "patches": self.patches, "seed": self.seed,
                "train_cases": self.train_cases}
