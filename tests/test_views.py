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
