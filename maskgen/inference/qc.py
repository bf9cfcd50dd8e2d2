"""``maskgen predict --qc``: a per-case reliability score from the partial views masked training prepared.

A MaskGen network was trained on partial views of its input (whole channels masked), so it can segment
from each view alone. Where the scan lies in its comfort zone, the views agree with the full-input
prediction; where it does not, they part ways. For each case the check predicts again with the image
masked, with the features masked and with ``n_random`` random channel masks at the run's training rate
(seeded, the same for every case), and scores

    agreement = mean over views of the mean foreground Dice between the view's and the full prediction

(1 = every view agrees; classes absent from both count as agreeing). Cases below ``threshold`` are flagged.
It costs 2 + ``n_random`` extra sliding-window passes per case and needs a method that reads stable features.
``qc.csv`` also holds the mean normalised softmax entropy (over the volume and over the predicted
foreground), the usual uncertainty score, for comparison. ``--qc-maps`` writes, per case, the share of
views that disagree with the full prediction at each voxel (``qc/<case>_disagreement.nii.gz``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from maskgen.inference.input_grid import to_input_grid
from maskgen.inference.predict import case_name
from maskgen.io import atomic_write, atomic_write_text
from maskgen.metrics import dice_per_class

DEFAULT_THRESHOLD = 0.5
DEFAULT_RANDOM_VIEWS = 3


def agreement(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    """Mean foreground Dice between two label maps (class indices); 1.0 when neither has any foreground."""
    labels = [c for c in range(1, n_classes) if (a == c).any() or (b == c).any()]
    if not labels:
        return 1.0
    vals = [v for v in dice_per_class(a, b, labels).values() if not math.isnan(v)]
    return float(np.mean(vals)) if vals else 1.0


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-voxel softmax entropy divided by log(C): 0 = certain, 1 = uniform."""
    c = probs.shape[0]
    h = -(probs.clamp_min(1e-12) * probs.clamp_min(1e-12).log()).sum(0)
    return h / math.log(c) if c > 1 else torch.zeros_like(h)


def random_views(n_channels: int, n: int, rate: float, mode: str, seed: int,
                 groups: list[int] | None = None) -> list[torch.Tensor]:
    """``n`` seeded channel masks as training draws them (each channel, or each block of ``groups`` channels
    for ``--mask-unit source``, kept with probability 1 - rate, kept ones scaled by 1/(1 - rate) in
    ``rescale`` mode); a draw that masks every channel is redrawn."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.tensor(groups if groups else [1] * n_channels)
    views = []
    while len(views) < n:
        keep = torch.rand(len(sizes), generator=gen).ge(rate).float().repeat_interleave(sizes)
        if keep.sum() == 0:
            continue
        views.append(keep / (1.0 - rate) if mode == "rescale" else keep)
    return views


class QualityCheck:
    def __init__(self, predictor, threshold: float = DEFAULT_THRESHOLD, n_random: int = DEFAULT_RANDOM_VIEWS,
                 maps: bool = False, seed: int = 0):
        method = predictor.method
        if not method.uses_features or predictor.extractor is None:
            raise ValueError(f"{predictor.run_dir}: --qc needs a run whose method reads stable features (maskgen, "
                             f"concat, ...); {predictor.cfg.method!r} reads the image alone")
        if n_random < 0:
            raise ValueError(f"--qc-random-views must be >= 0, got {n_random}")
        hp = predictor.cfg.hparams or {}
        rate = float(hp.get("mask_rate", 0.5))
        mode = str(hp.get("mask_mode", "rescale"))
        n_image = len(predictor.cfg.image_modalities())
        n_channels = n_image + int(predictor.cfg.feature_channels or predictor.extractor.out_channels)
        groups = [n_image, n_channels - n_image] if hp.get("mask_unit") == "source" else None
        self.views: list[tuple[str, Any]] = [("image masked", "image"), ("features masked", "features")]
        self.views += [(f"random {k + 1}", v)
                       for k, v in enumerate(random_views(n_channels, n_random, rate, mode, seed, groups))]
        self.threshold, self.maps = float(threshold), bool(maps)
        self.rows: list[dict[str, Any]] = []

    def targets(self, paths: Sequence[Path], out_dir: Path) -> dict[Path, list[Path]]:
        """The files the check writes, for predict's existing-output and onto-input checks."""
        self.out_dir = Path(out_dir)
        extra = {p: ([self._map_path(p)] if self.maps else []) for p in paths}
        if paths:
            extra[paths[0]].append(out_dir / "qc.csv")
        return extra

    def score(self, predictor) -> tuple[dict[str, Any], torch.Tensor]:
        """Scores of the volume ``predictor`` segmented last, and its per-voxel disagreement map."""
        image, probs, affine = predictor.last_preprocessed
        full = probs.argmax(0).numpy()
        n_classes = probs.shape[0]
        disagree = torch.zeros(probs.shape[1:])
        row: dict[str, Any] = {}
        saved = predictor.feature_mask
        try:
            for name, mask in self.views:
                predictor.feature_mask = mask
                view = predictor.window_probs(image).argmax(0)
                row[f"agreement_{name.replace(' ', '_')}"] = agreement(full, view.numpy(), n_classes)
                disagree += (view != torch.from_numpy(full)).float()
        finally:
            predictor.feature_mask = saved
        views = [v for k, v in row.items() if k.startswith("agreement_")]
        ent = normalised_entropy(probs)
        fg = torch.from_numpy(full > 0)
        row = {"qc_score": float(np.mean(views)), **row, "entropy": float(ent.mean()),
               "entropy_foreground": float(ent[fg].mean()) if fg.any() else float("nan")}
        return row, disagree / len(self.views)

    def check(self, predictor, path: Path, original) -> list[Path]:
        row, disagree = self.score(predictor)
        row = {"case": case_name(path), **row, "flagged": row["qc_score"] < self.threshold}
        self.rows.append(row)
        if not self.maps:
            return []
        _, _, affine = predictor.last_preprocessed
        grid = to_input_grid(disagree[None], affine, original)[0].astype(np.float32)
        img = nib.Nifti1Image(grid, original.affine)
        return [atomic_write(self._map_path(path), lambda tmp: nib.save(img, str(tmp)))]

    def _map_path(self, path: Path) -> Path:
        return self.out_dir / "qc" / f"{case_name(path)}_disagreement.nii.gz"

    def write(self, out_dir: Path) -> Path:
        columns = list(self.rows[0]) if self.rows else ["case", "qc_score", "flagged"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
        return atomic_write_text(Path(out_dir) / "qc.csv", buf.getvalue())
