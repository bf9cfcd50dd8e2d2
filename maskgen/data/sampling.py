"""Random training patches from volumes held in memory, augmented on the fly.

The crop centre is, with probability ``fg_fraction``, a random voxel of a foreground class drawn uniformly
among the classes present (nnU-Net's class-balanced oversampling, so small structures are seen as often as
large ones), and uniform otherwise; volumes smaller than the patch are padded, as the paper's "pad to
crop size" does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import SpatialPad
from torch.utils.data import IterableDataset, get_worker_info

from maskgen.data.volumes import plain_tensor


class PatchSampler(IterableDataset):
    def __init__(
        self,
        volumes: Sequence[dict[str, torch.Tensor]],
        patch_size: Sequence[int],
        augmentation=None,
        fg_fraction: float = 0.33,
        seed: int = 0,
        max_fg_points: int = 200_000,
        ignore_index: int | None = None,
    ):
        """``ignore_index``: class index of unannotated voxels, never a foreground centre."""
        if not volumes:
            raise ValueError("no training volumes")
        self.images = [plain_tensor(v["image"]) for v in volumes]
        self.labels = [plain_tensor(v["label"]) for v in volumes]
        self.patch = tuple(int(p) for p in patch_size)
        self.aug = augmentation
        self.fg_fraction = fg_fraction
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.fg_points: list[list[np.ndarray]] = []  # per volume, per present foreground class
        for lab in self.labels:
            per_class = []
            for c in torch.unique(lab).tolist():
                if c == 0 or c == ignore_index:
                    continue
                pts = torch.nonzero(lab[0] == c).numpy()
                if len(pts) > max_fg_points:
                    pts = pts[rng.choice(len(pts), max_fg_points, replace=False)]
                per_class.append(pts)
            self.fg_points.append(per_class)
        # padded once here, not per sample; a volume already as large as the patch is kept as it is
        self.padded = [(self._pad(img), self._pad(lab)) for img, lab in zip(self.images, self.labels)]

    def _pad(self, t: torch.Tensor) -> torch.Tensor:
        if all(s >= p for s, p in zip(t.shape[1:], self.patch)):
            return t
        return SpatialPad(self.patch)(t).as_tensor()

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        i = int(rng.integers(len(self.images)))
        img, lab = self.padded[i]
        shape = img.shape[1:]
        classes = self.fg_points[i]
        if classes and rng.random() < self.fg_fraction:
            pts = classes[rng.integers(len(classes))]
            c = pts[rng.integers(len(pts))]
            # account for symmetric padding added by SpatialPad
            c = [int(c[a]) + (shape[a] - self.labels[i].shape[1 + a]) // 2 for a in range(3)]
            starts = [min(max(c[a] - self.patch[a] // 2, 0), shape[a] - self.patch[a]) for a in range(3)]
        else:
            starts = [int(rng.integers(shape[a] - self.patch[a] + 1)) for a in range(3)]
        sl = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(starts, self.patch))
        out = {"image": img[sl].clone(), "label": lab[sl].clone()}
        if self.aug is not None:
            # plain tensors: MONAI's metadata tracking doubles the augmentation's cost, and MetaTensors
            # collated into the batch slow every operator of the training step (docs/benchmarks.md)
            tracking = get_track_meta()
            set_track_meta(False)
            try:
                out = self.aug(out)
            finally:
                set_track_meta(tracking)
            out = {k: plain_tensor(v).contiguous() for k, v in out.items()}
        out["image"] = out["image"].float()
        out["label"] = out["label"].to(lab.dtype)  # class indices: uint8 up to 256 classes, wider beyond
        return out

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info is not None else 0
        # each worker (and each resume) gets its own stream; MONAI transforms use their own RNG
        seed = (self.seed * 1_000_003 + wid * 7919 + torch.initial_seed()) % (2**32)
        rng = np.random.default_rng(seed)
        if self.aug is not None:
            self.aug.set_random_state(seed=int(seed % (2**31)))
        while True:
            yield self.sample(rng)


def round_up(v: int, m: int) -> int:
    return int(math.ceil(v / m) * m)
