"""The six recipes (facts: ``shared/spec/datasets.md``). Counts given as expected are what the paper's rule
gives on the full release; a release with another number of subjects is split in the same proportions and
the difference is reported."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from maskgen.recipes.base import CT_WINDOW, Entry, Recipe, RecipeError, read_json, register, require, shuffled

MEMORY_NOTE = "Sized for one GPU at batch 4, as the paper trained (one RTX 6000 Ada, 48 GB); memory not measured here."
MIXED_NOTE = (" Channel 'mixed': the CT images are clipped to [-1024, 1024] HU when converted (the paper's window; "
              "it applies it to its CT training images), then training min-max scales every image to [0, 1]; "
              "recipe.json counts the CT images that do not reach both ends of the window.")


def _cut(n: int, n_expected: int, counts: tuple[int, ...]) -> list[int]:
    """Split sizes for ``n`` subjects: the paper's counts when ``n`` is the full release, else the same shares."""
    if n == n_expected:
        return list(counts)
    return [round(c * n / n_expected) for c in counts]


def _nii(folder: Path, pattern: str = "*.nii.gz") -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))


# ------------------------------------------------------------------------------------------- BraTS
BRATS_CONTRASTS = ("FLAIR", "T1w", "T1gd", "T2w")  # channel order of MSD Task01's 4-D images


def _brats(source: Path, metadata=None, splits=None) -> list[Entry]:
    images = _nii(require(source / "imagesTr", "MSD Task01_BrainTumour's imagesTr with 4-D BRATS_XXX.nii.gz"),
                  "BRATS_*.nii.gz")
    labels = require(source / "labelsTr", "MSD Task01_BrainTumour's labelsTr")
    if not images:
        raise RecipeError(f"{source / 'imagesTr'}: no BRATS_XXX.nii.gz images")
    ids = [p.name[: -len(".nii.gz")] for p in images]
    missing = [i for i in ids if not (labels / f"{i}.nii.gz").is_file()]
    if missing:
        raise RecipeError(f"{labels}: no label for {missing[:5]} ({len(missing)} missing)")
    order = shuffled(ids)
    n_train, n_val = _cut(len(order), 484, (340, 48))
    entries = []
    for k, sid in enumerate(order):
        split = "train" if k < n_train else "val" if k < n_train + n_val else "test"
        contrasts = ("T2w", "T1w", "T1gd") if split == "train" else ("FLAIR",)
        for c in contrasts:
            entries.append(Entry(f"{sid}_{c}", split, c, sid, source / "imagesTr" / f"{sid}.nii.gz",
                                 labels / f"{sid}.nii.gz", channel=BRATS_CONTRASTS.index(c)))
    return entries


