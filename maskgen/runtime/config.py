"""The resolved training configuration, saved as ``config.yaml`` in every run folder.

Saved paths are absolute (so ``predict`` and ``--resume`` work from any directory) and the method's
hyper-parameters are saved with their resolved values, defaults included.
"""

from __future__ import annotations

import filecmp
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from maskgen.extractors.combined import map_weight_paths, weight_files


@dataclass
class TrainConfig:
    dataset: str
    out: str
    method: str = "maskgen"
    hparams: dict[str, Any] = field(default_factory=dict)
    extractor: str = "mind"
    extractor_weights: str | None = None
    extractor_layer: str | int | None = None
    #: image channels the extractor reads in a multi-channel dataset: ``all`` (each its own features) or one
    #: channel's name or index (``maskgen.extractors.channelwise``)
    features_from: str = "all"
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
    #: every K steps, the paper's gradient check (B.2) into grad_check.csv; 0: off
    grad_check_every: int = 0
    # filled in when the run starts
    modality: str | None = None  # the first channel's (runs saved before ``modalities`` existed have only this)
    #: the dataset's channel names (``channel_names``, in order) and each channel's modality (CT or MR)
    channels: list[str] | None = None
    modalities: list[str] | None = None
    n_classes: int | None = None
    label_names: dict[str, int] | None = None
    feature_channels: int | None = None
    #: label value of each network output channel (channel i predicts ``class_values[i]``); None in runs
    #: saved before it existed, whose channels are the values 0..n_classes-1
    class_values: list[int] | None = None
    #: value of nnU-Net's ignore label in the dataset (no output channel; left out of loss and scores)
    ignore_value: int | None = None

    #: settings ``--resume`` may change; any other setting given on resume must match the saved run
    RESUMABLE_CHANGES = ("steps", "device", "num_workers", "grad_check_every")
    PATH_FIELDS = ("dataset", "out", "splits", "extractor_weights")
    #: paths that may point elsewhere once a run, dataset or benchmark folder has moved: a saved path that no
    #: longer exists is not a conflict (weights are compared by content instead)
    MOVABLE_PATHS = ("dataset", "out", "splits")
    #: worked out from the dataset when a run starts (never a conflict; cleared when a config is rerun)
    FILLED_AT_START = ("modality", "channels", "modalities", "n_classes", "label_names", "feature_channels",
                       "class_values", "ignore_value")

    def network_kwargs(self) -> dict[str, int]:
        return {"base_width": self.base_width, "n_poolings": self.n_poolings, "convs_per_level": self.convs_per_level}

    def image_modalities(self) -> list[str]:
        """Each input channel's modality; one MR channel for a run saved before channels existed."""
        return list(self.modalities) if self.modalities else [self.modality or "MR"]

    def channel_names(self) -> list[str]:
        return list(self.channels) if self.channels else [self.modality or "MR"]

    def channel_values(self) -> list[int]:
        """Label value written for each output channel."""
        if self.class_values is not None:
            return [int(v) for v in self.class_values]
        return list(range(int(self.n_classes or 0)))

    @property
    def ignore_index(self) -> int | None:
        """Class index that marks ignored voxels in preprocessed labels: one past the last channel."""
        return None if self.ignore_value is None else len(self.channel_values())

    def with_absolute_paths(self) -> TrainConfig:
        """Paths resolved against the current directory (``~`` expanded), so the saved run works from anywhere."""
        for name in self.PATH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, map_weight_paths(value, _absolute) if name == "extractor_weights"
                        else _absolute(value))
        return self

    def conflicts_with(self, saved: TrainConfig, given: set[str] | None = None) -> list[str]:
        """Settings of ``self`` that differ from the ``saved`` run, as ``"name: saved -> new"``.

        ``given`` limits the check to the settings the user gave (None: every setting). Settings left
        at None (decided when the run starts) and those in ``RESUMABLE_CHANGES`` never conflict.
        """
        problems = []
        filled_at_start = set(self.FILLED_AT_START)
        for f in fields(self):
            name = f.name
            if name in self.RESUMABLE_CHANGES or name in filled_at_start or (given is not None and name not in given):
                continue
            new, old = getattr(self, name), getattr(saved, name)
            if name == "hparams":
                defaults = _declared_defaults(self.method)
                for key, value in (new or {}).items():
                    if key not in (old or {}) and key in defaults and value == defaults[key]:
                        continue  # saved before the method declared it: it trained with what is now the default
                    if value is not None and (old or {}).get(key) != value:
                        problems.append(f"{key}: {(old or {}).get(key)!r} -> {value!r}")
                continue
            if new is None:
                continue
            if name == "extractor_weights" and old is not None:
                if same_weights(str(old), str(new)):
                    continue
            elif name in self.PATH_FIELDS and old is not None:
                new, old = _absolute(new), _absolute(old)
                if name in self.MOVABLE_PATHS and new != old and not Path(old).exists():
                    continue  # the folder was moved (or renamed): the path it had is gone, not another choice
            if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
                new, old = list(new), None if old is None else list(old)
            if new != old:
                problems.append(f"{name}: {old!r} -> {new!r}")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from maskgen.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a run's ``config.yaml``; any problem is a ValueError naming the file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            brief = " ".join(str(e).split())[:200]
            raise ValueError(f"{path}: unreadable run configuration ({type(e).__name__}: {brief})") from e
        if not isinstance(data, dict):
            what = "empty" if data is None else f"a {type(data).__name__}, not a mapping of settings"
            raise ValueError(f"{path}: invalid run configuration: the file is {what}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown configuration keys {sorted(unknown)}")
        missing = [f.name for f in fields(cls) if f.name in ("dataset", "out") and f.name not in data]
        if missing:
            raise ValueError(f"{path}: invalid run configuration: missing {', '.join(missing)}")
        return cls(**data)


#: settings a preset (``maskgen recipe``'s preset.yaml, ``train --preset``, a benchmark dataset's ``preset``) may set
PRESET_KEYS = ("steps", "batch_size", "patch_size", "spacing", "lr", "weight_decay", "val_every", "val_overlap",
               "aug_prob", "flips", "fg_fraction", "base_width", "n_poolings", "convs_per_level", "extractor",
               "extractor_weights", "extractor_layer", "features_from", "amp", "num_workers")


def load_preset(path: str | Path) -> dict[str, Any]:
    """A preset file's training settings; an unknown key or an unreadable file is an error naming the file."""
    from maskgen.io import read_yaml_mapping

    path = Path(path)
    data = read_yaml_mapping(path, "preset", "a mapping of training settings")
    unknown = sorted(set(data) - set(PRESET_KEYS))
    if unknown:
        raise ValueError(f"{path}: preset keys {unknown} are not training settings (known: {', '.join(PRESET_KEYS)})")
    return data


def _absolute(path: str | Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def same_weights(old: str, new: str) -> bool:
    """Whether two weights settings name the same files: the same paths, or files of identical content
    (a checkout or export moved elsewhere keeps its runs resumable; another file at the same name does not)."""
    old_pairs, new_pairs = weight_files(old), weight_files(new)
    if set(old_pairs) != set(new_pairs):
        return False
    for name, old_path in old_pairs.items():
        a, b = Path(_absolute(old_path)), Path(_absolute(new_pairs[name]))
        if a == b:
            continue
        if not (a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)):
            return False
    return True


def _declared_defaults(method: str) -> dict[str, Any]:
    """The method's declared hyper-parameter defaults (none for a name no method registers)."""
    from maskgen.methods import METHODS

    try:
        return {k: h.default for k, h in METHODS.lookup(method).HPARAMS.items()}
    except (KeyError, ValueError):
        return {}
