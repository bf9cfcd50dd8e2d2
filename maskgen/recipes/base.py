"""What every recipe shares: entries (one output case each), the writer, the count check, the preset."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from maskgen.data.cases import SPLIT_FOLDERS
from maskgen.registry import Registry

#: the reference code's fixed shuffle seed, independent of the training seed
SPLIT_SEED = 123
#: the paper's CT window (HU); a mixed CT/MRI dataset gets it at conversion, since training min-max scales
#: every image of a single-channel dataset alike
CT_WINDOW = (-1024.0, 1024.0)


class RecipeError(ValueError):
    """The source folder does not hold what the recipe needs; the message names what is missing."""


@dataclass
class Entry:
    case: str
    split: str
    domain: str
    subject: str
    image: Path
    label: Path
    channel: int | None = None  # index into a 4-D image (BraTS)
    label_map: dict[int, int] = field(default_factory=dict)  # value -> new value (TopCoW 15 -> 13)
    binarize: bool = False  # every non-zero label value -> 1 (prostate copies differ: 1, 2 or 255)
    clip: tuple[float, float] | None = None  # intensity window applied when written (CT: [-1024, 1024] HU)


@dataclass
class Recipe:
    name: str
    find: Callable[..., list[Entry]]  # (source, metadata, splits) -> entries
    labels: dict[str, int]
    channel: str  # the modality name dataset.json records ("MRI", "CT")
    preset: dict[str, Any]  # maskgen train settings (config.yaml names)
    expected: dict[str, int]  # split -> cases the paper's rule gives on the full release
    note: str = ""
    few_shot_unit: str = "subject"


RECIPES: Registry = Registry("recipe")


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def shuffled(ids: list[str]) -> list[str]:
    """``ids`` sorted, then permuted by ``numpy.random.default_rng(123)`` (the reference code's rule)."""
    ids = sorted(ids)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    return [ids[i] for i in order]


def convert(name: str, source: str | Path, out: str | Path, overwrite: bool = False, metadata: str | None = None,
            splits: str | None = None, few_shot: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert the release in ``source`` to ``out``; returns the summary (counts per split and domain, and
    every difference from the counts the paper's rule gives on the full release)."""
    recipe = RECIPES.lookup(name)
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise RecipeError(f"{source}: source folder not found (the {name} release as downloaded)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty; choose another OUT_DIR or pass --overwrite")
        if not (out / "recipe.json").is_file():
            raise FileExistsError(f"{out}: not written by maskgen recipe; it is never deleted, choose another OUT_DIR")
        shutil.rmtree(out)
    entries = recipe.find(source, metadata=metadata, splits=splits)
    subjects: dict[str, set[str]] = {}
    for e in entries:
        subjects.setdefault(e.subject, set()).add(e.split)
    crossing = sorted(s for s, sp in subjects.items() if len(sp) > 1)
    if crossing:
        raise RecipeError(f"{source}: subjects in more than one split: {crossing[:10]}")
    if few_shot is not None:
        entries = _few_shot(entries, few_shot, recipe.few_shot_unit)
    counts: dict[str, dict[str, int]] = {}
    for e in entries:
        counts.setdefault(e.split, {}).setdefault(e.domain, 0)
        counts[e.split][e.domain] += 1
    totals = {s: sum(d.values()) for s, d in counts.items()}
    differences = [f"{s}: {totals.get(s, 0)} cases, the paper's rule gives {n} on the full release"
                   for s, n in recipe.expected.items() if totals.get(s, 0) != n and few_shot is None]
    out.mkdir(parents=True, exist_ok=True)
    from maskgen.io import atomic_write_json

    # written before the first case: a conversion that fails half-way can be redone with --overwrite
    atomic_write_json(out / "recipe.json", {"recipe": name, "complete": False})
    windowed: dict[str, bool] = {}  # case -> the clipped image reaches both ends of the window
    for e in tqdm(entries, desc=f"recipe {name}", unit="case", disable=not progress):
        img_dir, lab_dir = SPLIT_FOLDERS[e.split]
        spans = _write_image(e, out / img_dir / f"{e.case}_0000.nii.gz")
        if e.clip is not None:
            windowed[e.case] = spans
        _write_label(e, out / lab_dir / f"{e.case}.nii.gz")
    from maskgen.data.splits import write_split_csv
    from maskgen.io import atomic_write_text

    write_split_csv(out / "splits.csv", [(e.case, e.split, e.domain, e.subject) for e in entries])
    preset = {**recipe.preset}
    atomic_write_text(out / "preset.yaml", f"# maskgen train settings of the paper for {name}. {recipe.note}\n"
                      + yaml.safe_dump(preset, sort_keys=False))
    atomic_write_json(out / "dataset.json", {"name": name, "channel_names": {"0": recipe.channel},
                                            "labels": recipe.labels, "numTraining": totals.get("train", 0),
                                            "file_ending": ".nii.gz"})
    summary = {"recipe": name, "source": str(source.resolve()), "counts": counts, "differences": differences,
               "few_shot": few_shot, "complete": True}
    if windowed:
        short = sorted(c for c, spans in windowed.items() if not spans)
        summary["ct_window"] = {"window_hu": list(CT_WINDOW), "clipped": len(windowed), "not_spanning": short}
        if short:
            differences.append(f"{len(short)} of {len(windowed)} clipped CT images do not reach both ends of "
                               f"[{CT_WINDOW[0]:g}, {CT_WINDOW[1]:g}] HU, so min-max scaling maps their window "
                               f"to a narrower range than [0, 1] (e.g. {', '.join(short[:3])})")
    atomic_write_json(out / "recipe.json", summary)
    return summary


def _few_shot(entries: list[Entry], n: int, unit: str) -> list[Entry]:
    """The reference's few-shot subset: training entries shuffled with rng(123), the first ``n`` kept."""
    if n < 1:
        raise ValueError(f"--few-shot must be at least 1, got {n}")
    train = [e for e in entries if e.split == "train"]
    key = (lambda e: e.case) if unit == "image" else (lambda e: e.subject)
    keep = set(shuffled(sorted({key(e) for e in train}))[:n])
    return [e for e in entries if e.split != "train" or key(e) in keep]


def _write_image(e: Entry, path: Path) -> bool:
    """Write the entry's image; with ``e.clip``, clipped to that window. Returns whether the written image
    reaches both ends of the window (always True without one)."""
    import nibabel as nib

    from maskgen.io import atomic_write

    if e.channel is None and e.clip is None and str(e.image).endswith(".nii.gz"):
        atomic_write(path, lambda tmp: shutil.copyfile(e.image, tmp))
        return True
    img = nib.load(str(e.image))
    data = np.asarray(img.dataobj)
    if e.channel is not None:
        if data.ndim != 4 or data.shape[3] <= e.channel:
            raise RecipeError(f"{e.image}: expected a 4-D image with at least {e.channel + 1} channels, got {data.shape}")
        data = data[..., e.channel]
    spans = True
    if e.clip is not None:
        lo, hi = e.clip
        kind = data.dtype if np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize >= 2 else np.float32
        data = np.clip(data, lo, hi).astype(kind)  # int16 CT stays int16: half the disk of float32
        spans = bool(data.min() <= lo and data.max() >= hi)
    out = nib.Nifti1Image(data, img.affine)
    atomic_write(path, lambda tmp: nib.save(out, str(tmp)))
    return spans


def _write_label(e: Entry, path: Path) -> None:
    import nibabel as nib

    from maskgen.io import atomic_write

    if not e.label_map and not e.binarize and str(e.label).endswith(".nii.gz"):
        atomic_write(path, lambda tmp: shutil.copyfile(e.label, tmp))
        return
    img = nib.load(str(e.label))
    data = np.asarray(img.dataobj).astype(np.int16)
    mapped = data.copy()
    for old, new in e.label_map.items():
        mapped[data == old] = new
    if e.binarize:
        mapped = (data != 0).astype(np.uint8)
    out = nib.Nifti1Image(mapped, img.affine)
    atomic_write(path, lambda tmp: nib.save(out, str(tmp)))


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise RecipeError(f"{path}: not found ({what})")
    return path


def read_json(path: Path) -> dict:
    return json.loads(require(path, "the release's dataset.json").read_text())
