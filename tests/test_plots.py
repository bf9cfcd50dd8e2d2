"""Each plot writes a readable, non-empty PNG; the overlay shows the slice with most foreground."""

import csv

import numpy as np
import pytest
from matplotlib.image import imread

from maskgen.evaluation.plots import most_foreground_slice, plot_domain_bars, plot_overlay
from maskgen.training.curves import plot_training_curves, plot_validation_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0  # something was drawn
    assert not list(path.parent.glob(".*"))  # no temporary files left behind
    return img


def test_domain_bars(tmp_path):
    results = {
        "erm": {"siteA": (0.9, 0.01), "siteB": (0.6, 0.05), "siteC": (0.5, None)},
        "maskgen": {"siteA": (0.88, 0.02), "siteB": (0.75, 0.04)},  # missing domain -> no bar
    }
    out = plot_domain_bars(results, tmp_path / "bars.png", title="Dice by domain", in_domain=["siteA"])
    assert out == tmp_path / "bars.png"
    _check_png(out)
    with pytest.raises(ValueError):
        plot_domain_bars({}, tmp_path / "empty.png")


def _volumes():
    shape = (16, 14, 12)
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape)
    gt = np.zeros(shape, np.int64)
    gt[4:10, 3:9, 2:5] = 1
    gt[5:8, 4:8, 7] = 2  # slice 7 on axis 2 has fewer voxels than slices 2..4
    gt[3:13, 2:12, 3] = 1  # slice 3 on axis 2: the most foreground
    pred = np.roll(gt, 1, axis=0)
    return image, gt, pred


def test_most_foreground_slice():
    _, gt, _ = _volumes()
    assert most_foreground_slice(gt, axis=2) == 3
    counts = [np.count_nonzero(gt[i]) for i in range(gt.shape[0])]
    assert most_foreground_slice(gt, axis=0) == int(np.argmax(counts))
    assert most_foreground_slice(np.zeros((4, 5, 6)), axis=2) == 3


def test_overlay_uses_most_foreground_slice(tmp_path):
    image, gt, pred = _volumes()
    preds = {"erm": pred, "maskgen": gt}
    auto = plot_overlay(image, gt, preds, tmp_path / "auto.png", title="case 1")
    img_auto = _check_png(auto)
    img_fixed = imread(plot_overlay(image, gt, preds, tmp_path / "fixed.png", title="case 1", slice_index=3))
    img_other = imread(plot_overlay(image, gt, preds, tmp_path / "other.png", title="case 1", slice_index=7))
    assert img_auto.shape == img_fixed.shape and np.array_equal(img_auto, img_fixed)
    assert img_auto.shape != img_other.shape or not np.array_equal(img_auto, img_other)
    with pytest.raises(ValueError, match="shape"):
        plot_overlay(image, gt[:-1], preds, tmp_path / "bad.png")


def test_training_curves(tmp_path):
    log = tmp_path / "log.csv"
    with log.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "lr", "val_dice", "seconds"])
        for step in range(1, 201):
            val = f"{min(0.9, step / 200):.5f}" if step % 50 == 0 else ""
            w.writerow([step, f"{1.0 / step + 0.05 * np.sin(step):.6f}", "1.000e-03", val, "0.1"])
        w.writerow([200, "0.01", "1.000e-03", "nan", "0.1"])  # a resumed duplicate step; NaN Dice
    out = plot_training_curves(log, tmp_path / "curves.png", title="run")
    _check_png(out)

    short = tmp_path / "short.csv"
    short.write_text("step,loss,lr,val_dice\n1,0.9,1e-3,\n")
    _check_png(plot_training_curves(short, tmp_path / "short.png"))

    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,0.9\n")
    with pytest.raises(ValueError, match="val_dice"):
        plot_training_curves(bad, tmp_path / "bad.png")


def test_validation_curves_of_several_runs(tmp_path):
    logs = {}
    for name, top in (("erm", 0.9), ("maskgen", 0.8)):
        log = tmp_path / f"{name}.csv"
        rows = ["step,loss,lr,val_dice,seconds"]
        rows += [f"{s},0.5,1e-3,{top * s / 400 if s % 100 == 0 else ''},0.1" for s in range(1, 401)]
        log.write_text("\n".join(rows) + "\n")
        logs[name] = log
    _check_png(plot_validation_curves(logs, tmp_path / "val.png", title="val"))
    with pytest.raises(FileNotFoundError, match="missing.csv.*'gone'"):
        plot_validation_curves({"gone": tmp_path / "missing.csv"}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no runs"):
        plot_validation_curves({}, tmp_path / "x.png")
