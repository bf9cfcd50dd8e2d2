"""Folder evaluation on tiny NIfTI files: per-case rows, domain summaries, overwrite/missing guards."""

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from maskgen.evaluation.evaluate import (
    case_row,
    evaluate_folder,
    format_table,
    read_splits,
    summarize,
    write_metrics,
)
from maskgen.io import OutputExistsError

SHAPE = (10, 10, 10)
SPACING = (2.0, 1.0, 1.0)


def _save(path, arr):
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), str(path))


def _ref():
    """Class 1: 4x4x4 cube (64 voxels); class 2: 2x2x2 cube (8 voxels)."""
    a = np.zeros(SHAPE, np.uint8)
    a[1:5, 1:5, 1:5] = 1
    a[6:8, 6:8, 6:8] = 2
    return a


def _pred(shift1, keep2):
    """Class 1 shifted by ``shift1`` voxels along axis 0: Dice (4 - shift1) / 4."""
    a = np.zeros(SHAPE, np.uint8)
    a[1 + shift1:5 + shift1, 1:5, 1:5] = 1
    if keep2:
        a[6:8, 6:8, 6:8] = 2
    return a


# case -> (shift of class 1, class 2 predicted?, domain)
CASES = {
    "a_001": (0, True, "siteA"),   # dice1 1.0, dice2 1.0, mean 1.0
    "a_002": (1, True, "siteA"),   # dice1 0.75, dice2 1.0, mean 0.875
    "b_001": (2, False, "siteB"),  # dice1 0.5, dice2 0.0, mean 0.25
    "b_002": (1, False, "siteB"),  # dice1 0.75, dice2 0.0, mean 0.375
}


@pytest.fixture
def dataset(tmp_path):
    pred_dir, labels_dir = tmp_path / "preds", tmp_path / "ds" / "labelsTs"
    pred_dir.mkdir()
    labels_dir.mkdir(parents=True)
    for case, (shift, keep2, _) in CASES.items():
        _save(labels_dir / f"{case}.nii.gz", _ref())
        _save(pred_dir / f"{case}.nii.gz", _pred(shift, keep2))
    splits = tmp_path / "splits.csv"
    with splits.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "split", "domain", "subject"])
        for case, (_, _, dom) in CASES.items():
            w.writerow([case, "test", dom, case[:1]])
    return pred_dir, labels_dir, splits


def _se(vals):
    return float(np.std(vals, ddof=1) / math.sqrt(len(vals)))


def test_rows_and_summary(dataset, tmp_path):
    pred_dir, labels_dir, splits = dataset
    names = {"big": 1, "small": 2}
    summary = evaluate_folder(pred_dir, labels_dir, splits_file=splits, label_names=names, progress=False)

    with (pred_dir / "metrics_per_case.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == sorted(CASES)
    assert list(rows[0]) == ["case", "domain", "dice_big", "dice_small", "hd95_big", "hd95_small", "mean_dice"]
    by_case = {r["case"]: r for r in rows}
    for case, (shift, keep2, dom) in CASES.items():
        r = by_case[case]
        assert r["domain"] == dom
        assert float(r["dice_big"]) == pytest.approx((4 - shift) / 4)
        assert float(r["dice_small"]) == (1.0 if keep2 else 0.0)
        # a cube shifted by k voxels along axis 0 (2 mm voxels): HD95 = 2k mm
        assert float(r["hd95_big"]) == pytest.approx(2.0 * shift)
        assert float(r["hd95_small"]) == (0.0 if keep2 else math.inf)
        assert float(r["mean_dice"]) == pytest.approx(((4 - shift) / 4 + (1.0 if keep2 else 0.0)) / 2)

    on_disk = json.loads((pred_dir / "summary.json").read_text())
    assert on_disk == summary
    assert summary["n_cases"] == 4 and summary["label_names"] == names
    assert set(summary["domains"]) == {"siteA", "siteB"}
    a, b = summary["domains"]["siteA"], summary["domains"]["siteB"]
    assert a["n"] == 2 and b["n"] == 2
    assert a["mean_dice"]["mean"] == pytest.approx(0.9375)
    assert a["mean_dice"]["se"] == pytest.approx(_se([1.0, 0.875]))
    assert b["mean_dice"]["mean"] == pytest.approx(0.3125)
    assert b["mean_dice"]["se"] == pytest.approx(0.0625)  # std(ddof=1)=0.0884, /sqrt(2)
    assert b["per_class"]["big"]["dice"] == pytest.approx({"mean": 0.625, "se": 0.125, "n": 2})
    # class "small" missed in siteB: both HD95 are inf -> skipped and counted
    assert b["per_class"]["small"]["hd95"] == {"mean": None, "se": None, "n": 0, "n_nonfinite": 2}
    assert b["per_class"]["big"]["hd95"]["mean"] == pytest.approx(3.0)
    assert b["per_class"]["big"]["hd95"]["n_nonfinite"] == 0
    overall = summary["overall"]
    assert overall["n"] == 4
    assert overall["mean_dice"]["mean"] == pytest.approx(np.mean([1.0, 0.875, 0.25, 0.375]))
    assert overall["mean_dice"]["se"] == pytest.approx(_se([1.0, 0.875, 0.25, 0.375]))
    assert overall["per_class"]["small"]["hd95"]["n_nonfinite"] == 2

    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["domain", "n"] and "big" in lines[0] and "small" in lines[0]
    assert any(line.startswith("siteA") and "0.938 ± 0.062" in line for line in lines)
    assert lines[-1].startswith("overall")


def test_labels_from_dataset_json_and_default_domain(dataset):
    pred_dir, labels_dir, _ = dataset
    (labels_dir.parent / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "lesion": 2}}))
    summary = evaluate_folder(pred_dir, labels_dir, out_dir=pred_dir / "eval", compute_hd95=False, progress=False)
    assert summary["label_names"] == {"liver": 1, "lesion": 2}
    assert list(summary["domains"]) == ["all"]
    assert "hd95" not in summary["overall"]["per_class"]["liver"]
    header = (pred_dir / "eval" / "metrics_per_case.csv").read_text().splitlines()[0]
    assert header == "case,domain,dice_liver,dice_lesion,mean_dice"


