"""Test-time adaptation (``maskgen predict --tta``): TENT, alpha tuning, stable feature boosting."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_dataset

from maskgen.cli import main
from maskgen.data.preprocess import load_case
from maskgen.evaluation.testing import train_and_test
from maskgen.inference.predict import Predictor
from maskgen.inference.tta import TTAS, build_tta
from maskgen.inference.tta.base import Restore
from maskgen.inference.tta.sfb import fit_temperature, nll
from maskgen.runtime.config import TrainConfig

BN_SUFFIXES = (".weight", ".bias", ".running_mean", ".running_var", ".num_batches_tracked")


def _train(dataset, out, method):
    cfg = TrainConfig(dataset=str(dataset), out=str(out), method=method, steps=3, batch_size=2,
                      patch_size=[16, 16, 8], val_every=3, base_width=4, n_poolings=2, convs_per_level=1,
                      num_workers=0, device="cpu", seed=0)
    train_and_test(cfg, test=False, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    ds = write_dataset(root / "Dataset002_Tta", n_train=3, n_val=1, n_test=2)
    return {"dataset": ds, "erm": _train(ds, root / "erm", "erm"), "stable": _train(ds, root / "reps", "reps_only")}


def _image(runs, pred, i=0):
    src = sorted((runs["dataset"] / "imagesTs").iterdir())[i]
    return load_case(src, None, pred.cfg.spacing, pred.cfg.modality)["image"].as_tensor()


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bn_names(module):
    return {n for n, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def test_registry_and_default_is_plain_sliding_window(runs):
    assert {"none", "tent", "alpha", "sfb", "recalibrate-bn"} <= set(TTAS)
    pred = Predictor(runs["erm"], device="cpu")
    img = _image(runs, pred)
    torch.testing.assert_close(pred.tta.predict_volume(pred, img), pred.window_probs(img))
    assert pred.tta.report() is None


def test_tent_adapts_only_batchnorm_affine_and_restores_all_weights(runs):
    pred = Predictor(runs["erm"], device="cpu", tta=build_tta("tent", steps=6, lr=0.05))
    method = pred.method
    original = _state(method)
    flags = {n: p.requires_grad for n, p in method.named_parameters()}
    bns = _bn_names(method)
    img_a, img_b = _image(runs, pred, 0), _image(runs, pred, 1)

    with Restore(method):
        stats = pred.tta.adapt(pred, img_a)
        adapted = _state(method)
    changed = {k for k in original if not torch.equal(original[k], adapted[k])}
    assert changed, "adaptation changed nothing"
    for k in changed:  # only BatchNorm parameters and statistics move
        assert k.rsplit(".", 1)[0] in bns and k.endswith(BN_SUFFIXES), k
    affine_changed = {k for k in changed if k.endswith((".weight", ".bias"))}
    assert affine_changed and all(k.rsplit(".", 1)[0] in bns for k in affine_changed)
    assert stats["entropy_after"] < stats["entropy_before"]

    # predict_volume restores every weight, buffer, flag and mode; volumes are independent
    probs_a = pred.tta.predict_volume(pred, img_a, name="a")
    for k, v in _state(method).items():
        assert torch.equal(v, original[k]), k
    pred.tta.predict_volume(pred, img_b, name="b")
    for k, v in _state(method).items():
        assert torch.equal(v, original[k]), k
    assert {n: p.requires_grad for n, p in method.named_parameters()} == flags
    assert not method.training
    torch.testing.assert_close(pred.tta.predict_volume(pred, img_a, name="a"), probs_a)
    torch.testing.assert_close(probs_a.sum(0), torch.ones_like(probs_a[0]), atol=1e-4, rtol=0)
    assert set(pred.tta.report()["cases"]) == {"a", "b"}


def test_alpha_one_is_the_stable_model_and_zero_the_unstable(runs):
    for alpha in (1.0, 0.0):
        pred = Predictor(runs["erm"], device="cpu", tta=build_tta("alpha", stable_run=runs["stable"], alpha=alpha))
        img = _image(runs, pred)
        mixed = pred.tta.predict_volume(pred, img)
        ref = pred.tta.stable.window_probs(img) if alpha == 1.0 else pred.window_probs(img)
        torch.testing.assert_close(mixed, ref, atol=1e-5, rtol=0)
        assert torch.equal(mixed.argmax(0), ref.argmax(0))
    assert pred.tta.stable.cfg.method == "reps_only"


def test_alpha_is_tuned_on_validation_and_written(runs, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(runs["erm"]), "--input", str(runs["dataset"] / "imagesTs"),
                 "--output", str(out), "--tta", "alpha", "--stable-run", str(runs["stable"])]) == 0
    rep = json.loads((out / "tta.json").read_text())
    assert rep["tta"] == "alpha" and rep["tuned"] is True
    assert 0.0 <= rep["alpha"] <= 1.0 and round(rep["alpha"] * 10) == pytest.approx(rep["alpha"] * 10)
    assert len(rep["grid_val_dice"]) == 11 and rep["val_cases"] == ["caseval00"]
    assert len(list(out.glob("*.nii.gz"))) == 2


def test_temperature_fit_lowers_nll_of_overconfident_logits():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4000,), generator=g)
    clean = torch.nn.functional.one_hot(labels, 3).float() * 2 + torch.randn(4000, 3, generator=g)
    t, before, after = fit_temperature(clean * 6, labels)  # 6x overconfident
    assert t > 2 and after < before
    assert after == pytest.approx(float(nll(clean * 6, labels, t)), rel=1e-5)


def test_sfb_calibrates_and_returns_a_label_map(runs):
    tta = build_tta("sfb", stable_run=runs["stable"], steps=2, rounds=2)
    pred = Predictor(runs["erm"], device="cpu", tta=tta)
    cal = tta.calibration
    assert cal["nll_after"] <= cal["nll_before"] and cal["temperature"] > 0 and cal["voxels"] > 0
    original = _state(pred.method)
    src = sorted((runs["dataset"] / "imagesTs").iterdir())[0]
    labels, probs, original_img = pred.predict_file(src)
    assert labels.shape == nib.load(src).shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-3)
    for k, v in _state(pred.method).items():
        assert torch.equal(v, original[k]), k
    case = tta.report()["cases"][src.name.replace("_0000.nii.gz", "")]
    assert 0.0 <= case["changed_from_stable"] <= 1.0


def test_cli_tent_writes_masks_in_input_geometry(runs, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(runs["erm"]), "--input", str(runs["dataset"] / "imagesTs"),
                 "--output", str(out), "--tta", "tent", "--tta-steps", "2"]) == 0
    for src in sorted((runs["dataset"] / "imagesTs").iterdir()):
        inp, mask = nib.load(src), nib.load(out / src.name.replace("_0000", ""))
        assert mask.shape == inp.shape
        np.testing.assert_allclose(mask.affine, inp.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    rep = json.loads((out / "tta.json").read_text())
    assert rep["tta"] == "tent" and rep["steps"] == 2 and len(rep["cases"]) == 2


@pytest.mark.parametrize("name", ["alpha", "sfb"])
def test_missing_stable_run_is_a_clear_error(runs, tmp_path, capsys, name):
    with pytest.raises(ValueError, match="--stable-run"):
        build_tta(name)
    code = main(["predict", "--run", str(runs["erm"]), "--input", str(runs["dataset"] / "imagesTs"),
                 "--output", str(tmp_path / "p"), "--tta", name])
    assert code == 2
    assert "--stable-run" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_options_a_tta_does_not_use_are_refused(runs, tmp_path, capsys):
    code = main(["predict", "--run", str(runs["erm"]), "--input", str(runs["dataset"] / "imagesTs"),
                 "--output", str(tmp_path / "p"), "--tta", "tent", "--alpha", "0.5"])
    assert code == 2 and "--alpha" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_tta("alpha", stable_run="x", alpha=1.5)


def test_each_adaptation_declares_its_options_and_predict_help_is_made_from_them(capsys):
    import inspect

    from maskgen.inference.tta import tta_options

    for name, cls in TTAS.items():
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(cls.OPTIONS) <= params, name
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, _, uses in tta_options().values():
        assert flag in help_text
        for tta_name, _, _ in uses:
            assert f"{tta_name}" in help_text
    with pytest.raises(ValueError, match="tta 'tent' does not use --tta-rounds"):
        build_tta("tent", rounds=2)


def test_recalibrate_bn_re_estimates_only_batchnorm_statistics_as_a_cumulative_mean(runs):
    from maskgen.inference.tta.base import batchnorm_layers

    plain = Predictor(runs["erm"], device="cpu")
    pred = Predictor(runs["erm"], device="cpu", tta=build_tta("recalibrate-bn", batches=3, seed=5))
    before, after = _state(plain.method), _state(pred.method)
    bns = _bn_names(pred.method)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[0] in bns and k.endswith((".running_mean", ".running_var",
                                                                      ".num_batches_tracked")) for k in changed)
    assert not pred.method.training
    assert all(bn.momentum == 0.1 for bn in batchnorm_layers(pred.method))  # restored after the cumulative pass
    rep = pred.tta.report()
    assert rep["patches"] == 3 * pred.cfg.batch_size and rep["train_cases"] and rep["batches"] == 3

    # the first BatchNorm's running mean is the mean of its 3 batch means (cumulative average, not momentum)
    from maskgen.inference.tta.base import validation_volumes
    from maskgen.inference.tta.recalibrate import recalibrate_batchnorm

    first = batchnorm_layers(plain.method)[0]
    means = []
    hook = first.register_forward_pre_hook(lambda m, a: means.append(a[0].mean(dim=(0, 2, 3, 4))))
    vols = validation_volumes(plain, split="train")
    for v in vols:
        v["label"] = v["label"][None]
    assert recalibrate_batchnorm(plain, vols, batches=3, seed=5) == 3 * plain.cfg.batch_size
    hook.remove()
    assert len(means) == 3
    torch.testing.assert_close(first.running_mean, torch.stack(means).mean(0), atol=1e-5, rtol=1e-4)
    assert int(first.num_batches_tracked) == 3
    # same seed, same statistics as the adaptation computed
    for k in changed:
        torch.testing.assert_close(_state(plain.method)[k], after[k])
    img = _image(runs, pred)
    probs = pred.tta.predict_volume(pred, img)
    torch.testing.assert_close(probs.sum(0), torch.ones_like(probs[0]), atol=1e-4, rtol=0)


def test_recalibrate_bn_from_the_cli_and_its_bad_options(runs, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(runs["erm"]), "--input", str(runs["dataset"] / "imagesTs"),
                 "--output", str(out), "--tta", "recalibrate-bn", "--recalibration-batches", "2"]) == 0
    rep = json.loads((out / "tta.json").read_text())
    assert rep["tta"] == "recalibrate-bn" and rep["batches"] == 2 and len(rep["train_cases"]) == 3
    assert len(list(out.glob("*.nii.gz"))) == 2
    with pytest.raises(ValueError, match="--recalibration-batches must be at least 1"):
        build_tta("recalibrate-bn", batches=0)


def test_analyze_adaptation_scores_each_run_plain_and_adapted(runs, tmp_path):
    from maskgen.analysis.adaptation import adaptation
    from maskgen.evaluation.testing import labelled_test_cases, score_cases

    out = tmp_path / "adapt"
    assert main(["analyze", "adaptation", str(runs["erm"]), "--out", str(out), "--tta", "recalibrate-bn",
                 "--recalibration-batches", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    s = summary["erm"]
    assert set(s["settings"]) == {"plain", "recalibrate-bn"} and s["train_domains"] == ["source"]
    assert s["report"]["tta"] == "recalibrate-bn" and s["report"]["batches"] == 2
    for by_domain in s["settings"].values():  # the fixture's test cases are all out of domain
        assert "in-domain" not in by_domain and by_domain["out-of-domain"]["n"] == 2
    plain = Predictor(runs["erm"], device="cpu")
    ref = score_cases(plain, labelled_test_cases(plain.cfg, runs["erm"]), tmp_path / "ref", plain.cfg.label_names,
                      compute_hd95=False, save_predictions=False, progress=False)
    assert s["settings"]["plain"]["out-of-domain"]["mean"] == pytest.approx(ref["summary"]["overall"]["mean_dice"]["mean"])
    rows = (out / "adaptation.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 and (out / "adaptation.png").is_file() and (out / "adaptation.txt").is_file()
    assert not (out / "scratch").exists()
    with pytest.raises(ValueError, match="does not use --recalibration-batches"):
        adaptation([runs["erm"]], tmp_path / "bad", "tent", {"batches": 2})
    assert not (tmp_path / "bad").exists()
    import shutil

    bare = tmp_path / "carried"  # a run without its checkpoint, as --resume-from carries a finished cell
    shutil.copytree(runs["erm"], bare, ignore=shutil.ignore_patterns("checkpoint_*"))
    with pytest.raises(FileNotFoundError, match=r"carried/checkpoint_best\.pt"):
        adaptation([runs["erm"], bare], tmp_path / "bad", "recalibrate-bn")
    assert not (tmp_path / "bad").exists()


def test_runs_of_the_same_folder_name_are_labelled_by_their_parents(tmp_path):
    from maskgen.analysis.runs import resolve_runs

    a, b = tmp_path / "mask_rate=0.25" / "seed0", tmp_path / "mask_rate=0.5" / "seed0"
    assert [label for label, _ in resolve_runs([a, b, tmp_path / "erm"])] == [
        "mask_rate=0.25/seed0", "mask_rate=0.5/seed0", "erm"]
    assert [label for label, _ in resolve_runs([a, a])] == ["0_seed0", "1_seed0"]
