"""The benchmark's YAML configuration: datasets, shared training settings, methods with grids and seeds.

Every problem is a ``ValueError`` naming the file and the key, found before anything is trained.
Relative paths in the file are read against the file's own folder, so a config travels with its data.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from maskgen.extractors.combined import map_weight_paths
from maskgen.io import read_yaml_mapping
from maskgen.methods import METHODS, method_hparams
from maskgen.runtime.config import TrainConfig

#: TrainConfig settings a benchmark decides per cell, never in ``train:``
PER_CELL = {"dataset", "out", "method", "hparams", "seed", "splits", "train_subjects"}
#: TrainConfig settings filled in when a run starts
FILLED_AT_START = {"modality", "n_classes", "label_names", "feature_channels", "class_values", "ignore_value"}
TRAIN_KEYS = sorted({f.name for f in fields(TrainConfig)} - PER_CELL - FILLED_AT_START)
PHANTOM_KEYS = ("shape", "spacing", "n_train", "n_val", "n_test", "seed", "channels", "variant")
#: how the seeds of one grid point enter the report: ``mean`` pools them; ``best`` keeps the seed with the
#: best validation Dice (the paper's rule for GIN and GIN+IPA, which diverge on some seeds)
SEED_RULES = ("mean", "best")


@dataclass
class DatasetEntry:
    name: str
    path: str | None = None  # an nnU-Net raw folder; None for the phantom
    splits: str | None = None
    phantom: dict[str, Any] | None = None  # generate_phantom settings
    train: dict[str, Any] = field(default_factory=dict)  # per-dataset training settings (the recipe's preset)


@dataclass
class Arm:
    """One row of the tables: a method with fixed hyper-parameters, a grid searched on validation, seeds."""

    name: str
    method: str
    hparams: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    seed_rule: str = "mean"
    train: dict[str, Any] = field(default_factory=dict)  # this arm's training settings (e.g. another extractor)

    def grid_points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class BenchmarkConfig:
    path: Path
    datasets: list[DatasetEntry]
    arms: list[Arm]
    train: dict[str, Any] = field(default_factory=dict)
    few_shot_subjects: int | None = None  # the paper's few-shot setting (Table 2): N training subjects
    reference: str = "erm"  # the arm every other is compared with (paired differences)
    hd95: bool = False
    cluster: dict[str, Any] = field(default_factory=dict)  # submitit parameters (slurm_partition, timeout_min, ...)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        return "all-data" if self.few_shot_subjects is None else f"few-shot ({self.few_shot_subjects} subjects)"


def load_benchmark_config(path: str | Path) -> BenchmarkConfig:
    path = Path(path).resolve()
    raw = read_yaml_mapping(path, "benchmark configuration", "a mapping with datasets, train and methods")
    return parse_benchmark_config(raw, path)


def parse_benchmark_config(raw: dict[str, Any], path: Path) -> BenchmarkConfig:
    def fail(msg: str) -> ValueError:
        return ValueError(f"{path}: {msg}")

    known = {"datasets", "train", "methods", "setting", "few_shot_subjects", "reference", "hd95", "cluster",
             "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise fail(f"unknown top-level keys {unknown} (known: {sorted(known)})")
    for key in ("datasets", "methods"):
        if not isinstance(raw.get(key), dict) or not raw[key]:
            raise fail(f"'{key}' must be a non-empty mapping of name -> settings")
    train = _resolve_weights(_train_settings(raw.get("train") or {}, "train", fail), path.parent, "train", fail)
    datasets = [_dataset(name, spec, path.parent, fail) for name, spec in raw["datasets"].items()]
    arms = [_arm(name, spec or {}, path.parent, fail) for name, spec in raw["methods"].items()]
    setting = raw.get("setting", "all-data")
    few = raw.get("few_shot_subjects")
    if setting not in ("all-data", "few-shot"):
        raise fail(f"setting must be 'all-data' or 'few-shot', not {setting!r}")
    if setting == "few-shot":
        few = 5 if few is None else few
        if not isinstance(few, int) or isinstance(few, bool) or few < 1:
            raise fail(f"few_shot_subjects must be a positive integer, not {few!r}")
    elif few is not None:
        raise fail("few_shot_subjects is given but setting is 'all-data'; set setting: few-shot")
    reference = raw.get("reference", "erm")
    if reference not in {a.name for a in arms}:
        raise fail(f"reference arm {reference!r} is not among the methods {[a.name for a in arms]}")
    cluster = raw.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise fail("'cluster' must be a mapping of submitit parameters")
    return BenchmarkConfig(path=path, datasets=datasets, arms=arms, train=train,
                           few_shot_subjects=few if setting == "few-shot" else None, reference=reference,
                           hd95=bool(raw.get("hd95", False)), cluster=dict(cluster), raw=raw)


def _train_settings(spec: Any, where: str, fail) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise fail(f"'{where}' must be a mapping of training settings")
    bad = sorted(set(spec) - set(TRAIN_KEYS))
    if bad:
        hint = " (the benchmark sets these per cell)" if set(bad) & PER_CELL else ""
        raise fail(f"'{where}' has keys that are not training settings: {bad}{hint}; known: {TRAIN_KEYS}")
    return dict(spec)


def _dataset(name: str, spec: Any, base: Path, fail) -> DatasetEntry:
    where = f"datasets.{name}"
    if not isinstance(spec, dict):
        raise fail(f"{where} must be a mapping with 'path' (an nnU-Net folder) or 'phantom' (its settings)")
    unknown = sorted(set(spec) - {"path", "splits", "phantom", "train", "preset"})
    if unknown:
        raise fail(f"{where}: unknown keys {unknown} (known: path, splits, phantom, train, preset)")
    if ("path" in spec) == ("phantom" in spec):
        raise fail(f"{where} needs exactly one of 'path' (an nnU-Net raw folder) and 'phantom' (generated)")
    preset: dict[str, Any] = {}
    if spec.get("preset") is not None:  # maskgen recipe's preset.yaml: the paper's settings for that dataset
        from maskgen.runtime.config import load_preset

        try:
            preset = load_preset(base / str(spec["preset"]))
        except (OSError, ValueError) as e:
            raise fail(f"{where}.preset: {e}") from None
    entry = DatasetEntry(name=str(name), train=_resolve_weights(
        {**_train_settings(preset, f"{where}.preset", fail),
         **_train_settings(spec.get("train") or {}, f"{where}.train", fail)}, base, f"{where}.train", fail))
    if "path" in spec:
        entry.path = str((base / str(spec["path"])).resolve())
        if not (Path(entry.path) / "dataset.json").is_file():
            raise fail(f"{where}.path: {entry.path} has no dataset.json (an nnU-Net v2 raw folder is needed)")
        if spec.get("splits") is not None:
            entry.splits = str((base / str(spec["splits"])).resolve())
            if not Path(entry.splits).is_file():
                raise fail(f"{where}.splits: {entry.splits} does not exist")
    else:
        ph = spec["phantom"] or {}
        if not isinstance(ph, dict) or set(ph) - set(PHANTOM_KEYS):
            raise fail(f"{where}.phantom must be a mapping with keys among {list(PHANTOM_KEYS)}")
        entry.phantom = dict(ph)
        if spec.get("splits") is not None:
            raise fail(f"{where}: the phantom writes its own split file; drop 'splits'")
    return entry


def _arm(name: str, spec: Any, base: Path, fail) -> Arm:
    where = f"methods.{name}"
    if not isinstance(spec, dict):
        raise fail(f"{where} must be a mapping (method, hparams, grid, seeds, seed_rule, train)")
    unknown = sorted(set(spec) - {"method", "hparams", "grid", "seeds", "seed_rule", "train"})
    if unknown:
        raise fail(f"{where}: unknown keys {unknown} (known: method, hparams, grid, seeds, seed_rule, train)")
    method = spec.get("method", name)
    if method not in METHODS:
        raise fail(f"{where}: unknown method {method!r} (registered: {', '.join(sorted(METHODS))})")
    hparams = dict(spec.get("hparams") or {})
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise fail(f"{where}.grid must map hyper-parameter names to non-empty lists of values")
    overlap = sorted(set(grid) & set(hparams))
    if overlap:
        raise fail(f"{where}: {overlap} is both fixed (hparams) and searched (grid)")
    seeds = spec.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds)):
        raise fail(f"{where}.seeds must be a list of distinct non-negative integers, not {seeds!r}")
    rule = spec.get("seed_rule", "mean")
    if rule not in SEED_RULES:
        raise fail(f"{where}.seed_rule must be one of {SEED_RULES}, not {rule!r}")
    try:
        for point in [{k: v[0] for k, v in grid.items()}]:
            method_hparams(method, {**hparams, **point})
    except ValueError as e:
        raise fail(f"{where}: {e}") from None
    for k, values in grid.items():
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise fail(f"{where}.grid.{k}: {v!r} is not a finite number")
    return Arm(name=str(name), method=method, hparams=hparams, grid={k: list(v) for k, v in grid.items()},
               seeds=list(seeds), seed_rule=rule,
               train=_resolve_weights(_train_settings(spec.get("train") or {}, f"{where}.train", fail), base,
                                      f"{where}.train", fail))


def _resolve_weights(train: dict[str, Any], base: Path, where: str, fail) -> dict[str, Any]:
    """A relative ``extractor_weights`` path is read against the config file's folder, like dataset paths;
    a malformed setting is an error naming the config file and the key."""
    if train.get("extractor_weights") is not None:
        try:
            train["extractor_weights"] = map_weight_paths(train["extractor_weights"],
                                                          lambda path: str((base / path).resolve()))
        except ValueError as e:
            raise fail(f"{where}.extractor_weights: {e}") from None
    return train
