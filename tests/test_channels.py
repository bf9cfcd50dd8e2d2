"""Several input channels (nnU-Net's ``_0000``, ``_0001``, ...): per-channel normalisation, features per
channel, training, prediction with a channel missing (``predict --missing``), views without each channel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SHAPE, affine, make_case

from maskgen.cli import main
from maskgen.data.cases import DatasetError
from maskgen.data.nnunet import load_dataset
from maskgen.data.preprocess import CT_WINDOW, load_case
from maskgen.evaluation.testing import train_and_test
from maskgen.extractors import build_extractor
from maskgen.extractors.channelwise import ChannelwiseExtractor, feature_reads
from maskgen.inference.predict import Predictor
from maskgen.runtime.config import TrainConfig


def write_two_channel(root: Path, n_train=3, n_val=1, n_test=2, seed=0) -> Path:
    """MR (arbitrary units) and CT (HU) channels of each case, on one non-identity, non-1-mm grid."""
    rng = np.random.default_rng(seed)
    aff = affine()
    for split, n in (("Tr", n_train), ("Val", n_val), ("Ts", n_test)):
        (root / f"images{split}").mkdir(parents=True, exist_ok=True)
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lab = make_case(rng)
            ct = np.where(lab == 1, 60.0, np.where(lab == 2, 900.0, -2000.0)).astype(np.float32)  # below window
            case = f"case{split.lower()}{i:02d}"
            nib.save(nib.Nifti1Image(img, aff), root / f"images{split}" / f"{case}_0000.nii.gz")
            nib.save(nib.Nifti1Image(ct, aff), root / f"images{split}" / f"{case}_0001.nii.gz")
            nib.save(nib.Nifti1Image(lab, aff), root / f"labels{split}" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "CT"}, "labels": {"background": 0, "bright": 1, "dark": 2},
        "numTraining": n_train, "file_ending": ".nii.gz"}))
    return root


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory) -> Path:
    return write_two_channel(tmp_path_factory.mktemp("two") / "Dataset002_TwoChannel")


def _cfg(dataset, out, method="maskgen", **kw):
    base = dict(dataset=str(dataset), out=str(out), method=method, steps=3, batch_size=2, patch_size=[16, 16, 16],
                val_every=3, base_width=2, n_poolings=2, convs_per_level=1, num_workers=0, device="cpu", seed=0,
                spacing=[2.0, 2.0, 2.0])
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def runs(two_channel, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("maskgen", "erm"):
        train_and_test(_cfg(two_channel, root / method, method=method), test=False, progress=False)
        out[method] = root / method
    return out


def test_cases_carry_every_channel_and_each_is_normalised_by_its_modality(two_channel):
    spec = load_dataset(two_channel)
    case = spec.split("train")[0]
    assert [p.name for p in case.images] == [f"{case.case_id}_0000.nii.gz", f"{case.case_id}_0001.nii.gz"]
    assert spec.channels == ["T2", "CT"] and spec.modalities == ["MR", "CT"]
    vol = load_case(case.images, case.label, None, spec.modalities)
    image = vol["image"].as_tensor()
    assert image.shape[0] == 2 and image.shape[1:] == vol["label"].shape[1:]
    assert float(image[0].min()) == pytest.approx(0.0) and float(image[0].max()) == pytest.approx(1.0)  # min-max
    raw_ct = np.asarray(nib.load(case.images[1]).dataobj)
    lo, hi = CT_WINDOW  # clipped window, not min-max: -2000 HU -> 0, 60 HU -> 0.529, 900 HU -> 0.939
    expected = sorted({round((min(max(v, lo), hi) - lo) / (hi - lo), 4) for v in np.unique(raw_ct)})
    assert sorted({round(float(v), 4) for v in image[1].unique()}) == expected


def test_a_missing_or_misaligned_channel_file_is_refused_by_name(two_channel, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(two_channel, bad)
    (bad / "imagesTr" / "casetr01_0001.nii.gz").unlink()
    moved = affine(origin=(0.0, 0.0, 0.0))
    img = nib.load(bad / "imagesTr" / "casetr02_0001.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), moved), bad / "imagesTr" / "casetr02_0001.nii.gz")
    with pytest.raises(DatasetError) as err:
        load_dataset(bad)
    text = str(err.value)
    assert "casetr01' lacks channel file(s)" in text and "casetr01_0001.nii.gz" in text
    assert "casetr02_0001.nii.gz: affine != first channel's" in text


def test_the_extractor_reads_each_channel_and_an_absent_one_gives_zeros():
    base = build_extractor("mind")
    both = ChannelwiseExtractor(base, [0, 1]).freeze()
    x = torch.rand(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    feats = both(x)
    k = base.out_channels
    assert feats.shape[1] == 2 * k == both.out_channels
    torch.testing.assert_close(feats[:, :k], base(x[:, :1]))
    torch.testing.assert_close(feats[:, k:], base(x[:, 1:]))
    both.absent = frozenset({1})
    assert torch.equal(both(x)[:, k:], torch.zeros_like(feats[:, k:]))
    torch.testing.assert_close(both(x)[:, :k], feats[:, :k])
    assert feature_reads("all", ["T2", "CT"]) == [0, 1]
    assert feature_reads("ct", ["T2", "CT"]) == [1] and feature_reads("0", ["T2", "CT"]) == [0]
    with pytest.raises(ValueError, match="no such channel .*0=T2, 1=CT"):
        feature_reads("FLAIR", ["T2", "CT"])


def test_a_two_channel_run_records_its_channels_and_reads_features_of_both(runs):
    cfg = TrainConfig.load(runs["maskgen"] / "config.yaml")
    assert cfg.channels == ["T2", "CT"] and cfg.modalities == ["MR", "CT"] and cfg.features_from == "all"
    assert cfg.feature_channels == 2 * build_extractor("mind").out_channels
    pred = Predictor(runs["maskgen"], device="cpu")
    assert pred.method.in_channels == 2 + cfg.feature_channels


def test_features_from_one_named_channel(two_channel, tmp_path):
    run = tmp_path / "ct_only"
    train_and_test(_cfg(two_channel, run, steps=1, val_every=1, features_from="CT"), test=False, progress=False)
    cfg = TrainConfig.load(run / "config.yaml")
    assert cfg.feature_channels == build_extractor("mind").out_channels
    assert Predictor(run, device="cpu").extractor.reads == (1,)


@pytest.mark.parametrize("method", ["maskgen", "erm"])
def test_predict_with_a_missing_channel_writes_the_mask_in_the_input_geometry(runs, two_channel, tmp_path, method,
                                                                           capsys):
    only_mr = tmp_path / "only_mr"
    only_mr.mkdir()
    for p in (two_channel / "imagesTs").glob("*_0000.nii.gz"):
        shutil.copy(p, only_mr / p.name)
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(runs[method]), "--input", str(only_mr), "--output", str(out)]) == 2
    assert "has no file for channel _0001 (CT); add it, or predict without it with --missing CT" in capsys.readouterr().err
    assert not out.exists()
    assert main(["predict", "--run", str(runs[method]), "--input", str(only_mr), "--output", str(out),
                 "--missing", "CT"]) == 0
    for src in sorted(only_mr.iterdir()):
        mask = nib.load(out / src.name.replace("_0000", ""))
        assert mask.shape == SHAPE
        np.testing.assert_allclose(mask.affine, nib.load(src).affine, atol=1e-5)
    assert main(["evaluate", "--pred", str(out), "--labels", str(two_channel / "labelsTs"), "--out",
                 str(tmp_path / "ev")]) == 0
    scored = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert len(scored["metric_per_case"]) == 2 and "foreground_mean" in scored
    # the missing channel is zeros and gives no features: the same as zeroing it in a full input
    full = Predictor(runs[method], device="cpu")
    without = Predictor(runs[method], device="cpu", missing=["CT"])
    case = sorted((two_channel / "imagesTs").glob("*_0000.nii.gz"))[0]
    ct = case.with_name(case.name.replace("_0000", "_0001"))
    p_without, _ = without.probabilities([case, None])
    p_with, _ = full.probabilities([case, ct])
    if method == "erm":  # ERM reads the image only: given zeros for CT
        zero_ct = tmp_path / "zero_ct.nii.gz"
        img = nib.load(ct)
        nib.save(nib.Nifti1Image(np.full(img.shape, CT_WINDOW[0], np.float32), img.affine), zero_ct)
        np.testing.assert_allclose(p_without, full.probabilities([case, zero_ct])[0], atol=1e-5)
    assert not np.allclose(p_without, p_with)
    with pytest.raises(ValueError, match="names every channel"):
        Predictor(runs[method], device="cpu", missing=["T2", "1"])
    with pytest.raises(ValueError, match="no such channel .*0=T2, 1=CT"):
        Predictor(runs[method], device="cpu", missing=["FLAIR"])


def test_views_score_each_run_without_each_channel(runs, tmp_path):
    from maskgen.analysis.views import view_dependence

    summary = view_dependence([runs["maskgen"], runs["erm"]], tmp_path / "views", device="cpu", progress=False)
    assert set(summary["maskgen"]["views"]) == {"all inputs", "image masked", "features masked", "without T2",
                                                "without CT"}
    assert set(summary["erm"]["views"]) == {"all inputs", "image masked", "without T2", "without CT"}
    assert "without CT" in (tmp_path / "views" / "views.txt").read_text()


def test_export_takes_every_channel(runs, tmp_path):
    from maskgen.inference.export import export_run

    rec = export_run(runs["maskgen"], tmp_path / "model.pt")
    assert rec["input"].startswith("2 channel(s) ['T2', 'CT']") and set(rec["intensity"]) == {"T2", "CT"}
    model = torch.jit.load(str(tmp_path / "model.pt"))
    assert model(torch.rand(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
