"""``maskgen analyze views``: Dice with all inputs equals the plain test Dice; each source can be masked."""

from __future__ import annotations

import csv
import json

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
