"""``maskgen analyze views``: Dice with all inputs equals the plain test Dice; each source can be masked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import write_dataset

from maskgen.cli import main
from maskgen.evaluation.testing import train_and_test
from maskgen.runtime.config import TrainConfig


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    ds = write_dataset(root / "ds")
    out = {}
    for method in ("maskgen", "erm"):
        cfg = TrainConfig(dataset=str(ds), out=str(root / method), method=method, steps=4, batch_size=2,
                          patch_size=[16, 16, 16], val_every=2, base_width=2, n_poolings=2, convs_per_level=1,
                          num_workers=0, device="cpu", spacing=[2.0, 2.0, 2.0])
        train_and_test(cfg, progress=False)
        out[method] = root / method
    return out


def test_views_reproduce_the_test_dice_and_cover_each_source(runs, tmp_path):
    out = tmp_path / "views"
    assert main(["analyze", "views", str(runs["maskgen"]), str(runs["erm"]), "--out", str(out)]) == 0
    for name in ("views.csv", "summary.json", "views.txt", "views.png"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    for method, run in runs.items():
        plain = json.loads((run / "test" / "summary.json").read_text())
        assert s[method]["views"]["all inputs"]["overall"] == plain["overall"]["mean_dice"]  # exactly
    assert set(s["maskgen"]["views"]) == {"all inputs", "image masked", "features masked"}
    assert set(s["erm"]["views"]) == {"all inputs", "image masked"}  # ERM reads no features
    with (out / "views.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["run"], r["view"]) for r in rows} >= {("maskgen", "image masked"), ("erm", "image masked")}
    # an existing analysis folder is never overwritten silently
    assert main(["analyze", "views", str(runs["erm"]), "--out", str(out)]) == 2


def test_robustness_gamma_1_and_strength_0_reproduce_the_clean_dice(runs, tmp_path):
    out = tmp_path / "rob"
    assert main(["analyze", "robustness", str(runs["maskgen"]), "--out", str(out), "--gammas", "1", "2",
                 "--strengths", "0", "0.5", "--fields", "2"]) == 0
    for name in ("robustness.csv", "summary.json", "robustness.txt", "robustness.png"):
        assert (out / name).is_file(), name
    assert not (out / "scratch").exists()
    s = json.loads((out / "summary.json").read_text())["maskgen"]
    plain = json.loads((runs["maskgen"] / "test" / "summary.json").read_text())["overall"]["mean_dice"]["mean"]
    assert s["gamma"]["1.0"]["mean"] == pytest.approx(plain, abs=1e-12)
    assert s["bias"]["0.0"]["mean"] == pytest.approx(plain, abs=1e-12)
    with (out / "robustness.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (2 + 1 + 2)  # 2 test cases x (two gammas, strength 0 once, two fields at 0.5)


def test_bias_field_strength_0_is_the_identity_and_others_stay_in_unit_range():
    import torch

    from maskgen.analysis.robustness import bias_field, gamma

    assert bias_field(0.0, seed=0) is None and gamma(1.0) is None
    x = torch.rand(1, 12, 10, 8)
    y = bias_field(0.5, seed=1)(x)
    assert y.shape == x.shape and float(y.min()) == 0.0 and float(y.max()) == 1.0
    assert not torch.allclose(y, x)
    torch.testing.assert_close(bias_field(0.5, seed=1)(x), y)  # seeded: the same field each time


def test_flatness_scale_0_reproduces_the_clean_dice_and_noise_is_relative_to_each_tensor(runs, tmp_path):
    out = tmp_path / "flat"
    assert main(["analyze", "flatness", str(runs["maskgen"]), str(runs["erm"]), "--out", str(out),
                 "--scales", "0", "0.5", "--draws", "2"]) == 0
    for name in ("flatness.csv", "summary.json", "flatness.txt", "flatness.png"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    for method, run in runs.items():
        plain = json.loads((run / "test" / "summary.json").read_text())["overall"]["mean_dice"]["mean"]
        assert s[method]["scales"]["0.0"]["mean"] == pytest.approx(plain, abs=1e-12)
    with (out / "flatness.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * (1 + 2)  # 2 runs x 2 test cases x (scale 0 once, two draws at 0.5)

    import torch

    from maskgen.analysis.flatness import add_weight_noise

    net = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.Linear(300, 2))
    with torch.no_grad():
        net[1].weight.mul_(100.0)  # a tensor 100x larger gets 100x larger noise
    before = [p.detach().clone() for p in net.parameters()]
    add_weight_noise(net, 0.1, seed=0)
    for p, b in zip(net.parameters(), before):
        if p.numel() >= 300:
            assert float((p.detach() - b).norm() / b.norm()) == pytest.approx(0.1, rel=0.1)
    again = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.Linear(300, 2))
    again.load_state_dict(dict(zip(net.state_dict(), before)))
    add_weight_noise(again, 0.1, seed=0)
    for p, q in zip(again.parameters(), net.parameters()):
        torch.testing.assert_close(p, q)  # seeded: the same draw each time


def test_gradient_check_is_recorded_every_k_steps_resumes_cleanly_and_is_analysed(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    kw = dict(dataset=str(ds), out=str(tmp_path / "mg"), method="maskgen", batch_size=2, patch_size=[16, 16, 16],
              val_every=2, base_width=2, n_poolings=2, convs_per_level=1, num_workers=0, device="cpu",
              spacing=[2.0, 2.0, 2.0], grad_check_every=2)
    train_and_test(TrainConfig(steps=4, **kw), test=False, progress=False)
    train_and_test(TrainConfig(steps=6, **kw), resume=True, test=False, progress=False)
    with (tmp_path / "mg" / "grad_check.csv").open() as f:
        rows = list(csv.DictReader(f))
    feature_channels = TrainConfig.load(tmp_path / "mg" / "config.yaml").feature_channels
    assert [int(r["step"]) for r in rows] == [2, 4, 6]  # each check once, the resumed run included
    assert list(rows[0]) == ["step", "all", *(f"feature_{c}" for c in range(feature_channels))]
    assert all(-1.0 <= float(v) <= 1.0 for r in rows for k, v in r.items() if k != "step")
    out = tmp_path / "grad"
    assert main(["analyze", "gradients", str(tmp_path / "mg"), "--out", str(out)]) == 0
    for name in ("gradients.csv", "summary.json", "gradients.txt", "gradients.png"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())["mg"]
    assert s["checks"] == 3 and s["all"]["n"] == 3 and s["per_channel"]["n"] == 3 * feature_channels
    # a run without the check is named in the error; ERM reads no features, so it cannot take the check
    assert main(["analyze", "gradients", str(ds), "--out", str(tmp_path / "g2")]) == 2
    with pytest.raises(ValueError, match="needs a method that reads stable features"):
        train_and_test(TrainConfig(steps=2, **{**kw, "out": str(tmp_path / "erm"), "method": "erm"}), progress=False)


def test_gradient_check_cosine_is_one_when_the_image_channel_is_unread():
    import torch

    from maskgen.training.grad_check import _cosine, first_convolution

    assert _cosine(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])) == pytest.approx(1.0)
    assert _cosine(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])) == pytest.approx(-1.0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.Conv3d(4, 4, 3))
    assert first_convolution(net, 3) is net[0]


def test_predict_qc_scores_each_case_flags_low_ones_and_refuses_image_only_runs(runs, tmp_path):
    cfg = TrainConfig.load(runs["maskgen"] / "config.yaml")
    images = sorted((Path(cfg.dataset) / "imagesTs").glob("*_0000.nii.gz"))
    out = tmp_path / "masks"
    assert main(["predict", "--run", str(runs["maskgen"]), "--input", *map(str, images), "--output", str(out), "--qc",
                 "--qc-threshold", "1.01", "--qc-maps", "--qc-random-views", "2"]) == 0
    with (out / "qc.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(images)
    for r in rows:
        views = [float(v) for k, v in r.items() if k.startswith("agreement_")]
        assert len(views) == 2 + 2 and all(0.0 <= v <= 1.0 for v in views)
        assert float(r["qc_score"]) == pytest.approx(sum(views) / len(views), abs=1e-5)
        assert r["flagged"] == "True"  # every score is below a threshold above 1
        assert 0.0 <= float(r["entropy"]) <= 1.0
    import nibabel as nib
    import numpy as np

    for img in images:
        case = img.name[: -len("_0000.nii.gz")]
        m = nib.load(out / "qc" / f"{case}_disagreement.nii.gz")
        assert m.shape == nib.load(img).shape[:3]
        data = np.asarray(m.dataobj)
        assert data.min() >= 0.0 and data.max() <= 1.0 + 1e-6
    # the masks themselves are those of a plain predict
    plain = tmp_path / "plain"
    assert main(["predict", "--run", str(runs["maskgen"]), "--input", *map(str, images), "--output", str(plain)]) == 0
    for img in images:
        case = img.name[: -len("_0000.nii.gz")] + ".nii.gz"
        assert np.array_equal(np.asarray(nib.load(out / case).dataobj), np.asarray(nib.load(plain / case).dataobj))
    # a rerun into the same folder is refused (qc.csv exists), and ERM has no views to compare
    assert main(["predict", "--run", str(runs["maskgen"]), "--input", *map(str, images), "--output", str(out),
                 "--qc"]) == 2
    assert main(["predict", "--run", str(runs["erm"]), "--input", str(images[0]), "--output", str(tmp_path / "e"),
                 "--qc"]) == 2


def test_qc_agreement_and_views_and_the_validation_analysis(runs, tmp_path):
    import numpy as np

    from maskgen.inference.qc import agreement, random_views

    a = np.zeros((4, 4, 4), int)
    b = a.copy()
    assert agreement(a, b, 3) == 1.0  # no foreground in either: they agree
    a[:2] = 1
    b[:1] = 1
    assert agreement(a, b, 3) == pytest.approx(2 * 16 / (32 + 16))
    views = random_views(5, 20, 0.5, "rescale", seed=0)
    assert len(views) == 20 and all(float(v.sum()) > 0 for v in views)
    assert {float(x) for v in views for x in v} <= {0.0, 2.0}
    assert all(torch_equal(v, w) for v, w in zip(views, random_views(5, 20, 0.5, "rescale", seed=0)))
    by_source = random_views(5, 20, 0.5, "zero", seed=0, groups=[1, 4])  # --mask-unit source: all features or none
    assert all(len({float(x) for x in v[1:]}) == 1 and float(v.sum()) > 0 for v in by_source)
    out = tmp_path / "qcval"
    assert main(["analyze", "qc", str(runs["maskgen"]), "--out", str(out), "--random-views", "1"]) == 0
    for name in ("qc_validation.csv", "summary.json", "qc.txt", "qc.png"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())["maskgen"]
    plain = json.loads((runs["maskgen"] / "test" / "summary.json").read_text())["overall"]["mean_dice"]["mean"]
    with (out / "qc_validation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert s["cases"] == len(rows) and np.mean([float(r["dice"]) for r in rows]) == pytest.approx(plain)
    assert set(s["spearman_with_dice"]) == {"qc score", "-entropy", "-entropy (foreground)"}


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_views_that_agree_exactly_give_the_best_qc_score_and_identical_inputs_a_gradient_cosine_of_1(runs, tmp_path):
    import numpy as np
    import torch

    from maskgen.evaluation.testing import labelled_test_cases
    from maskgen.inference.predict import Predictor
    from maskgen.inference.qc import QualityCheck
    from maskgen.training.grad_check import GradientCheck, first_convolution
    from maskgen.training.losses import segmentation_loss

    pred = Predictor(runs["maskgen"], device="cpu")
    conv = first_convolution(pred.method, 1 + pred.cfg.feature_channels)
    with torch.no_grad():
        conv.weight.zero_()  # the output no longer depends on the input: every view agrees with the full one
    case = labelled_test_cases(pred.cfg, runs["maskgen"])[0]
    pred.predict_file(case.image)
    row, disagree = QualityCheck(pred, n_random=2).score(pred)
    assert row["qc_score"] == 1.0 and float(disagree.max()) == 0.0

    class FixedFeatures(torch.nn.Module):  # features that do not depend on the image
        def forward(self, x):
            return torch.rand((x.shape[0], pred.cfg.feature_channels, *x.shape[2:]),
                              generator=torch.Generator().manual_seed(0))

    label = torch.zeros(1, 16, 16, 16, dtype=torch.uint8)
    label[:, 4:12, 4:12, 4:12] = 1
    vol = {"image": torch.zeros(1, 16, 16, 16), "label": label}
    check = GradientCheck(pred.method, FixedFeatures(), [vol], [16, 16, 16], 2, segmentation_loss(None),
                          torch.device("cpu"), tmp_path, resume=False, step=0)
    with torch.no_grad():
        conv.weight.normal_()
    result = check(1)  # a zero image: the joint and the features-only input are the same input
    check.close()
    assert np.isclose(result["all"], 1.0)
