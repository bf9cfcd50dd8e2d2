"""The resolved training configuration, saved as ``config.yaml`` in every run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    dataset: str
    out: str
    method: str = "maskgen"
    hparams: dict[str, Any] = field(default_factory=dict)
    extractor: str = "mind"
    extractor_weights: str | None = None
    extractor_layer: str | int | None = None
    splits: str | None = None
    train_subjects: int | None = None
    steps: int = 250_000
    batch_size: int = 4
    patch_size: list[int] | None = None  # None: the paper's 128^3 crop, clipped to the data
    spacing: list[float] | None = None  # None: median spacing of the training images
    lr: float = 2e-4
    weight_decay: float = 1e-5
    val_every: int = 1000
    val_overlap: float = 0.5
    aug_prob: float = 0.33
    flips: bool = True
    fg_fraction: float = 0.33
    base_width: int = 20
    n_poolings: int = 5
    convs_per_level: int = 3
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    num_workers: int = 1
    # filled in when the run starts
    modality: str | None = None
    n_classes: int | None = None
    label_names: dict[str, int] | None = None
    feature_channels: int | None = None

    def network_kwargs(self) -> dict[str, int]:
        return {"base_width": self.base_width, "n_poolings": self.n_poolings, "convs_per_level": self.convs_per_level}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from maskgen.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown configuration keys {sorted(unknown)}")
        return cls(**data)
