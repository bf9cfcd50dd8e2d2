"""maskgen recipe: miniature copies of each public layout (real file names and label values, tiny volumes)
converted by the paper's rules; then a conversion is trained for 2 steps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from maskgen.cli import main
from maskgen.recipes import convert
from maskgen.recipes.base import RecipeError, shuffled

RNG = np.random.default_rng(0)


def _vol(path: Path, shape=(8, 8, 8), channels: int | None = None, labels: tuple[int, ...] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        data = RNG.choice(np.asarray(labels, dtype=np.int16), size=shape).astype(np.int16)
    else:
        data = RNG.random(shape + ((channels,) if channels else ())).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "splits.csv").open() as f:
        return list(csv.DictReader(f))


def _check_disjoint(rows):
    where: dict[str, set[str]] = {}
    for r in rows:
        where.setdefault(r["subject"], set()).add(r["split"])
    assert all(len(v) == 1 for v in where.values())


def test_brats_splits_4d_files_into_contrasts_by_the_shuffled_subject_rule(tmp_path):
    src = tmp_path / "Task01_BrainTumour"
    ids = [f"BRATS_{i:03d}" for i in range(1, 11)]
    for i in ids:
        _vol(src / "imagesTr" / f"{i}.nii.gz", channels=4)
        _vol(src / "labelsTr" / f"{i}.nii.gz", labels=(0, 1, 2, 3))
    out = tmp_path / "brats"
    summary = convert("brats", src, out, progress=False)
    # 10 subjects: the paper's 340 / 48 / 96 of 484 in proportion -> 7 / 1 / 2
    order = shuffled(ids)
    assert summary["counts"] == {"train": {"T2w": 7, "T1w": 7, "T1gd": 7}, "val": {"FLAIR": 1}, "test": {"FLAIR": 2}}
    rows = _rows(out)
    _check_disjoint(rows)
    assert {r["subject"] for r in rows if r["split"] == "train"} == set(order[:7])
    assert any("train: 21 cases" in d for d in summary["differences"])
    sid = order[0]
    src_img = np.asarray(nib.load(src / "imagesTr" / f"{sid}.nii.gz").dataobj)
    t1gd = np.asarray(nib.load(out / "imagesTr" / f"{sid}_T1gd_0000.nii.gz").dataobj)
    np.testing.assert_array_equal(t1gd, src_img[..., 2])  # MSD order: FLAIR, T1w, T1gd, T2w
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3}
    preset = yaml.safe_load((out / "preset.yaml").read_text())
    assert preset["spacing"] == [1.0, 1.0, 1.0] and preset["patch_size"] == [128, 128, 128] and preset["flips"]
    few = convert("brats", src, tmp_path / "few", few_shot=5, progress=False)
    assert sum(few["counts"]["train"].values()) == 5 and few["counts"]["test"] == {"FLAIR": 2}


def test_topcow_trains_on_cta_tests_on_mra_and_remaps_label_15(tmp_path):
    src = tmp_path / "topcow"
    for pid in range(1, 9):
        for mod in ("ct", "mr"):
            _vol(src / "imagesTr" / f"topcow_{mod}_{pid:03d}_0000.nii.gz")
            _vol(src / "labelsTr" / f"topcow_{mod}_{pid:03d}.nii.gz", labels=(0, 1, 12, 15))
    _vol(src / "imagesTr" / "topcow_ct_099_0000.nii.gz")  # a CT patient without MR: dropped
    _vol(src / "labelsTr" / "topcow_ct_099.nii.gz", labels=(0, 1))
    out = tmp_path / "cow"
    summary = convert("topcow", src, out, progress=False)
    assert summary["counts"] == {"train": {"CTA": 5}, "val": {"MRA": 1}, "test": {"MRA": 2}}
    rows = _rows(out)
    _check_disjoint(rows)
    assert not any("099" in r["case"] for r in rows)
    lab = np.asarray(nib.load(out / "labelsTs" / f"{[r for r in rows if r['split'] == 'test'][0]['case']}.nii.gz").dataobj)
    assert set(np.unique(lab)) <= {0, 1, 12, 13} and 13 in np.unique(lab)
    assert json.loads((out / "dataset.json").read_text())["labels"]["3rd-A2"] == 13
    assert yaml.safe_load((out / "preset.yaml").read_text())["flips"] is False


def test_prostate_splits_by_site_and_binarises(tmp_path):
    src = tmp_path / "prostate"
    for site in ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK"):
        for k in range(2):
            _vol(src / site / f"Case{k:02d}.nii.gz")
            _vol(src / site / f"Case{k:02d}_segmentation.nii.gz", labels=(0, 255) if site == "HK" else (0, 1))
    out = tmp_path / "pro"
    summary = convert("prostate", src, out, progress=False)
    assert summary["counts"] == {"train": {"RUNMC": 2, "I2CVB": 2}, "val": {"UCL": 2, "HK": 2},
                                 "test": {"BIDMC": 2, "BMC": 2}}
    hk = np.asarray(nib.load(out / "labelsVal" / "HK_Case00.nii.gz").dataobj)
    assert set(np.unique(hk)) == {0, 1}
    (src / "HK" / "Case01_segmentation.nii.gz").unlink()
    with pytest.raises(RecipeError, match="Case01.nii.gz: no segmentation file"):
        convert("prostate", src, tmp_path / "bad", progress=False)


def test_amos_hvsmr_and_pandg_rules_and_what_they_need(tmp_path):
    src = tmp_path / "amos22"
    for cid in (1, 2, 3, 501, 502, 503, 504):
        d = ("imagesTr", "labelsTr") if cid % 2 else ("imagesVa", "labelsVa")
        _vol(src / d[0] / f"amos_{cid:04d}.nii.gz")
        _vol(src / d[1] / f"amos_{cid:04d}.nii.gz", labels=(0, 1, 15))
    s = convert("amos", src, tmp_path / "amos", progress=False)
    assert s["counts"] == {"train": {"CT": 3}, "val": {"MRI": 2}, "test": {"MRI": 2}}

    hv = tmp_path / "hvsmr"
    for n in (0, 1, 2, 3, 4, 9, 16):
        _vol(hv / "cropped" / f"pat{n}_cropped.nii.gz")
        _vol(hv / "cropped" / f"pat{n}_labels_cropped.nii.gz", labels=(0, 1, 8))
    meta = tmp_path / "meta.csv"
    meta.write_text("patient,severity\n" + "".join(f"{n},{'severe' if n in (3, 4, 9, 16) else 'mild'}\n"
                                                   for n in (0, 1, 2, 3, 4, 9, 16)))
    s = convert("hvsmr", hv, tmp_path / "hv", metadata=str(meta), progress=False)
    assert s["counts"]["train"] == {"mild": 3}  # patients 0, 1, 2 are on the paper's training list
    assert sum(s["counts"]["val"].values()) + sum(s["counts"]["test"].values()) == 4
    assert set(s["counts"]["test"]) == {"severe"}

    pd = tmp_path / "pandg"
    _vol(pd / "a.nii.gz")
    _vol(pd / "a_seg.nii.gz", labels=(0, 1))
    with pytest.raises(RecipeError, match="needs --splits: a CSV with columns image,label,split,domain"):
        convert("pandg", pd, tmp_path / "pd", progress=False)
    (tmp_path / "pd.csv").write_text("image,label,split,domain\na.nii.gz,a_seg.nii.gz,train,venous\n")
    s = convert("pandg", pd, tmp_path / "pd", splits=str(tmp_path / "pd.csv"), progress=False)
    assert s["counts"] == {"train": {"venous": 1}}


def test_wrong_source_and_existing_out_are_refused_then_a_conversion_trains(tmp_path):
    with pytest.raises(RecipeError, match="imagesTr"):
        convert("brats", tmp_path, tmp_path / "x", progress=False)
    src = tmp_path / "prostate"
    for site in ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK"):
        _vol(src / site / "Case00.nii.gz", shape=(16, 16, 16))
        _vol(src / site / "Case00_segmentation.nii.gz", shape=(16, 16, 16), labels=(0, 1))
    out = tmp_path / "pro"
    assert main(["recipe", "prostate", str(src), str(out)]) == 0
    assert main(["recipe", "prostate", str(src), str(out)]) == 2  # exists: refused
    assert main(["recipe", "prostate", str(src), str(out), "--overwrite"]) == 0
    preset = tmp_path / "small.yaml"
    preset.write_text(yaml.safe_dump({**yaml.safe_load((out / "preset.yaml").read_text()), "extractor": "mind",
                                      "steps": 2, "patch_size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0],
                                      "base_width": 2, "n_poolings": 2, "val_every": 2, "num_workers": 0}))
    run = tmp_path / "run"
    assert main(["train", str(out), "--splits", str(out / "splits.csv"), "--preset", str(preset), "--out", str(run),
                 "--batch-size", "2", "--device", "cpu"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["steps"] == 2 and cfg["base_width"] == 2 and cfg["batch_size"] == 2 and cfg["extractor"] == "mind"
    assert (run / "test" / "summary.json").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: 3\n")
    assert main(["train", str(out), "--preset", str(bad), "--out", str(tmp_path / "r2")]) == 2


def test_a_conversion_that_fails_half_way_can_be_redone_with_overwrite(tmp_path):
    src = tmp_path / "Task01_BrainTumour"
    for i in range(1, 5):
        _vol(src / "imagesTr" / f"BRATS_{i:03d}.nii.gz", channels=4 if i != 3 else None)  # BRATS_003 is 3-D
        _vol(src / "labelsTr" / f"BRATS_{i:03d}.nii.gz", labels=(0, 1))
    out = tmp_path / "brats"
    with pytest.raises(RecipeError, match="BRATS_003.nii.gz: expected a 4-D image"):
        convert("brats", src, out, progress=False)
    assert json.loads((out / "recipe.json").read_text())["complete"] is False
    _vol(src / "imagesTr" / "BRATS_003.nii.gz", channels=4)
    summary = convert("brats", src, out, overwrite=True, progress=False)
    assert summary["complete"] and json.loads((out / "recipe.json").read_text())["complete"] is True


def test_ct_images_of_mixed_datasets_are_windowed_when_converted_and_mri_is_copied(tmp_path):
    src = tmp_path / "amos22"
    for cid in (1, 2, 3, 501, 502):
        d = ("imagesTr", "labelsTr") if cid % 2 else ("imagesVa", "labelsVa")
        (src / d[0]).mkdir(parents=True, exist_ok=True)
        span = 3000.0 if cid != 3 else 500.0  # case 3: a CT that never reaches the window's ends
        data = np.linspace(-span, span, 512, dtype=np.float32).reshape(8, 8, 8)
        nib.save(nib.Nifti1Image(data if cid < 500 else data / 10, np.eye(4)), str(src / d[0] / f"amos_{cid:04d}.nii.gz"))
        _vol(src / d[1] / f"amos_{cid:04d}.nii.gz", labels=(0, 1, 15))
    out = tmp_path / "amos"
    s = convert("amos", src, out, progress=False)
    ct = np.asarray(nib.load(out / "imagesTr" / "amos_0001_0000.nii.gz").dataobj)
    assert ct.min() == -1024 and ct.max() == 1024 and (ct == 1024).sum() > 1
    assert np.asarray(nib.load(out / "imagesTr" / "amos_0003_0000.nii.gz").dataobj).max() == np.float32(500.0)
    mri = next((out / "imagesVal").iterdir()).name[:9]
    original = src / ("imagesTr" if int(mri[5:]) % 2 else "imagesVa") / f"{mri}.nii.gz"
    assert (out / "imagesVal" / f"{mri}_0000.nii.gz").read_bytes() == original.read_bytes()  # MRI untouched
    assert s["ct_window"] == {"window_hu": [-1024.0, 1024.0], "clipped": 3, "not_spanning": ["amos_0003"]}
    assert any("1 of 3 clipped CT images do not reach both ends" in d for d in s["differences"])
    assert "clipped to [-1024, 1024] HU" in (out / "preset.yaml").read_text()


def test_an_int16_ct_stays_int16_when_windowed(tmp_path):
    src = tmp_path / "amos22"
    for cid in (1, 2, 3, 501, 502):
        d = ("imagesTr", "labelsTr") if cid % 2 else ("imagesVa", "labelsVa")
        (src / d[0]).mkdir(parents=True, exist_ok=True)
        data = np.linspace(-3000, 3000, 512).astype(np.int16).reshape(8, 8, 8)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(src / d[0] / f"amos_{cid:04d}.nii.gz"))
        _vol(src / d[1] / f"amos_{cid:04d}.nii.gz", labels=(0, 1, 15))
    out = tmp_path / "amos"
    convert("amos", src, out, progress=False)
    img = nib.load(out / "imagesTr" / "amos_0001_0000.nii.gz")
    assert img.get_data_dtype() == np.int16
    ct = np.asarray(img.dataobj)
    assert ct.dtype == np.int16 and ct.min() == -1024 and ct.max() == 1024