def test_labels_from_union_when_no_names(dataset):
    pred_dir, labels_dir, _ = dataset
    summary = evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False)
    assert summary["label_names"] == {"label_1": 1, "label_2": 2}


def test_refuses_to_overwrite(dataset):
    pred_dir, labels_dir, _ = dataset
    evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False)
    before = (pred_dir / "summary.json").read_text()
    with pytest.raises(OutputExistsError, match="metrics_per_case.csv"):
        evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False)
    assert (pred_dir / "summary.json").read_text() == before
    evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False, overwrite=True)


def test_prediction_without_label_is_an_error(dataset):
    pred_dir, labels_dir, _ = dataset
    _save(pred_dir / "c_999.nii.gz", _ref())
    with pytest.raises(ValueError, match="c_999.nii.gz"):
        evaluate_folder(pred_dir, labels_dir, progress=False)
    assert not (pred_dir / "summary.json").exists()


def test_label_without_prediction_is_an_error_unless_allowed_then_recorded(dataset):
    pred_dir, labels_dir, _ = dataset
    _save(labels_dir / "z_001.nii.gz", _ref())
    with pytest.raises(ValueError, match=r"z_001\.nii\.gz.*--allow-missing"):
        evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False)
    assert not (pred_dir / "summary.json").exists()
    with pytest.warns(UserWarning, match="z_001.nii.gz"):
        summary = evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False, allow_missing=True)
    assert summary["n_cases"] == 4
    assert summary["unscored_cases"] == ["z_001"]
    assert json.loads((pred_dir / "summary.json").read_text())["unscored_cases"] == ["z_001"]


def test_shape_mismatch_names_case(dataset):
    pred_dir, labels_dir, _ = dataset
    _save(pred_dir / "a_001.nii.gz", np.zeros((10, 10, 9), np.uint8))
    with pytest.raises(ValueError, match=r"a_001\.nii\.gz.*\(10, 10, 9\).*\(10, 10, 10\)"):
        evaluate_folder(pred_dir, labels_dir, progress=False)


def test_read_splits_json_forms(tmp_path):
    p1 = tmp_path / "s1.json"
    p1.write_text(json.dumps([{"case": "x.nii.gz", "split": "test", "domain": "A"}]))
    assert read_splits(p1) == {"x": "A"}
    p2 = tmp_path / "s2.json"
    p2.write_text(json.dumps({"x": {"split": "test", "domain": "B"}}))
    assert read_splits(p2) == {"x": "B"}


def test_summarize_nan_handling():
    rows = [
        {"case": "1", "domain": "d", "dice_a": math.nan, "mean_dice": math.nan},
        {"case": "2", "domain": "d", "dice_a": 0.5, "mean_dice": 0.5},
    ]
    s = summarize(rows, {"a": 1})
    assert s["overall"]["per_class"]["a"]["dice"] == {"mean": 0.5, "se": None, "n": 1}
    json.dumps(s, allow_nan=False)  # valid JSON: no NaN anywhere


