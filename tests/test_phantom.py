"""The phantom benchmark: layout, geometry, determinism and the domain gap it is meant to create."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from maskgen.data.phantom import DOMAINS, LABELS, generate_phantom, render_subject
from maskgen.io import OutputExistsError

SHAPE = (32, 34, 30)
SPACING = (1.5, 1.6, 2.0)
KW = dict(shape=SHAPE, spacing=SPACING, progress=False)
FOLDERS = {
    "train": ("imagesTr", "labelsTr"),
    "val": ("imagesVal", "labelsVal"),
    "test": ("imagesTs", "labelsTs"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_phantom(
        tmp_path_factory.mktemp("phantom") / "ds", n_train=2, n_val=1, n_test=2, seed=3, **KW
    )


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "splits.csv", newline="") as f:
        return list(csv.DictReader(f))


def _load(root: Path, row: dict[str, str]) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    img_dir, lab_dir = FOLDERS[row["split"]]
    case = row["case"]
    return nib.load(root / img_dir / f"{case}_0000.nii.gz"), nib.load(root / lab_dir / f"{case}.nii.gz")


def _arrays(root: Path, case: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    img, lab = _load(root, {"case": case, "split": split})
    return np.asarray(img.dataobj), np.asarray(lab.dataobj)


def test_dataset_json(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["name"] == "Phantom"
    assert meta["channel_names"] == {"0": "MR"}
    assert meta["labels"] == {"background": 0, "organ": 1, "ellipsoid": 2, "nodule": 3, "vessel": 4}
    assert meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 2  # 2 train subjects x 1 train domain
    assert len(list((dataset / "imagesTr").glob("*.nii.gz"))) == meta["numTraining"]
    ph = meta["phantom"]
    assert ph["seed"] == 3 and ph["shape"] == list(SHAPE) and ph["spacing"] == list(SPACING)
    assert ph["train_domains"] == ["T1w"] and ph["test_domains"] == list(DOMAINS)
    assert ph["subjects"] == {"train": ["s000", "s001"], "val": ["s002"], "test": ["s003", "s004"]}


def test_splits_csv_matches_folders(dataset):
    rows = _rows(dataset)
    assert list(rows[0]) == ["case", "split", "domain", "subject"]
    assert len(rows) == 2 + 1 + 2 * len(DOMAINS)
    for split, (img_dir, lab_dir) in FOLDERS.items():
        cases = {r["case"] for r in rows if r["split"] == split}
        assert {p.name.removesuffix("_0000.nii.gz") for p in (dataset / img_dir).iterdir()} == cases
        assert {p.name.removesuffix(".nii.gz") for p in (dataset / lab_dir).iterdir()} == cases
    for r in rows:
        assert r["case"] == f"phantom_{r['subject']}_{r['domain']}"
    subjects = {s: {r["subject"] for r in rows if r["split"] == s} for s in FOLDERS}
    assert not (
        subjects["train"] & subjects["val"]
        or subjects["train"] & subjects["test"]
        or subjects["val"] & subjects["test"]
    )
    assert {r["domain"] for r in rows if r["split"] in ("train", "val")} == {"T1w"}
    for s in subjects["test"]:  # every test subject in every domain, seen and unseen
        assert {r["domain"] for r in rows if r["subject"] == s} == set(DOMAINS)


def test_geometry_and_dtypes(dataset):
    for row in _rows(dataset):
        img, lab = _load(dataset, row)
        assert img.shape == lab.shape == SHAPE
        assert np.allclose(img.affine, lab.affine)
        assert not np.allclose(img.affine, np.eye(4))
        assert np.allclose(img.header.get_zooms(), SPACING)
        assert np.allclose(np.diag(img.affine)[:3], SPACING)
        assert np.abs(img.affine[:3, 3]).min() > 1.0  # non-zero origin
        centre = img.affine @ np.array([*(np.array(SHAPE) - 1) / 2, 1.0])
        assert np.allclose(centre[:3], 0.0, atol=1e-4)  # volume centred on the world origin
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8


def test_every_subject_has_all_labels_and_subjects_differ(dataset):
    labels = {}
    for row in _rows(dataset):
        _, lab = _arrays(dataset, row["case"], row["split"])
        assert set(np.unique(lab)) == set(LABELS.values()), row["case"]
        for k in range(1, 5):
            assert (lab == k).sum() >= 4
        labels.setdefault(row["subject"], lab)
    maps = list(labels.values())
    assert len(maps) == 5
    for i in range(len(maps)):
        for j in range(i + 1, len(maps)):
            assert not np.array_equal(maps[i], maps[j])


def test_domains_share_anatomy_but_differ_in_appearance(dataset):
    subject = "s003"
    arrays = {d: _arrays(dataset, f"phantom_{subject}_{d}", "test") for d in DOMAINS}
    label = arrays["T1w"][1]
    images = {d: a[0] for d, a in arrays.items()}
    for d in DOMAINS:
        assert np.array_equal(arrays[d][1], label)
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1 :]:
            corr = np.corrcoef(images[a].ravel(), images[b].ravel())[0, 1]
            assert corr < 0.995, (a, b, corr)
    for d in DOMAINS[:4]:  # MR: non-negative magnitudes
        assert images[d].min() >= 0.0

    def contrast(img: np.ndarray, k: int) -> float:
        inside = label == k
        ring = binary_dilation(inside, iterations=2) & (label == 0)
        return float(img[inside].mean() - img[ring].mean())

    t1 = np.array([contrast(images["T1w"], k) for k in range(1, 5)])
    t2 = np.array([contrast(images["T2w"], k) for k in range(1, 5)])
    assert np.any(np.sign(t1) != np.sign(t2)), (t1, t2)  # tissue-order flip between contrasts
    assert t1[0] > 0 > t2[0]  # the organ in particular: short T1 and T2


def test_ct_is_in_hounsfield_units(dataset):
    ct, label = _arrays(dataset, "phantom_s004_CT", "test")
    assert -1200 < ct.min() < -900  # air, with noise
    assert ct.max() < 2000
    corner = ct[:3, :3, :3]
    assert abs(float(np.median(corner)) + 1000) < 50
    assert ct[label == 3].mean() > ct[label == 1].mean() > -50  # calcified nodule above soft tissue


def test_determinism_and_subject_independence(dataset, tmp_path):
    # Same seed -> identical arrays; subject k does not depend on how many subjects are generated.
    again = generate_phantom(tmp_path / "again", n_train=1, n_val=0, n_test=0, seed=3, **KW)
    a_img, a_lab = _arrays(again, "phantom_s000_T1w", "train")
    b_img, b_lab = _arrays(dataset, "phantom_s000_T1w", "train")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert _rows(again) == [
        {"case": "phantom_s000_T1w", "split": "train", "domain": "T1w", "subject": "s000"}
    ]

    other = generate_phantom(tmp_path / "other", n_train=1, n_val=0, n_test=0, seed=4, **KW)
    c_img, c_lab = _arrays(other, "phantom_s000_T1w", "train")
    assert not np.array_equal(c_lab, b_lab) and not np.array_equal(c_img, b_img)


def test_render_subject_api():
    lab, imgs = render_subject(np.random.default_rng(7), (32, 32, 32), (1.5, 1.5, 1.5), ("T1w", "CT"))
    assert lab.dtype == np.uint8 and lab.shape == (32, 32, 32)
    assert set(imgs) == {"T1w", "CT"}
    assert all(v.dtype == np.float32 and v.shape == lab.shape for v in imgs.values())
    # A domain's image does not depend on which other domains are rendered with it.
    lab2, imgs2 = render_subject(np.random.default_rng(7), (32, 32, 32), (1.5, 1.5, 1.5), ("T1w",))
    assert np.array_equal(lab, lab2) and np.array_equal(imgs["T1w"], imgs2["T1w"])
    with pytest.raises(ValueError, match="unknown"):
        render_subject(np.random.default_rng(0), (32, 32, 32), (1.5, 1.5, 1.5), ("T3w",))
    with pytest.raises(ValueError, match="shape"):
        render_subject(np.random.default_rng(0), (8, 8, 8), (1.5, 1.5, 1.5), ("T1w",))


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="phantom dataset folder"):
        generate_phantom(out, n_train=1, n_val=0, n_test=0, **KW)
    assert not (out / "dataset.json").exists()

    generate_phantom(out, n_train=1, n_val=0, n_test=1, test_domains=("T1w", "T2w"), overwrite=True, **KW)
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(list((out / "imagesTs").iterdir())) == 2
    # Overwriting with fewer cases removes the stale phantom volumes so folders and splits.csv agree.
    generate_phantom(out, n_train=1, n_val=0, n_test=1, test_domains=("CT",), overwrite=True, **KW)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["phantom_s001_CT_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["phantom_s001_CT.nii.gz"]
    assert [r["case"] for r in _rows(out)] == ["phantom_s000_T1w", "phantom_s001_CT"]


def test_split_counts(tmp_path):
    with pytest.raises(ValueError, match="n_subjects"):
        generate_phantom(tmp_path / "a", n_subjects=3, n_train=1, n_val=1, n_test=2, **KW)
    with pytest.raises(ValueError, match="train subject"):
        generate_phantom(tmp_path / "b", n_train=0, n_val=1, n_test=1, **KW)
    with pytest.raises(ValueError, match="domain"):
        generate_phantom(tmp_path / "c", n_train=1, train_domains=("MRI",), **KW)


def test_texture_variant_keeps_the_anatomy_but_cuts_the_edges():
    from maskgen.data import phantom as P

    spacing = np.array([2.0, 2.0, 2.0])
    edges = P._make_anatomy(np.random.default_rng([7, 0]), (48, 48, 48), spacing, "edges")
    texture = P._make_anatomy(np.random.default_rng([7, 0]), (48, 48, 48), spacing, "texture")
    np.testing.assert_array_equal(edges.label, texture.label)  # same subject, other appearance
    for domain in ("T1w", "T2w", "CT"):
        contrast = {}
        for name, anat in (("edges", edges), ("texture", texture)):
            img = P._render(anat, domain, np.random.default_rng(3), spacing)
            par = img[anat.tissue == P._PARENCHYMA]
            contrast[name] = [abs(img[anat.label == k].mean() - par.mean()) / par.std() for k in range(1, 5)]
        # every visible structure's mean contrast to the parenchyma is smaller, the summed contrast far smaller
        assert all(t < e for t, e in zip(contrast["texture"], contrast["edges"]) if e > 1), (domain, contrast)
        assert sum(contrast["texture"]) < 0.5 * sum(contrast["edges"]), (domain, contrast)
    assert texture.noise_scale == 1.5
    with pytest.raises(ValueError, match="unknown phantom variant 'stripes'"):
        render_subject(np.random.default_rng(0), (48, 48, 48), (2.0, 2.0, 2.0), ("T1w",), "stripes")


def test_texture_variant_dataset_records_its_variant(tmp_path):
    out = generate_phantom(tmp_path / "tex", n_train=1, n_val=0, n_test=1, shape=(40, 40, 40),
                           spacing=(2.5, 2.5, 2.5), test_domains=("T1w",), variant="texture", progress=False)
    assert json.loads((out / "dataset.json").read_text())["phantom"]["variant"] == "texture"
    with pytest.raises(ValueError, match="unknown phantom variant"):
        generate_phantom(tmp_path / "bad", n_train=1, n_val=0, n_test=0, variant="stripes", progress=False)
    assert not (tmp_path / "bad").exists()
