"""The defects found by trying maskgen as a new user would: each test reproduces one (numbered as in the issue)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import affine, write_dataset

from maskgen.cli import main
from maskgen.data.nnunet import load_dataset
from maskgen.data.preprocess import classes_to_label, label_to_classes, load_case
from maskgen.data.volumes import load_volume
from maskgen.evaluation.testing import train_and_test
from maskgen.inference.predict import Predictor
from maskgen.io import atomic_torch_save, atomic_write_text
from maskgen.runtime.checkpoint import load_checkpoint
from maskgen.runtime.config import TrainConfig

TINY = ["--steps", "2", "--val-every", "2", "--batch-size", "2", "--patch-size", "16", "16", "16", "--base-width", "2",
        "--n-poolings", "2", "--num-workers", "0", "--device", "cpu"]


def _cfg(dataset, out, method="erm", steps=2, **kw):
    base = dict(dataset=str(dataset), out=str(out), method=method, steps=steps, batch_size=2, patch_size=[16, 16, 16],
                val_every=2, base_width=2, n_poolings=2, convs_per_level=1, num_workers=0, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------- 1. label values
def _relabel(root: Path, mapping: dict[int, int], labels: dict[str, int]) -> Path:
    for lab_dir in root.glob("labels*"):
        for p in lab_dir.iterdir():
            img = nib.load(p)
            old = np.asarray(img.dataobj).astype(np.int32)
            new = np.zeros_like(old)
            for a, b in mapping.items():
                new[old == a] = b
            nib.save(nib.Nifti1Image(new.astype(np.int16), img.affine), p)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_label_values_256_and_above_stay_exact(tmp_path):
    ds = _relabel(write_dataset(tmp_path / "ds"), {1: 256, 2: 300}, {"background": 0, "wm": 256, "gm": 300})
    spec = load_dataset(ds)
    assert spec.class_values == [0, 256, 300] and spec.n_classes == 3
    case = spec.split("train")[0]
    raw = np.asarray(nib.load(case.label).dataobj)
    lab = load_case(case.image, case.label, None, "MR", spec.class_values)["label"]
    # each declared value becomes its own class index; nothing wraps to background or to 44
    assert sorted(torch.unique(lab.as_tensor()).tolist()) == [0, 1, 2]
    assert int((lab.as_tensor() == 1).sum()) == int((raw == 256).sum())
    assert int((lab.as_tensor() == 2).sum()) == int((raw == 300).sum())

    run = tmp_path / "run"
    res = train_and_test(_cfg(ds, run, spacing=None), progress=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["class_values"] == [0, 256, 300] and cfg["n_classes"] == 3
    assert set(res["test_summary"]["label_names"]) == {"wm", "gm"}
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(run), "--input", str(ds / "imagesTs"), "--output", str(out)]) == 0
    for mask in out.iterdir():
        values = set(np.unique(np.asarray(nib.load(mask).dataobj)).tolist())
        assert values <= {0, 256, 300}, (mask, values)


def test_label_mapping_round_trip_and_undeclared_values_refused():
    values = [0, 2, 41, 2035]
    lab = torch.tensor([[0, 2, 41], [2035, 2035, 0]], dtype=torch.float32)
    classes = label_to_classes(lab, values, "x.nii.gz")
    assert classes.tolist() == [[0, 1, 2], [3, 3, 0]]
    back = classes_to_label(classes.numpy(), values)
    assert back.tolist() == lab.int().tolist() and back.dtype == np.uint16
    with pytest.raises(ValueError, match=r"x\.nii\.gz: label values \[7\] are not declared"):
        label_to_classes(torch.tensor([0.0, 7.0]), values, "x.nii.gz")


# ------------------------------------------------------------------------------ 2, 3. predict writes safely
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    ds = write_dataset(root / "ds")
    run = root / "run"
    train_and_test(_cfg(ds, run, spacing=[2.0, 2.0, 2.0]), test=False, progress=False)
    return ds, run


def test_predict_never_writes_onto_an_input(trained_run, tmp_path, capsys):
    ds, run = trained_run
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, src in enumerate(sorted((ds / "imagesTs").iterdir())):
        (scans / f"scan{i}.nii.gz").write_bytes(src.read_bytes())  # not named _0000: maps onto itself
    before = _digest(scans)
    for extra in ([], ["--overwrite"]):
        code = main(["predict", "--run", str(run), "--input", str(scans), "--output", str(scans), *extra])
        err = capsys.readouterr().err
        assert code == 2 and "would replace this input scan" in err and "--overwrite" not in err
        assert _digest(scans) == before


def test_predict_checks_every_input_before_writing_anything(trained_run, tmp_path, capsys):
    ds, run = trained_run
    scans = tmp_path / "scans"
    scans.mkdir()
    srcs = sorted((ds / "imagesTs").iterdir())
    (scans / "a_0000.nii.gz").write_bytes(srcs[0].read_bytes())
    (scans / "b_0000.nii.gz").write_bytes(b"not a volume")  # sorts in the middle
    (scans / "c_0000.nii.gz").write_bytes(srcs[1].read_bytes())
    out = tmp_path / "masks"
    assert main(["predict", "--run", str(run), "--input", str(scans), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "b_0000.nii.gz" in err and "nothing was written" in err
    assert not out.exists()  # no mask, and not even an empty folder
    (scans / "b_0000.nii.gz").unlink()
    assert main(["predict", "--run", str(run), "--input", str(scans), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "c.nii.gz"]


# ---------------------------------------------------------------------------------- 4, 5. resume and restart
def test_resume_refuses_conflicting_settings_and_names_each(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_dataset), "--out", str(run), "--no-test", "--lr", "1e-3", *TINY]) == 0
    saved = (run / "config.yaml").read_text()
    base = ["train", str(tiny_dataset), "--out", str(run), "--no-test", "--resume"]
    for flags, named in ((["--method", "erm"], "method"), (["--lr", "2e-4"], "lr"),  # 2e-4 is the default
                         (["--base-width", "4", "--seed", "3"], "base_width"), (["--mask-rate", "0.25"], "mask_rate")):
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert "--resume cannot change" in err and named in err, err
        if flags[0] == "--base-width":
            assert "seed" in err  # every conflicting setting is named
    assert (run / "config.yaml").read_text() == saved
    # a setting not given keeps its saved value (not the flag's default: --steps stays 2, not 250000)
    assert main(base) == 0
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 2
    # steps, device and workers may change; repeating a saved value is no conflict
    assert main([*base, "--steps", "4", "--device", "cpu", "--num-workers", "0", "--lr", "1e-3"]) == 0
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 4


def test_resume_on_a_moved_dataset_checks_it_gives_the_same_cases(tiny_dataset, tmp_path, capsys, caplog):
    """A dataset whose saved path is gone may have moved; the run resumes on it only if it still gives the
    training and validation cases the run started with (cases.json), and says that it moved."""
    import shutil

    run = tmp_path / "run"
    assert main(["train", str(tiny_dataset), "--out", str(run), "--no-test", *TINY]) == 0
    record = json.loads((run / "cases.json").read_text())
    assert record == {"train": [f"casetr{i:02d}" for i in range(4)], "val": ["caseval00"]}
    moved = tmp_path / "moved" / tiny_dataset.name
    shutil.move(tiny_dataset, moved)
    resume = ["train", str(moved), "--out", str(run), "--no-test", "--resume"]
    with caplog.at_level("WARNING", logger="maskgen"):
        assert main([*resume, "--steps", "3"]) == 0
    assert "is gone; resuming on" in caplog.text and str(tiny_dataset) in caplog.text
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 3
    assert json.loads((run / "cases.json").read_text()) == record
    # another dataset at the new path (one training case fewer, one more): refused, naming both cases
    for ext in ("imagesTr/casetr03_0000.nii.gz", "labelsTr/casetr03.nii.gz"):
        (moved / ext).rename(moved / ext.replace("casetr03", "casetr99"))
    before = _digest(run)
    assert main([*resume, "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "cases.json" in err and "no longer there casetr03" in err and "new casetr99" in err, err
    assert _digest(run) == before  # nothing written
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 3


def test_a_start_without_checkpoint_never_blocks_a_rerun(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    bad = ["train", str(tiny_dataset), "--out", str(run), "--method", "maskgen", "--extractor", "anatomix",
           "--extractor-weights", str(tmp_path / "missing.pth"), *TINY]
    assert main(bad) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert run.is_dir() and not (run / "checkpoint_latest.pt").exists()
    good = ["train", str(tiny_dataset), "--out", str(run), "--no-test", *TINY]
    assert main(good) == 0  # not "use --resume"
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 2
    # --resume on a folder whose start left no checkpoint starts from step 0 instead of refusing
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
        (run / name).unlink()
    assert main([*good, "--resume"]) == 0
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 2
    # a folder with anything else in it is still protected
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert main(["train", str(tiny_dataset), "--out", str(tmp_path / "other"), *TINY]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_a_kill_inside_the_starts_atomic_writes_never_blocks_a_rerun(tiny_dataset, tmp_path):
    """What a kill -9 in the middle of writing cases.json, config.yaml, the curves or the first checkpoints
    leaves (the benchmark's killed-cell test hit one in CI): the rerun starts, and clears the leftovers."""
    from maskgen.training.trainer import is_restartable

    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("")
    (run / "grad_check.csv").write_text("step,all\n")  # --grad-check-every's log, opened before step 1
    for name in ("cases.json", "config.yaml", "training_curves.png", "checkpoint_latest.pt"):
        # a process that dies (os._exit runs no cleanup, as kill -9) while its temporary file is half written
        code = ("import os, sys; from maskgen.io import atomic_write; "
                "atomic_write(sys.argv[1], lambda p: (p.write_text('half'), os._exit(9)))")
        assert subprocess.run([sys.executable, "-c", code, str(run / name)]).returncode == 9
    (run / "checkpoint_best.pt").write_text("the first best, written just before the first latest")
    left = sorted(p.name for p in run.iterdir())
    assert len(left) >= 6 and is_restartable(run), left
    assert main(["train", str(tiny_dataset), "--out", str(run), "--no-test", *TINY]) == 0
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 2
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    # a best checkpoint beside a latest one is a run to resume, not a failed start
    assert not is_restartable(run)


# ------------------------------------------------------------------------------------- 6, 7. file formats
def _convert(root: Path, ending: str) -> Path:
    from maskgen.data.volumes import save_like

    for p in root.rglob("*.nii.gz"):
        img = nib.load(p)
        data = np.asarray(img.dataobj)
        target = p.with_name(p.name[: -len(".nii.gz")] + ending)
        if ending in (".mgz", ".mgh"):
            nib.save(nib.MGHImage(data.astype(np.float32 if data.dtype.kind == "f" else np.int32), img.affine), target)
        else:
            save_like(data, img, target)  # NIfTI by nibabel, .mha / .nrrd by SimpleITK
        p.unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta["file_ending"] = ending
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("ending", [".mgz", ".nii", ".mha", ".nrrd"])
def test_every_accepted_format_trains_predicts_and_evaluates(tmp_path, ending):
    ds = _convert(write_dataset(tmp_path / "ds", n_train=3, n_val=1, n_test=2), ending)
    run = tmp_path / "run"
    res = train_and_test(_cfg(ds, run, spacing=[2.0, 2.0, 2.0]), progress=False)
    assert res["test_summary"]["n_cases"] == 2
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(run), "--input", str(ds / "imagesTs"), "--output", str(out)]) == 0
    for src in sorted((ds / "imagesTs").iterdir()):
        mask_path = out / src.name.replace("_0000", "")
        assert mask_path.is_file()  # written in the input's own format
        mask, inp = load_volume(mask_path), load_volume(src)
        assert mask.shape == inp.shape
        np.testing.assert_allclose(mask.affine, inp.affine, atol=1e-4)
    # evaluate takes the dataset's file ending (dataset.json next to the labels)
    assert main(["evaluate", "--pred", str(out), "--labels", str(ds / "labelsTs"), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n_cases"] == 2


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_simpleitk_formats_keep_the_world_geometry(tmp_path, ending):
    """An oblique, anisotropic, LPS-flipped grid: SimpleITK's LPS world equals nibabel's RAS world, voxel by voxel."""
    import SimpleITK as sitk

    from maskgen.data.volumes import save_like

    a = affine()
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    a[:3, :3] = rot @ a[:3, :3]
    data = np.random.default_rng(0).integers(0, 300, (7, 6, 5)).astype(np.int16)
    ref = nib.Nifti1Image(data, a)
    path = tmp_path / f"x{ending}"
    save_like(data, ref, path)
    back = load_volume(path)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, a, atol=1e-6)
    img = sitk.ReadImage(str(path))  # what SimpleITK itself says: voxel (i, j, k) at this LPS point
    lps = np.array(img.TransformIndexToPhysicalPoint((3, 2, 1)))
    ras = a @ np.array([3, 2, 1, 1.0])
    np.testing.assert_allclose(lps, ras[:3] * np.array([-1, -1, 1]), atol=1e-6)


def test_evaluate_missing_predictions_is_an_error_naming_them(trained_run, tmp_path, capsys):
    ds, run = trained_run
    out = tmp_path / "pred"
    one = sorted((ds / "imagesTs").iterdir())[0]
    assert main(["predict", "--run", str(run), "--input", str(one), "--output", str(out)]) == 0
    assert main(["evaluate", "--pred", str(out), "--labels", str(ds / "labelsTs")]) == 2
    assert "casets01.nii.gz" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(out), "--labels", str(ds / "labelsTs"), "--allow-missing"]) == 0
    assert json.loads((out / "summary.json").read_text())["unscored_cases"] == ["casets01"]


