"""nnU-Net's ignore label: no output channel, no part in the loss, validation or evaluation, never predicted."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_dataset
from monai.losses import DiceCELoss

from maskgen.cli import main
from maskgen.data.nnunet import DatasetError, load_dataset
from maskgen.data.preprocess import load_case
from maskgen.evaluation.evaluate import evaluate_folder
from maskgen.evaluation.testing import train_and_test
from maskgen.runtime.config import TrainConfig
from maskgen.training.losses import DiceCEIgnore


def _with_ignore(root, value=3):
    """Mark a slab of every label map as unannotated (value ``value``) and declare it as ``ignore``."""
    for lab_dir in root.glob("labels*"):
        for p in lab_dir.iterdir():
            img = nib.load(p)
            lab = np.asarray(img.dataobj).astype(np.uint8)
            lab[:, :, :3] = value
            nib.save(nib.Nifti1Image(lab, img.affine), p)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["ignore"] = value
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_loss_equals_monai_without_ignored_voxels_and_ignores_them_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6))
    ours = DiceCEIgnore(ignore_index=3)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    assert float(ours(logits, target)) == pytest.approx(float(ref(logits, target)), rel=1e-6)

    target[:, :, :2] = 3
    loss = ours(logits, target)
    loss.backward()
    assert torch.all(logits.grad[:, :, :2] == 0)  # ignored voxels get no gradient
    other = logits.detach().clone()
    other[:, :, :2] = torch.randn_like(other[:, :, :2]) * 10  # whatever is predicted there
    assert float(ours(other, target)) == pytest.approx(float(loss), rel=1e-6)
    assert float(ours(logits, torch.full_like(target, 3))) == 0.0  # a fully unannotated patch


def test_ignore_must_be_the_highest_label(tmp_path):
    ds = write_dataset(tmp_path / "ds", n_train=2, n_val=0, n_test=0)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "ignore": 1, "dark": 2}
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="ignore label must have the highest value"):
        load_dataset(ds, check=False)


def test_ignore_label_trains_is_never_predicted_and_is_not_scored(tmp_path):
    ds = _with_ignore(write_dataset(tmp_path / "ds"))
    spec = load_dataset(ds)
    assert spec.class_values == [0, 1, 2] and spec.n_classes == 3 and spec.ignore_value == 3
    case = spec.split("train")[0]
    lab = load_case(case.image, case.label, None, "MR", spec.class_values, spec.ignore_value)["label"].as_tensor()
    assert sorted(torch.unique(lab).tolist()) == [0, 1, 2, 3]  # index 3 = one past the last class

    run = tmp_path / "run"
    cfg = TrainConfig(dataset=str(ds), out=str(run), method="erm", steps=2, batch_size=2, patch_size=[16, 16, 16],
                      val_every=2, base_width=2, n_poolings=2, convs_per_level=1, num_workers=0, device="cpu")
    res = train_and_test(cfg, progress=False)
    assert set(res["test_summary"]["label_names"]) == {"bright", "dark"}
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(run), "--input", str(ds / "imagesTs"), "--output", str(out)]) == 0
    for mask in out.iterdir():
        assert 3 not in np.unique(np.asarray(nib.load(mask).dataobj))

    # evaluation: what is predicted on ignored voxels changes nothing
    ref_path = sorted((ds / "labelsTs").iterdir())[0]
    ref_img = nib.load(ref_path)
    ref = np.asarray(ref_img.dataobj)
    scores = []
    for fill in (0, 1, 2):
        pred_dir = tmp_path / f"p{fill}"
        pred_dir.mkdir()
        pred = np.where(ref == 3, fill, ref).astype(np.uint8)
        nib.save(nib.Nifti1Image(pred, ref_img.affine), pred_dir / ref_path.name)
        summary = evaluate_folder(pred_dir, ds / "labelsTs", compute_hd95=False, progress=False, allow_missing=True)
        assert set(summary["label_names"]) == {"bright", "dark"}
        scores.append(summary["overall"]["mean_dice"]["mean"])
    assert scores[0] == scores[1] == scores[2] == pytest.approx(1.0)
