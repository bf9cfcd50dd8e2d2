"""Tests for nnU-Net v2 dataset discovery and validation (maskgen.data.nnunet)."""

from __future__ import annotations

import csv
import json
import pickle
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from maskgen.data.nnunet import (
    Case,
    DatasetError,
    DatasetSpec,
    load_dataset,
    read_dataset_json,
    validate_cases,
)

SHAPE = (12, 10, 8)
SPACING = (0.8, 1.1, 2.5)
ORIGIN = (-30.0, 12.5, 7.0)
FE = ".nii.gz"


def make_affine(spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def write_nii(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, make_affine() if affine is None else affine), str(path))
    return path


def make_label(seed: int, shape=SHAPE) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[2:6, 2:6, 2:5] = 1
    label[7:10, 5:8, 4 : 5 + seed % 3] = 2
    return label


def make_image(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def make_dataset(
    root: Path,
    n_train: int = 4,
    n_test: int = 2,
    test_labels: int = 1,
    n_val: int = 0,
    channel: str = "CT",
) -> Path:
    """A small valid nnU-Net v2 raw dataset: case_000.. in imagesTr, val_000.. in imagesVal, test_000.. in imagesTs.

    Only the first ``test_labels`` test cases get a label, so both labelled and unlabelled test cases occur.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Toy",
                "channel_names": {"0": channel},
                "labels": {"background": 0, "liver": 1, "tumour": 2},
                "numTraining": n_train,
                "file_ending": FE,
            }
        )
    )
    groups = (
        ("Tr", "case", n_train, n_train),
        ("Val", "val", n_val, n_val),
        ("Ts", "test", n_test, test_labels),
    )
    seed = 0
    for suffix, prefix, n, n_labelled in groups:
        for i in range(n):
            case = f"{prefix}_{i:03d}"
            write_nii(root / f"images{suffix}" / f"{case}_0000{FE}", make_image(seed))
            if i < n_labelled:
                write_nii(root / f"labels{suffix}" / f"{case}{FE}", make_label(seed))
            seed += 1
    return root


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "Dataset001_Toy")


def load_error(*args, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(*args, **kwargs)
    return info.value


def ids(cases: list[Case]) -> list[str]:
    return [c.case_id for c in cases]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


ALL_CASES = ["case_000", "case_001", "case_002", "case_003", "test_000", "test_001"]


# --------------------------------------------------------------------------- valid datasets


def test_valid_dataset_loads(ds: Path):
    spec = load_dataset(ds)
    assert isinstance(spec, DatasetSpec)
    assert spec.name == "Toy"
    assert spec.root == ds
    assert spec.file_ending == FE
    assert spec.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert spec.n_classes == 3
    assert spec.modality == "CT"
    train, val, test = spec.split("train"), spec.split("val"), spec.split("test")
    assert len(train) == 3 and len(val) == 1  # 20% of 4 subjects, at least one
    assert sorted(ids(train + val)) == ["case_000", "case_001", "case_002", "case_003"]
    assert ids(test) == ["test_000", "test_001"]
    assert spec.split("Ts") == test
    assert spec.domains == {"train": ["source"], "val": ["source"], "test": ["test"]}
    by_id = {c.case_id: c for c in spec.cases}
    assert by_id["case_000"].image == ds / "imagesTr" / f"case_000_0000{FE}"
    assert by_id["case_000"].label == ds / "labelsTr" / f"case_000{FE}"
    assert by_id["case_000"].subject == "case_000"
    assert by_id["test_000"].label == ds / "labelsTs" / f"test_000{FE}"
    assert by_id["test_001"].label is None  # test labels are optional
    with pytest.raises(ValueError):
        spec.split("holdout")


def test_modality_mr_and_read_dataset_json(tmp_path: Path):
    root = make_dataset(tmp_path / "mr", n_test=0, channel="T2")
    assert load_dataset(root, check=False).modality == "MR"
    assert read_dataset_json(root)["file_ending"] == FE


def test_hidden_files_ignored_and_singleton_4d_accepted(ds: Path):
    (ds / "imagesTr" / ".DS_Store").write_bytes(b"junk")
    (ds / "labelsTr" / "._case_000.nii.gz").write_bytes(b"junk")
    write_nii(ds / "imagesTr" / f"case_001_0000{FE}", make_image(1)[..., None])  # (x, y, z, 1) is 3D
    assert len(load_dataset(ds).cases) == 6


def test_validate_cases_direct(ds: Path):
    spec = load_dataset(ds, check=False)
    assert validate_cases(spec.cases, spec.labels) == []
    assert validate_cases(spec.cases, spec.labels, progress=True) == []


def test_val_holdout_is_deterministic_and_by_subject(ds: Path):
    val_of = {seed: ids(load_dataset(ds, seed=seed, check=False).split("val")) for seed in range(8)}
    assert ids(load_dataset(ds, seed=3, check=False).split("val")) == val_of[3]
    assert len({tuple(v) for v in val_of.values()}) > 1  # the seed matters
    assert len(load_dataset(ds, val_fraction=0.5, check=False).split("val")) == 2
    assert load_dataset(ds, val_fraction=0.0, check=False).split("val") == []

    # Two scans of one subject are held out together.
    split = ds / "splits.csv"
    subjects = {"case_000": "p0", "case_001": "p0", "case_002": "p1", "case_003": "p2"}
    rows = [{"case": c, "split": "train", "subject": s} for c, s in subjects.items()]
    write_csv(split, rows + [{"case": c, "split": "test", "subject": c} for c in ALL_CASES[4:]])
    for seed in range(6):
        spec = load_dataset(ds, splits_file=split, seed=seed, val_fraction=0.34, check=False)
        val_subjects = {c.subject for c in spec.split("val")}
        assert len(val_subjects) == 1
        assert sorted(ids(spec.split("val"))) == sorted(c for c, s in subjects.items() if s in val_subjects)
        assert not val_subjects & {c.subject for c in spec.split("train")}


def test_images_val_folder_disables_holdout(tmp_path: Path):
    root = make_dataset(tmp_path / "ds", n_val=2)
    spec = load_dataset(root)
    assert ids(spec.split("val")) == ["val_000", "val_001"]
    assert len(spec.split("train")) == 4


def test_split_csv(ds: Path):
    rows = [
        {"case": "case_000", "split": "Tr", "domain": "siteA", "subject": "p0"},
        {"case": "case_001", "split": "train", "domain": "siteA", "subject": "p0"},
        {"case": "case_002", "split": "VALIDATION", "domain": "siteA", "subject": "p1"},
        {
            "case": "case_003",
            "split": "ts",
            "domain": "siteB",
            "subject": "p2",
        },  # moved from imagesTr to test
        {"case": "test_000", "split": "test", "domain": "siteC", "subject": ""},
        {"case": "test_001", "split": "test", "domain": "", "subject": ""},
    ]
    spec = load_dataset(ds, splits_file=write_csv(ds / "splits.csv", rows))
    assert ids(spec.split("train")) == ["case_000", "case_001"]
    assert ids(spec.split("val")) == ["case_002"]
    assert ids(spec.split("test")) == ["case_003", "test_000", "test_001"]
    by_id = {c.case_id: c for c in spec.cases}
    assert by_id["case_003"].image == ds / "imagesTr" / f"case_003_0000{FE}"
    assert by_id["case_003"].label == ds / "labelsTr" / f"case_003{FE}"
    assert by_id["case_003"].domain == "siteB" and by_id["case_003"].subject == "p2"
    assert by_id["test_000"].subject == "test_000"
    assert by_id["test_001"].domain == "test"  # default when the domain cell is empty
    assert spec.domains == {"train": ["siteA"], "val": ["siteA"], "test": ["siteB", "siteC", "test"]}


def test_split_csv_unlisted_cases_warn_and_are_ignored(ds: Path):
    split = write_csv(
        ds / "splits.csv", [{"case": c, "split": "train"} for c in ["case_000", "case_001", "case_002"]]
    )
    with pytest.warns(UserWarning, match="not listed"):
        spec = load_dataset(ds, splits_file=split)
    assert sorted(ids(spec.cases)) == ["case_000", "case_001", "case_002"]
    assert {c.domain for c in spec.cases} == {"source"}


def test_split_json_list_and_mapping(ds: Path):
    entries = [{"case": c, "split": "train", "domain": "A", "subject": f"s{c[-1]}"} for c in ALL_CASES[:3]]
    entries += [{"case": "case_003", "split": "val", "domain": "A"}]
    entries += [{"case": c, "split": "test", "domain": "B"} for c in ALL_CASES[4:]]
    path = ds / "splits.json"
    path.write_text(json.dumps(entries))
    spec = load_dataset(ds, splits_file=path)
    assert ids(spec.split("val")) == ["case_003"]
    assert spec.domains == {"train": ["A"], "val": ["A"], "test": ["B"]}
    assert {c.subject for c in spec.split("train")} == {"s0", "s1", "s2"}

    mapping = {"case_000": {"split": "test", "domain": "X", "subject": "pX"}, "test_000": {"split": "train"}}
    mapping.update({c: {"split": "train"} for c in ["case_001", "case_002", "case_003"]})
    mapping["test_001"] = "ts"  # bare split string is accepted too
    path.write_text(json.dumps(mapping))
    spec = load_dataset(ds, splits_file=path, val_fraction=0.0)
    by_id = {c.case_id: c for c in spec.cases}
    assert (
        by_id["case_000"].split == "test"
        and by_id["case_000"].domain == "X"
        and by_id["case_000"].subject == "pX"
    )
    assert by_id["test_000"].split == "train" and by_id["test_000"].domain == "source"
    assert by_id["test_001"].split == "test" and by_id["test_001"].label is None


def test_reference_image_label_split_csv(ds: Path):
    ref_dir = ds / "ref"
    ref_dir.mkdir()
    rows = [
        {
            "image": f"../imagesTr/case_00{i}_0000{FE}",
            "label": f"../labelsTr/case_00{i}{FE}",
            "split": "train",
        }
        for i in range(3)
    ]
    rows.append(
        {
            "image": str(ds / "imagesTr" / f"case_003_0000{FE}"),
            "label": str(ds / "labelsTr" / f"case_003{FE}"),
            "split": "val",
        }
    )
    rows.append({"image": str(ds / "imagesTs" / f"test_001_0000{FE}"), "label": "", "split": "test"})
    spec = load_dataset(ds, splits_file=write_csv(ref_dir / "ref.csv", rows))
    assert ids(spec.split("train")) == ["case_000", "case_001", "case_002"]
    assert ids(spec.split("val")) == ["case_003"]
    test = spec.split("test")
    assert ids(test) == ["test_001"] and test[0].label is None
    assert spec.split("train")[0].image.resolve() == (ds / "imagesTr" / f"case_000_0000{FE}").resolve()
    assert spec.domains == {"train": ["source"], "val": ["source"], "test": ["test"]}


def test_train_subjects_few_shot(ds: Path):
    spec = load_dataset(ds, train_subjects=2, val_fraction=0.25, seed=1)
    full = load_dataset(ds, val_fraction=0.25, seed=1, check=False)
    assert len(spec.split("train")) == 2
    assert spec.split("val") == full.split("val")  # few-shot never changes val
    assert spec.split("test") == full.split("test")
    assert set(ids(spec.split("train"))) < set(ids(full.split("train")))
    assert ids(
        load_dataset(ds, train_subjects=2, val_fraction=0.25, seed=1, check=False).split("train")
    ) == ids(spec.split("train"))
    one = load_dataset(ds, train_subjects=1, val_fraction=0.25, seed=1, check=False)
    assert set(ids(one.split("train"))) <= set(ids(spec.split("train")))  # nested subsets
    for n in (0, 4):  # 3 train subjects remain after the hold-out
        err = load_error(ds, train_subjects=n, val_fraction=0.25, check=False)
        assert f"train_subjects={n}" in str(err)


# --------------------------------------------------------------------------- bad inputs


def _rm(path: Path) -> None:
    path.unlink()


BAD_CASES = {
    "missing dataset.json": (lambda d: _rm(d / "dataset.json"), "dataset.json", "missing"),
    "malformed dataset.json": (
        lambda d: (d / "dataset.json").write_text("{not json"),
        "dataset.json",
        "invalid JSON",
    ),
    "image without label": (
        lambda d: _rm(d / "labelsTr" / f"case_001{FE}"),
        f"case_001_0000{FE}",
        "without label",
    ),
    "label without image": (
        lambda d: _rm(d / "imagesTr" / f"case_001_0000{FE}"),
        f"labelsTr/case_001{FE}",
        "label without image",
    ),
    "undeclared label value": (
        lambda d: write_nii(d / "labelsTr" / f"case_002{FE}", make_label(2) * 3),
        f"case_002{FE}",
        "undeclared label values [3, 6]",
    ),
    "non-integer label": (
        lambda d: write_nii(d / "labelsTr" / f"case_002{FE}", make_label(2).astype(np.float32) * 0.5),
        f"case_002{FE}",
        "non-integer label values",
    ),
    "shape mismatch": (
        lambda d: write_nii(d / "labelsTr" / f"case_003{FE}", make_label(3, shape=(12, 10, 7))),
        f"case_003{FE}",
        "label shape (12, 10, 7) != image shape (12, 10, 8)",
    ),
    "affine mismatch": (
        lambda d: write_nii(
            d / "labelsTr" / f"case_003{FE}", make_label(3), make_affine(origin=(0.0, 0.0, 0.0))
        ),
        f"case_003{FE}",
        "label affine != image affine",
    ),
    "NaN voxels": (
        lambda d: write_nii(
            d / "imagesTr" / f"case_000_0000{FE}",
            np.where(make_label(0) == 1, np.nan, 1.0).astype(np.float32),
        ),
        f"case_000_0000{FE}",
        f"{int((make_label(0) == 1).sum())} NaN",
    ),
    "2D file": (
        lambda d: write_nii(d / "imagesTr" / f"case_000_0000{FE}", np.zeros((12, 10), np.float32)),
        f"case_000_0000{FE}",
        "2D",
    ),
    "4D file": (
        lambda d: write_nii(d / "imagesTr" / f"case_000_0000{FE}", np.zeros((*SHAPE, 2), np.float32)),
        f"case_000_0000{FE}",
        "not 3D: shape (12, 10, 8, 2) is 4D",
    ),
    "4D label": (
        lambda d: write_nii(d / "labelsTr" / f"case_000{FE}", np.zeros((*SHAPE, 3), np.uint8)),
        f"labelsTr/case_000{FE}",
        "not 3D",
    ),
    "unreadable file": (
        lambda d: (d / "imagesTr" / f"case_002_0000{FE}").write_bytes(b"\x00garbage\xff" * 20),
        f"case_002_0000{FE}",
        "unreadable",
    ),
    "second channel file in a one-channel dataset": (
        lambda d: write_nii(d / "imagesTr" / f"case_000_0001{FE}", make_image(0)),
        f"case_000_0001{FE}",
        "channel _0001, but dataset.json declares 1 channel(s)",
    ),
    "wrong ending": (
        lambda d: (d / "imagesTr" / "case_009_0000.nii").write_bytes(b""),
        "case_009_0000.nii",
        "file_ending",
    ),
    "second channel declared but its files absent": (
        lambda d: _edit_json(d, channel_names={"0": "T1", "1": "T2"}),
        f"case_000_0000{FE}",
        "lacks channel file(s) ",
    ),
    "channel_names keyed wrongly": (
        lambda d: _edit_json(d, channel_names={"0": "T1", "2": "T2"}),
        "dataset.json",
        "channel_names must be keyed '0', '1'",
    ),
    "region labels": (
        lambda d: _edit_json(d, labels={"background": 0, "whole": [1, 2], "core": 2}),
        "dataset.json",
        "region-based",
    ),
    "no background": (
        lambda d: _edit_json(d, labels={"liver": 1, "tumour": 2}),
        "dataset.json",
        '"background": 0',
    ),
    "missing key": (
        lambda d: _edit_json(d, file_ending=None),
        "dataset.json",
        "missing key(s) 'file_ending'",
    ),
}


def _edit_json(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_is_reported(ds: Path, name: str):
    mutate, file_part, description = BAD_CASES[name]
    mutate(ds)
    err = load_error(ds)
    assert isinstance(err, ValueError)
    message = str(err)
    assert message.splitlines()[0].startswith(f"invalid nnU-Net dataset {ds}")
    matching = [p for p in err.problems if file_part in p]
    assert matching, message
    assert any(description in p for p in matching), message
    assert all(": " in p for p in err.problems)


def test_split_file_problems(ds: Path):
    listed = [{"case": c, "split": "train"} for c in ALL_CASES]
    rows = listed + [
        {"case": "ghost_007", "split": "test"},
        {"case": "case_000", "split": "val"},
        {"case": "case_009", "split": "holdout"},
    ]
    split = write_csv(ds / "my_splits.csv", rows)
    err = load_error(ds, splits_file=split)
    text = str(err)
    assert any("my_splits.csv" in p and "'ghost_007'" in p and "no image" in p for p in err.problems), text
    assert any("my_splits.csv" in p and "duplicate case 'case_000'" in p for p in err.problems), text
    assert any("my_splits.csv" in p and "unknown split 'holdout'" in p for p in err.problems), text

    bad_header = write_csv(ds / "bad_header.csv", [{"id": "case_000", "fold": "train"}])
    err = load_error(ds, splits_file=bad_header)
    assert "bad_header.csv" in str(err) and "missing column(s) case, split" in str(err)

    js = ds / "bad.json"
    js.write_text('[{"case": ')
    assert "bad.json: invalid JSON" in str(load_error(ds, splits_file=js))

    # A case moved to train from imagesTs must have a label.
    moved = write_csv(ds / "moved.csv", [{"case": c, "split": "train"} for c in ALL_CASES])
    err = load_error(ds, splits_file=moved)
    assert any(f"test_001_0000{FE}" in p and "no label" in p for p in err.problems), str(err)


def test_reference_csv_missing_files(ds: Path):
    rows = [
        {"image": f"imagesTr/case_000_0000{FE}", "label": f"labelsTr/case_000{FE}", "split": "train"},
        {"image": f"imagesTr/nope_0000{FE}", "label": f"labelsTr/case_001{FE}", "split": "train"},
        {"image": f"imagesTr/case_002_0000{FE}", "label": "", "split": "val"},
    ]
    err = load_error(ds, splits_file=write_csv(ds / "ref.csv", rows))
    assert any("ref.csv" in p and f"nope_0000{FE}" in p and "does not exist" in p for p in err.problems), str(
        err
    )
    assert any("ref.csv" in p and "'case_002'" in p and "no label" in p for p in err.problems), str(err)


def test_several_problems_reported_together(ds: Path):
    _rm(ds / "labelsTr" / f"case_001{FE}")
    write_nii(ds / "labelsTr" / f"case_002{FE}", make_label(2) + 5)
    write_nii(ds / "imagesTr" / f"case_003_0000{FE}", np.full(SHAPE, np.inf, np.float32))
    (ds / "labelsTs" / f"orphan{FE}").write_bytes(b"")
    err = load_error(ds)
    assert len(err.problems) == 4, str(err)
    lines = str(err).splitlines()
    assert lines[0] == f"invalid nnU-Net dataset {ds}: 4 problems"
    assert lines[1:] == err.problems
    for part in (f"case_001_0000{FE}", f"case_002{FE}", f"case_003_0000{FE}", f"orphan{FE}"):
        assert part in str(err)
    assert "960 infinite" in str(err)


def test_dataset_error_pickles():
    err = DatasetError(["a: b", "c: d"], "/data/x")
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and str(again) == str(err)
    assert str(DatasetError("x: y")) == "invalid nnU-Net dataset: 1 problem\nx: y"


def test_no_warnings_for_valid_dataset(ds: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(ds)