# ------------------------------------------------------------------------------------ 9, 10. configuration
@pytest.mark.parametrize("text, what", [("", "empty"), ("method: [erm\n", "unreadable"), ("- 1\n", "list")])
def test_corrupt_config_names_the_file(trained_run, tmp_path, text, what):
    _, run = trained_run
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "checkpoint_best.pt").write_bytes((run / "checkpoint_best.pt").read_bytes())
    (broken / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match=rf"{broken / 'config.yaml'}.*{what}"):
        Predictor(broken)


def test_config_records_absolute_paths_and_resolved_hyperparameters(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_dataset.parent)
    train_and_test(_cfg(tiny_dataset.name, "run", method="maskgen"), test=False, progress=False)
    cfg = yaml.safe_load((tiny_dataset.parent / "run" / "config.yaml").read_text())
    assert cfg["dataset"] == str(tiny_dataset) and cfg["out"] == str(tiny_dataset.parent / "run")
    assert cfg["hparams"] == {"mask_rate": 0.5, "mask_mode": "rescale", "mask_unit": "channel", "image_norm": "none"}  # defaults recorded
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    train_and_test(_cfg(tiny_dataset, tiny_dataset.parent / "run", method="maskgen", steps=4), resume=True,
                   test=False, progress=False)
    Predictor(tiny_dataset.parent / "run")