register(Recipe("brats", _brats, {"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3},
                "MRI", {"spacing": [1.0, 1.0, 1.0], "patch_size": [128, 128, 128], "flips": True},
                {"train": 1020, "val": 48, "test": 96}, MEMORY_NOTE, few_shot_unit="image"))


# ------------------------------------------------------------------------------------------- HVSMR-2.0
HVSMR_TRAIN = (0, 1, 2, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 17, 18, 19, 23, 24, 25, 26, 27, 29, 48)


def _read_metadata(path: str | None, key: str, value: str, what: str) -> dict[str, str]:
    if path is None:
        return {}
    with open(require(Path(path), what), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or key not in rows[0] or value not in rows[0]:
        raise RecipeError(f"{path}: {what} must be a CSV with columns {key},{value}")
    return {r[key].strip(): r[value].strip() for r in rows}


def _hvsmr(source: Path, metadata=None, splits=None) -> list[Entry]:
    images = {int(m.group(1)): p for p in source.rglob("pat*_cropped.nii.gz")
              if (m := re.fullmatch(r"pat(\d+)_cropped\.nii\.gz", p.name))}
    if not images:
        raise RecipeError(f"{source}: no pat<N>_cropped.nii.gz images (HVSMR-2.0 release)")
    labels = {}
    for p in source.rglob("pat*label*.nii.gz"):
        m = re.match(r"pat(\d+)_", p.name)
        if m:
            labels[int(m.group(1))] = p
    missing = sorted(set(images) - set(labels))
    if missing:
        raise RecipeError(f"{source}: no pat<N>_labels file for patients {missing[:10]}")
    severity = _read_metadata(metadata, "patient", "severity",
                              "--metadata (the release's clinical metadata: patient,severity)")
    others = shuffled([str(i) for i in images if i not in HVSMR_TRAIN])
    (n_val,) = _cut(len(others), 37, (18,))
    entries = []
    for i in sorted(images):
        if i in HVSMR_TRAIN:
            split = "train"
        else:
            split = "val" if others.index(str(i)) < n_val else "test"
        domain = severity.get(str(i)) or ("mild+moderate" if split == "train" else "severe (presumed)")
        entries.append(Entry(f"pat{i}", split, domain, f"pat{i}", images[i], labels[i]))
    return entries


register(Recipe("hvsmr", _hvsmr, {"background": 0, "LV": 1, "RV": 2, "LA": 3, "RA": 4, "aorta": 5,
                                  "pulmonary artery": 6, "SVC": 7, "IVC": 8}, "MRI",
                {"spacing": [0.77, 0.72, 0.72], "patch_size": [128, 160, 128], "flips": True},
                {"train": 23, "val": 18, "test": 19},
                MEMORY_NOTE + " Without --metadata the held-out patients are presumed severe (as the paper's counts imply)."))


# ------------------------------------------------------------------------------------------- prostate
PROSTATE_SITES = {"RUNMC": "train", "I2CVB": "train", "UCL": "val", "HK": "val", "BIDMC": "test", "BMC": "test"}


def _prostate(source: Path, metadata=None, splits=None) -> list[Entry]:
    entries = []
    for site, split in PROSTATE_SITES.items():
        folder = next((d for d in source.iterdir() if d.is_dir() and d.name.upper() == site), None)
        if folder is None:
            raise RecipeError(f"{source}: no folder for site {site} (expected one per site: {', '.join(PROSTATE_SITES)})")
        files = _nii(folder) + _nii(folder, "*.nii")
        segs = {re.sub(r"[_-]?seg(mentation)?", "", p.name, flags=re.I): p for p in files if "seg" in p.name.lower()}
        for img in (p for p in files if "seg" not in p.name.lower()):
            if img.name not in segs:
                raise RecipeError(f"{img}: no segmentation file beside it")
            stem = img.name.split(".")[0]
            entries.append(Entry(f"{site}_{stem}", split, site, f"{site}_{stem}", img, segs[img.name], binarize=True))
    return entries


register(Recipe("prostate", _prostate, {"background": 0, "prostate": 1}, "MRI",
                {"spacing": [0.51, 0.52, 0.125], "patch_size": [256, 256, 64], "flips": True},
                {"train": 49, "val": 25, "test": 42},
                MEMORY_NOTE + " Spacing as the reference configures it (its z of 0.125 mm looks like a typo: slices are "
                "1-4 mm); override it in the preset if you disagree."))


# ------------------------------------------------------------------------------------------- PancreasDG
def _pandg(source: Path, metadata=None, splits=None) -> list[Entry]:
    need = ("--splits: a CSV with columns image,label,split,domain[,subject] (paths relative to SOURCE_DIR; split "
            "train|val|test; domain e.g. the phase and centre), because the PancreasDG split rule is not published")
    if splits is None:
        raise RecipeError(f"{source}: the pandg recipe needs {need}")
    with open(require(Path(splits), need), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label", "split", "domain"} <= set(rows[0]):
        raise RecipeError(f"{splits}: {need}")
    entries = []
    for r in rows:
        img, lab = require(source / r["image"], "an image listed in --splits"), require(source / r["label"], "a label")
        case = Path(r["image"]).name.split(".")[0].removesuffix("_0000")
        if r["split"] not in ("train", "val", "test"):
            raise RecipeError(f"{splits}: split {r['split']!r} for {r['image']} (train, val or test)")
        entries.append(Entry(case, r["split"], r["domain"], r.get("subject") or case, img, lab))
    return entries


register(Recipe("pandg", _pandg, {"background": 0, "pancreas": 1}, "MRI",
                {"spacing": [1.09, 1.09, 4.4], "patch_size": [256, 256, 64], "flips": True},
                {}, MEMORY_NOTE))


# ------------------------------------------------------------------------------------------- AMOS
AMOS_ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior vena cava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
               "prostate/uterus")


def _amos(source: Path, metadata=None, splits=None) -> list[Entry]:
    found = {}
    for img_dir, lab_dir in (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")):
        if not (source / img_dir).is_dir():
            raise RecipeError(f"{source / img_dir}: not found (the amos22 release: imagesTr, labelsTr, imagesVa, labelsVa)")
        for p in _nii(source / img_dir, "amos_*.nii.gz"):
            lab = source / lab_dir / p.name
            if lab.is_file():
                found[p.name[: -len(".nii.gz")]] = (p, lab)
    if not found:
        raise RecipeError(f"{source}: no labelled amos_XXXX.nii.gz cases")
    mri = shuffled([c for c in found if int(c.split("_")[1]) > 500])
    half = len(mri) // 2
    entries = []
    for case, (img, lab) in sorted(found.items()):
        if int(case.split("_")[1]) <= 500:
            entries.append(Entry(case, "train", "CT", case, img, lab, clip=CT_WINDOW))
        else:
            entries.append(Entry(case, "val" if mri.index(case) < half else "test", "MRI", case, img, lab))
    return entries


register(Recipe("amos", _amos, {"background": 0, **{o: i + 1 for i, o in enumerate(AMOS_ORGANS)}}, "mixed",
                {"spacing": [1.0, 1.0, 1.5], "patch_size": [192, 192, 128], "flips": False},
                {"train": 300, "val": 30, "test": 30},
                MEMORY_NOTE + " Training images are CT, validation and test MRI; case ids above 500 are taken as MRI "
                "(check against the release's dataset.json)." + MIXED_NOTE))


# ------------------------------------------------------------------------------------------- TopCoW
TOPCOW_VESSELS = ("BA", "R-PCA", "L-PCA", "R-ICA", "R-MCA", "L-ICA", "L-MCA", "R-Pcom", "L-Pcom", "Acom", "R-ACA",
                  "L-ACA", "3rd-A2")


def _topcow(source: Path, metadata=None, splits=None) -> list[Entry]:
    images = {}
    for p in source.rglob("topcow_*_0000.nii.gz"):
        m = re.fullmatch(r"topcow_(ct|mr)_(\d+)_0000\.nii\.gz", p.name)
        if m:
            images[(m.group(1), m.group(2))] = p
    if not images:
        raise RecipeError(f"{source}: no topcow_ct_NNN_0000.nii.gz / topcow_mr_NNN_0000.nii.gz images")
    labels = {p.name: p for p in source.rglob("topcow_*.nii.gz") if not p.name.endswith("_0000.nii.gz")}
    mr_ids = shuffled([i for (mod, i) in images if mod == "mr"])
    n_train, n_val = _cut(len(mr_ids), 125, (75, 20))
    entries = []
    for k, pid in enumerate(mr_ids):
        split = "train" if k < n_train else "val" if k < n_train + n_val else "test"
        mod = "ct" if split == "train" else "mr"
        if (mod, pid) not in images:
            raise RecipeError(f"{source}: patient {pid} has no topcow_{mod}_{pid}_0000.nii.gz")
        name = f"topcow_{mod}_{pid}.nii.gz"
        if name not in labels:
            raise RecipeError(f"{source}: no label {name}")
        entries.append(Entry(f"topcow_{mod}_{pid}", split, "CTA" if mod == "ct" else "MRA", pid, images[(mod, pid)],
                             labels[name], label_map={15: 13}, clip=CT_WINDOW if mod == "ct" else None))
    return entries


register(Recipe("topcow", _topcow, {"background": 0, **{v: i + 1 for i, v in enumerate(TOPCOW_VESSELS)}}, "mixed",
                {"spacing": [0.3, 0.3, 0.6], "patch_size": [192, 160, 128], "flips": False},
                {"train": 75, "val": 20, "test": 30},
                MEMORY_NOTE + " Label 15 (third A2) is remapped to 13; CTA scans of patients without an MRA id are dropped."
                + MIXED_NOTE))

__all__ = ["read_json"]