def test_affine_mismatch_warns(dataset):
    pred_dir, labels_dir, _ = dataset
    nib.save(nib.Nifti1Image(_pred(0, True), np.diag([1.0, 1.0, 1.0, 1.0])), str(pred_dir / "a_001.nii.gz"))
    with pytest.warns(UserWarning, match="a_001.nii.gz.*affine"):
        evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False)


def test_dataset_json_v1_labels(dataset):
    pred_dir, labels_dir, _ = dataset
    (labels_dir.parent / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b"}}))
    summary = evaluate_folder(pred_dir, labels_dir, compute_hd95=False, progress=False)
    assert summary["label_names"] == {"a": 1, "b": 2}


def test_case_row_and_write_metrics_match_folder_evaluation(dataset, tmp_path):
    """In-memory scoring (used by the test command) writes the same files as evaluate_folder."""
    pred_dir, labels_dir, splits = dataset
    names = {"background": 0, "big": 1, "small": 2}
    rows = [case_row(c, d, _pred(s, k), _ref(), SPACING, names) for c, (s, k, d) in sorted(CASES.items())]
    summary = summarize(rows, names)
    out = tmp_path / "mem"
    write_metrics(rows, summary, names, out)
    folder = evaluate_folder(pred_dir, labels_dir, splits_file=splits, label_names=names, progress=False)
    assert summary == {k: v for k, v in folder.items() if k not in ("metric_per_case", "mean", "foreground_mean")}
    assert (out / "metrics_per_case.csv").read_text() == (pred_dir / "metrics_per_case.csv").read_text()
    with pytest.raises(OutputExistsError, match="summary.json|metrics_per_case.csv"):
        write_metrics(rows, summary, names, out)


def test_summary_also_carries_nnunet_keys(dataset):
    """``metric_per_case``, ``mean`` and ``foreground_mean`` as nnU-Net v2 writes them (string label keys)."""
    pred_dir, labels_dir, splits = dataset
    names = {"background": 0, "big": 1, "small": 2}
    evaluate_folder(pred_dir, labels_dir, splits_file=splits, label_names=names, progress=False)
    s = json.loads((pred_dir / "summary.json").read_text())
    cases = sorted(s["metric_per_case"], key=lambda c: c["prediction_file"])
    assert [Path(c["prediction_file"]).name for c in cases] == [f"{c}.nii.gz" for c in sorted(CASES)]
    a2 = cases[1]["metrics"]  # a_002: class 1 shifted by one voxel, class 2 exact
    assert a2["1"] == {"Dice": 0.75, "IoU": 0.6, "FN": 16, "FP": 16, "TN": 1000 - 64 - 16, "TP": 48,
                       "n_pred": 64, "n_ref": 64}
    assert a2["2"]["Dice"] == 1.0 and a2["2"]["TP"] == 8
    assert s["mean"]["1"]["Dice"] == pytest.approx(np.mean([1.0, 0.75, 0.5, 0.75]))
    assert s["mean"]["2"]["Dice"] == pytest.approx(0.5)
    assert s["foreground_mean"]["Dice"] == pytest.approx((s["mean"]["1"]["Dice"] + 0.5) / 2)
    assert s["mean"]["2"]["IoU"] == pytest.approx(0.5)


def test_surface_dice_option(dataset):
    pred_dir, labels_dir, splits = dataset
    names = {"background": 0, "big": 1, "small": 2}
    evaluate_folder(pred_dir, labels_dir, label_names=names, progress=False, compute_hd95=False, surface_tolerance=2.0)
    s = json.loads((pred_dir / "summary.json").read_text())
    by_case = {Path(c["prediction_file"]).name: c["metrics"] for c in s["metric_per_case"]}
    assert by_case["a_001.nii.gz"]["1"]["NSD@2mm"] == 1.0  # exact
    assert by_case["a_002.nii.gz"]["1"]["NSD@2mm"] == 1.0  # one voxel (2 mm along axis 0) off: within tolerance
    assert by_case["b_001.nii.gz"]["1"]["NSD@2mm"] < 1.0  # two voxels off: partly outside
    assert by_case["b_001.nii.gz"]["2"]["NSD@2mm"] == 0.0  # missed entirely
    assert s["mean"]["2"]["NSD@2mm"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tolerance must be positive"):
        evaluate_folder(pred_dir, labels_dir, label_names=names, progress=False, overwrite=True, surface_tolerance=0)