def test_unknown_hyperparameter_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="method 'erm' has no hyper-parameter 'mask_rate'"):
        train_and_test(_cfg(tiny_dataset, tmp_path / "run", hparams={"mask_rate": 0.3}), progress=False)
    (tmp_path / "cfg.yaml").write_text("dataset: x\nout: y\nbogus: 1\n")
    with pytest.raises(ValueError, match="unknown configuration keys"):
        TrainConfig.load(tmp_path / "cfg.yaml")


def test_method_diagnostics_are_logged(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train_and_test(_cfg(tiny_dataset, run, method="mixup", hparams={"mixup_prob": 1.0}), test=False, progress=False)
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["step", "loss", "lr", "val_dice", "seconds"] and "mixup_lam" in header
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert all(0.0 <= float(r[header.index("mixup_lam")]) <= 1.0 for r in rows)


# -------------------------------------------------------------------------------------- 11. file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = atomic_write_text(tmp_path / "a.txt", "x")
        q = atomic_torch_save({"a": 1}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == mode and stat.S_IMODE(q.stat().st_mode) == mode


# ----------------------------------------------------------------------------------------- 12. warnings
def test_constant_image_and_unlearnable_class_warn(tmp_path):
    ds = write_dataset(tmp_path / "ds", n_train=2, n_val=0, n_test=0)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"]["tumour"] = 3
    (ds / "dataset.json").write_text(json.dumps(meta))
    first = sorted((ds / "imagesTr").iterdir())[0]
    nib.save(nib.Nifti1Image(np.zeros((22, 20, 14), np.float32), affine()), first)
    with pytest.warns(UserWarning) as record:
        load_dataset(ds)
    text = "\n".join(str(w.message) for w in record)
    assert f"{first}: " in text and "image is constant" in text
    assert "tumour=3" in text and "no training label" in text


# ------------------------------------------------------------------------------------- 13. durability
def test_checkpoints_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    import maskgen.io as io_mod

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io_mod.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(io_mod.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "checkpoint_latest.pt")
    assert events[:2] == ["fsync", "replace"]  # the data, then the rename (then the folder)
    assert torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)["w"].sum() == 3


def test_torchscript_extractor_is_documented_as_trusted_only(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "torchscript" in help_text and "trusted" in help_text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "torchscript" in readme and "trusted" in readme


# ----------------------------------------------------------------------------- one split-file contract
@pytest.mark.parametrize("form", ["json_list", "json_map", "csv_capitalised"])
def test_train_and_evaluate_read_the_same_split_files(trained_run, tmp_path, form):
    from maskgen.evaluation.evaluate import read_splits

    ds, _ = trained_run
    cases = {"casetr00": "train", "casetr01": "train", "casetr02": "train", "casetr03": "train",
             "caseval00": "val", "casets00": "test", "casets01": "test"}
    domain = {c: ("siteB" if s == "test" else "siteA") for c, s in cases.items()}
    path = tmp_path / ("splits.json" if form.startswith("json") else "splits.csv")
    if form == "json_list":
        path.write_text(json.dumps([{"case": c, "split": s, "domain": domain[c]} for c, s in cases.items()]))
    elif form == "json_map":
        path.write_text(json.dumps({c: {"split": s, "domain": domain[c]} for c, s in cases.items()}))
    else:
        path.write_text("Case,Split,Domain\n" + "".join(f"{c},{s},{domain[c]}\n" for c, s in cases.items()))
    spec = load_dataset(ds, splits_file=path, check=False)
    assert {c.case_id: c.domain for c in spec.cases} == domain
    assert read_splits(path) == domain


# ------------------------------------------------------------------------ test-time mirroring (--mirror)
def test_mirroring_averages_all_flips_so_the_output_is_flip_equivariant(trained_run, tmp_path):
    from maskgen.inference.predict import MIRROR_FLIPS

    _, run = trained_run
    assert len(set(MIRROR_FLIPS)) == 8
    torch.manual_seed(0)
    image = torch.rand(1, 16, 16, 12)
    plain, mirrored = Predictor(run), Predictor(run, mirror=True)
    for axis in (1, 2, 3):
        flipped = torch.flip(image, [axis])
        np.testing.assert_allclose(mirrored.window_probs(flipped).numpy(),
                                   torch.flip(mirrored.window_probs(image), [axis]).numpy(), atol=1e-5)
    p = mirrored.window_probs(image)
    np.testing.assert_allclose(p.sum(0).numpy(), 1.0, atol=1e-5)
    # the average of the eight flipped predictions, computed here by hand
    by_hand = sum(torch.flip(plain.window_probs(torch.flip(image, [a + 1 for a in f])), [a + 1 for a in f])
                  for f in MIRROR_FLIPS) / 8
    np.testing.assert_allclose(p.numpy(), by_hand.numpy(), atol=1e-6)
    assert not torch.allclose(plain.window_probs(image), p, atol=1e-4)  # it does change the answer
    out = tmp_path / "m"
    src = sorted((trained_run[0] / "imagesTs").iterdir())[0]
    assert main(["predict", "--run", str(run), "--input", str(src), "--output", str(out), "--mirror"]) == 0
    assert len(list(out.iterdir())) == 1


# ------------------------------------------------------------------ rerun from config, caller's logging
def test_train_config_reruns_a_run_exactly_and_flags_override_it(tiny_dataset, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["train", str(tiny_dataset), "--out", str(a), "--no-test", "--method", "maskgen", "--mask-rate",
                 "0.25", "--seed", "3", "--lr", "1e-3", *TINY]) == 0
    assert main(["train", "--config", str(a / "config.yaml"), "--out", str(b), "--no-test"]) == 0
    ca, cb = (yaml.safe_load((r / "config.yaml").read_text()) for r in (a, b))
    assert {**ca, "out": None} == {**cb, "out": None} and cb["out"] == str(b)

    def losses(run):
        return [row.split(",")[1] for row in (run / "log.csv").read_text().splitlines()[1:]]

    assert losses(a) == losses(b)  # same settings, same seed: the same run, step by step
    assert main(["train", "--config", str(a / "config.yaml"), "--out", str(c), "--no-test", "--lr", "5e-4"]) == 0
    cc = yaml.safe_load((c / "config.yaml").read_text())
    assert cc["lr"] == 5e-4 and cc["hparams"]["mask_rate"] == 0.25 and cc["seed"] == 3
    # rerunning into the saved folder itself is refused like any existing run folder
    assert main(["train", "--config", str(a / "config.yaml"), "--no-test"]) == 2


def test_training_leaves_the_callers_logging_alone(tiny_dataset, tmp_path, capsys):
    import logging

    root, pkg = logging.getLogger(), logging.getLogger("maskgen")
    before = (root.level, list(root.handlers), pkg.level, list(pkg.handlers))
    run = tmp_path / "run"
    train_and_test(_cfg(tiny_dataset, run), test=False, progress=False)
    assert (root.level, list(root.handlers), pkg.level, list(pkg.handlers)) == before
    text = (run / "train.log").read_text()
    assert "method=erm" in text and "step 2 loss" in text  # the run's own log still has everything


def test_detached_header_inputs_get_single_file_masks(trained_run, tmp_path):
    from maskgen.data.volumes import save_like

    ds, run = trained_run
    scans = tmp_path / "scans"
    scans.mkdir()
    src = sorted((ds / "imagesTs").iterdir())[0]
    img = nib.load(src)
    save_like(np.asarray(img.dataobj), img, scans / "a_0000.mhd")
    out = tmp_path / "masks"
    assert main(["predict", "--run", str(run), "--input", str(scans), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.mha"]
    np.testing.assert_allclose(load_volume(out / "a.mha").affine, img.affine, atol=1e-5)
