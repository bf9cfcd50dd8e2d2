"""Stable Feature Boosting, SFB (after Eastwood et al., 2024, as the MaskGen paper runs it, appendix C.6).

Why: the stable (features-only) model is reliable across domains but coarse; the unstable (image-only)
model is sharp but its image cues may mean something else in the test domain. SFB lets the stable model
teach the unstable one on the test volume itself (pseudo-labels), so the unstable model learns which image
cues hold *there*, and then combines both, which beats either alone when their errors are independent.

Per test volume:
1. The stable model (``--stable-run``, method ``reps_only``), temperature-calibrated on the ``--run``'s
   validation cases (one scalar T minimising the NLL), gives soft pseudo-labels q = softmax(log p_S / T).
2. For ``rounds`` (3) rounds: the unstable model (``--run``) is fine-tuned for K steps, one random crop of
   the volume each, on KL(q || p_U); then the volume is predicted and stable and adapted-unstable
   predictions are combined as a product of experts with the prior divided out once,
   log q <- log p_S^T + log p_U - log pi  (pi: the volume's mean calibrated stable probabilities),
   which is SFB's combination rule for conditionally independent sources; the result is the next q.
3. The answer is q after the last round (the mask is its argmax); the trained weights are restored.

Simplifications, honestly: SFB's "bias correction" proper removes the stable pseudo-labeller's known error
rates from the unstable model trained on its labels (a closed form for binary tasks); here, as the MaskGen
summary describes it, the correction is the combination step above, iterated. Both the model's logits and
the temperature act on the log of Gaussian-blended sliding-window probabilities. The fine-tuning runs with
BatchNorm in eval mode (training statistics; all trained weights, BN affine included, are updated), so the
adaptation comes from the pseudo-labels alone and not from re-estimated statistics (TENT's mechanism).
The paper's K and learning rate were lost in the text extraction (it tuned them on validation); defaults
here are K = 10 steps per round and Adam at lr 1e-4, a common fine-tuning rate for this UNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskgen.data.volumes import plain_tensor
from maskgen.inference.tta.base import (
    EPS,
    TTA,
    Restore,
    Segmenter,
    TTAOption,
    crop,
    load_stable,
    log_probs,
    model_logits,
    pad_to,
    random_starts,
    register_tta,
    validation_volumes,
)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Mean negative log-likelihood of integer ``labels`` (N,) under softmax(``logits`` (N, C) / T)."""
    return F.cross_entropy(logits / temperature, labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iters: int = 100) -> tuple[float, float, float]:
    """Scalar temperature minimising the NLL (Guo et al., 2017), fitted on log T with L-BFGS.

    Returns (T, NLL at T = 1, NLL at T)."""
    logits, labels = logits.detach().float(), labels.detach().long()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nll(logits, labels, log_t.exp())
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(nll(logits, labels))
    opt.step(closure)
    t = float(log_t.detach().exp().clamp(1e-2, 1e2))
    with torch.no_grad():
        after = float(nll(logits, labels, t))
    if not after <= before:  # never return a temperature worse than none
        t, after = 1.0, before
    return t, before, after


@register_tta("sfb")
class StableFeatureBoosting(TTA):
    SUMMARY = "stable feature boosting"
    OPTIONS = {
        "stable_run": TTAOption("--stable-run", str, "run trained on features alone (--method reps_only)"),
        "steps": TTAOption("--tta-steps", int, "gradient steps per pseudo-label round"),
        "lr": TTAOption("--tta-lr", float, "Adam learning rate"),
        "rounds": TTAOption("--tta-rounds", int, "pseudo-label rounds"),
        "seed": TTAOption("--tta-seed", int, "seed of the random crops"),
    }

    def __init__(self, stable_run: str | Path | None = None, steps: int = 10, lr: float = 1e-4, rounds: int = 3,
                 seed: int = 0, max_calibration_voxels: int = 500_000):
        if stable_run is None:
            raise ValueError("tta 'sfb' needs --stable-run DIR: a run trained on the stable features alone "
                             "(maskgen train --method reps_only)")
        if steps < 1 or rounds < 1:
            raise ValueError(f"--tta-steps and --tta-rounds must be at least 1, got {steps} and {rounds}")
        if lr <= 0:
            raise ValueError(f"--tta-lr must be positive, got {lr}")
        self.stable_run = Path(stable_run)
        self.steps, self.lr, self.rounds, self.seed = int(steps), float(lr), int(rounds), int(seed)
        self.max_calibration_voxels = int(max_calibration_voxels)
        self.temperature = 1.0
        self.calibration: dict[str, Any] = {}
        self.cases: dict[str, dict[str, float]] = {}

    def setup(self, predictor: Segmenter) -> None:
        self.stable = load_stable(predictor, self.stable_run)
        self.calibrate(predictor)

    def calibrate(self, predictor: Segmenter) -> None:
        """Fit the stable model's temperature on (a seeded voxel sample of) the run's validation cases."""
        vols = validation_volumes(predictor)
        logits, labels = [], []
        for v in vols:
            logits.append(log_probs(self.stable.window_probs(v["image"])).flatten(1).T)
            labels.append(v["label"].flatten().long())
        lg, lb = torch.cat(logits), torch.cat(labels)
        if len(lb) > self.max_calibration_voxels:
            idx = torch.as_tensor(np.random.default_rng(self.seed).choice(len(lb), self.max_calibration_voxels,
                                                                          replace=False))
            lg, lb = lg[idx], lb[idx]
        self.temperature, before, after = fit_temperature(lg, lb)
        self.calibration = {"temperature": self.temperature, "nll_before": before, "nll_after": after,
                            "voxels": len(lb), "val_cases": [v["case"] for v in vols]}

    def predict_volume(self, predictor: Segmenter, image: torch.Tensor, name: str | None = None) -> torch.Tensor:
        method, device = predictor.method, predictor.device
        patch = tuple(int(p) for p in predictor.cfg.patch_size)
        stable_logp = torch.log_softmax(log_probs(self.stable.window_probs(image)) / self.temperature, dim=0)
        log_prior = torch.log(stable_logp.exp().flatten(1).mean(1).clamp_min(EPS))[:, None, None, None]
        q = stable_logp.exp()
        x, valid = pad_to(plain_tensor(image).float().to(device), patch)
        rng = np.random.default_rng(self.seed)
        losses = []
        with Restore(method):
            method.eval()
            params = [p for p in method.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=self.lr)
            for _ in range(self.rounds):
                qp, _ = pad_to(q.to(device), patch)
                for s in random_starts(tuple(x.shape[1:]), patch, self.steps, rng):
                    target = crop(qp, s, patch)
                    logp = F.log_softmax(model_logits(predictor, crop(x, s, patch)[None])[0], dim=0)
                    kl = (target * (torch.log(target.clamp_min(EPS)) - logp)).sum(0)
                    loss = kl[crop(valid, s, patch)].mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
                unstable_logp = log_probs(predictor.window_probs(image))
                q = torch.softmax(stable_logp + unstable_logp - log_prior, dim=0)
        changed = float((q.argmax(0) != stable_logp.argmax(0)).float().mean())
        self.cases[name or f"volume{len(self.cases)}"] = {"kl_first": losses[0], "kl_last": losses[-1],
                                                          "changed_from_stable": changed}
        return q

    def report(self) -> dict[str, Any]:
        return {"tta": self.name, "stable_run": str(self.stable_run), "steps": self.steps, "lr": self.lr,
                "optimizer": "Adam", "rounds": self.rounds, "seed": self.seed, "calibration": self.calibration,
                "cases": self.cases}
