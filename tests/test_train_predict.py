"""End to end on a non-phantom dataset: train, resume, predict in the input's geometry, evaluate."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from maskgen.cli import main
from maskgen.evaluation.testing import train_and_test
from maskgen.io import OutputExistsError
from maskgen.runtime.checkpoint import load_checkpoint
from maskgen.runtime.config import TrainConfig


def _cfg(dataset, out, method="maskgen", steps=4, **kw):
    base = dict(dataset=str(dataset), out=str(out), method=method, steps=steps, batch_size=2, patch_size=[16, 16, 16],
                val_every=2, base_width=2, n_poolings=2, convs_per_level=1, num_workers=0, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _log_steps(run):
    with (run / "log.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_train_writes_run_folder_then_resume_and_refuse_overwrite(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    res = train_and_test(_cfg(tiny_dataset, run), progress=False)
    for name in ("config.yaml", "log.csv", "checkpoint_best.pt", "checkpoint_latest.pt", "training_curves.png",
                 "train.log", "test/metrics_per_case.csv", "test/summary.json"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == "maskgen" and cfg["n_classes"] == 3 and cfg["feature_channels"] == 12
    assert cfg["spacing"] == pytest.approx([1.25, 0.9, 2.2])  # median training spacing, RAS order
    assert cfg["hparams"] == {"mask_rate": 0.5, "mask_mode": "rescale", "mask_unit": "channel", "image_norm": "none"}
    assert _log_steps(run) == [1, 2, 3, 4]
    assert 0.0 <= res["best_val_dice"] <= 1.0
    assert set(res["test_summary"]["domains"]) == {"test"}

    with pytest.raises(OutputExistsError, match="--resume"):
        train_and_test(_cfg(tiny_dataset, run), progress=False)

    before = load_checkpoint(run / "checkpoint_latest.pt")
    assert before["step"] == 4
    train_and_test(_cfg(tiny_dataset, run, steps=6), resume=True, test=False, progress=False)
    after = load_checkpoint(run / "checkpoint_latest.pt")
    assert after["step"] == 6
    assert _log_steps(run) == [1, 2, 3, 4, 5, 6]
    assert not torch.equal(before["model"]["network.head.weight"], after["model"]["network.head.weight"])


def test_overwrite_discards_old_checkpoints_before_training(tiny_dataset, tmp_path):
    from maskgen.training.trainer import Trainer

    run = tmp_path / "run"
    train_and_test(_cfg(tiny_dataset, run, method="erm", steps=2), progress=False)
    assert (run / "checkpoint_best.pt").is_file() and (run / "test").is_dir()
    trainer = Trainer(_cfg(tiny_dataset, run, method="erm", steps=50, val_every=25), overwrite=True, progress=False)
    trainer.setup()  # everything a new run does before its first step
    # an interruption now must not leave the old run's best checkpoint for predict to pick up
    assert not (run / "checkpoint_best.pt").exists() and not (run / "checkpoint_latest.pt").exists()
    assert not (run / "test").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 50


def test_predict_writes_masks_in_input_geometry_and_evaluate_scores_them(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train_and_test(_cfg(tiny_dataset, run, method="erm", steps=2, spacing=[2.0, 2.0, 2.0]), test=False,
                   progress=False)
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(run), "--input", str(tiny_dataset / "imagesTs"), "--output", str(out),
                 "--save-probabilities"]) == 0
    for src in sorted((tiny_dataset / "imagesTs").iterdir()):
        case = src.name.replace("_0000.nii.gz", "")
        inp, mask = nib.load(src), nib.load(out / f"{case}.nii.gz")
        assert mask.shape == inp.shape
        np.testing.assert_allclose(mask.affine, inp.affine, atol=1e-5)
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(inp.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
        probs = nib.load(out / "probabilities" / f"{case}.nii.gz")
        assert probs.shape == (*inp.shape, 3)
        np.testing.assert_allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-3)
    # refuses to overwrite
    assert main(["predict", "--run", str(run), "--input", str(tiny_dataset / "imagesTs"), "--output", str(out)]) == 2
    assert main(["evaluate", "--pred", str(out), "--labels", str(tiny_dataset / "labelsTs"), "--out",
                 str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "metrics_per_case.csv").is_file()


def test_cli_reports_bad_dataset_without_traceback(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    code = main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--steps", "1"])
    assert code == 2
    assert "dataset.json" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint_latest.pt").exists()


def test_geometry_round_trip_recovers_the_label_map(tiny_dataset, tmp_path, monkeypatch):
    """With a 'network' that thresholds intensities, predict must land the mask back on the label."""
    import maskgen.inference.predict as predict_mod

    run = tmp_path / "run"
    train_and_test(_cfg(tiny_dataset, run, method="erm", steps=1, spacing=[1.6, 1.6, 1.6]), test=False,
                   progress=False)

    def fake_probs(method, extractor, image, *args, **kwargs):
        img = torch.as_tensor(image)[0]
        lo, hi = img.min(), img.max()
        t = (img - lo) / (hi - lo)
        labels = torch.where(t > 0.72, 1, torch.where(t < 0.35, 2, 0))
        return torch.nn.functional.one_hot(labels, 3).permute(3, 0, 1, 2).float()

    monkeypatch.setattr(predict_mod, "sliding_window_probs", fake_probs)
    from maskgen.metrics import dice_per_class

    pred = predict_mod.Predictor(run)
    for src in sorted((tiny_dataset / "imagesTs").iterdir()):
        labels, _, original = pred.predict_file(src)
        ref = np.asarray(nib.load(tiny_dataset / "labelsTs" / src.name.replace("_0000", "")).dataobj)
        dice = dice_per_class(labels, ref, [1, 2])
        assert dice[1] > 0.85 and dice[2] > 0.7, dice
