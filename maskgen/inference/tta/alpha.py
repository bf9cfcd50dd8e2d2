"""Alpha tuning (after Jiang and Veitch, 2022, as the MaskGen paper interprets it, appendix C.6).

Why: a model on the stable features alone is robust but misses in-domain detail; a model on the image alone
is sharp in-domain but brittle. Mixing their logits, ``alpha * stable + (1 - alpha) * unstable``, trades
one against the other with a single number, chosen on validation data, instead of training a joint model.

The stable model is a features-only run (method ``reps_only``, ``--stable-run``); the unstable one is the
``--run`` (image-only ERM, or concat). ``alpha`` is either given (``--alpha``) or tuned on the ``--run``'s
validation cases over 0, 0.1, ..., 1 by mean foreground Dice (ties: the smallest alpha). Both models see
the ``--run``'s preprocessing. The chosen alpha and the grid's scores go into ``tta.json``.
Note: "tuned on validation" means the source-domain validation split; no test labels are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgen.inference.tta.base import (
    TTA,
    Segmenter,
    TTAOption,
    load_stable,
    log,
    log_probs,
    mean_foreground_dice,
    register_tta,
    validation_volumes,
)

ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def mix(stable_logp: torch.Tensor, unstable_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Softmax of ``alpha * stable + (1 - alpha) * unstable`` log-probabilities (C, ...)."""
    return torch.softmax(alpha * stable_logp + (1.0 - alpha) * unstable_logp, dim=0)


@register_tta("alpha")
class AlphaTuning(TTA):
    SUMMARY = "mix logits with a stable run"
    OPTIONS = {
        "stable_run": TTAOption("--stable-run", str, "run trained on features alone (--method reps_only)"),
        "alpha": TTAOption("--alpha", float, "weight of the stable model's logits (None: tuned on the run's "
                                             "validation cases)"),
    }

    def __init__(self, stable_run: str | Path | None = None, alpha: float | None = None):
        if stable_run is None:
            raise ValueError("tta 'alpha' needs --stable-run DIR: a run trained on the stable features alone "
                             "(maskgen train --method reps_only)")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--alpha must lie in [0, 1], got {alpha}")
        self.stable_run = Path(stable_run)
        self.alpha = None if alpha is None else float(alpha)
        self.tuned = alpha is None
        self.scores: dict[str, float] = {}
        self.val_cases: list[str] = []

    def setup(self, predictor: Segmenter) -> None:
        self.stable = load_stable(predictor, self.stable_run)
        if self.alpha is None:
            self.alpha = self.tune(predictor)

    def tune(self, predictor: Segmenter) -> float:
        vols = validation_volumes(predictor)
        n = predictor.cfg.n_classes
        per_alpha: dict[float, list[float]] = {a: [] for a in ALPHA_GRID}
        for v in vols:
            ls = log_probs(self.stable.window_probs(v["image"]))
            lu = log_probs(predictor.window_probs(v["image"]))
            ref = v["label"].numpy()
            for a in ALPHA_GRID:
                per_alpha[a].append(mean_foreground_dice(mix(ls, lu, a).argmax(0).numpy(), ref, n))
        self.val_cases = [v["case"] for v in vols]
        means = [float(np.nanmean(per_alpha[a])) if not np.all(np.isnan(per_alpha[a])) else float("nan")
                 for a in ALPHA_GRID]
        self.scores = {f"{a:.1f}": m for a, m in zip(ALPHA_GRID, means)}
        if all(np.isnan(means)):
            log.warning("alpha tuning: no foreground in any validation case or prediction; using alpha 0.5")
            return 0.5
        return ALPHA_GRID[int(np.nanargmax(means))]

    def predict_volume(self, predictor: Segmenter, image: torch.Tensor, name: str | None = None) -> torch.Tensor:
        ls = log_probs(self.stable.window_probs(image))
        lu = log_probs(predictor.window_probs(image))
        return mix(ls, lu, float(self.alpha))

    def report(self) -> dict[str, Any]:
        return {"tta": self.name, "alpha": self.alpha, "tuned": self.tuned, "stable_run": str(self.stable_run),
                "grid_val_dice": self.scores, "val_cases": self.val_cases}
