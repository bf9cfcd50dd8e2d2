"""The demo end to end on a tiny budget: files written, rerun resumes without retraining, no silent overwrite."""

from __future__ import annotations

import json

import pytest

from maskgen.demo import DemoSettings, run_demo
from maskgen.io import OutputExistsError


def _tiny(**kw):
    base = dict(shape=(32, 32, 32), spacing=(4.0, 4.0, 4.0), n_train=2, n_val=1, n_test=1, steps=3, val_every=3,
                batch_size=1, patch_size=(32, 32, 32), base_width=2, n_poolings=2, num_workers=0)
    base.update(kw)
    return DemoSettings(**base)


def test_demo_writes_results_and_figures_then_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    results = run_demo(out, settings=_tiny(), device="cpu", progress=False)
    assert set(results) == {"erm", "maskgen"}
    for m in results.values():
        assert {"T1w", "T2w", "PDw", "FLAIR", "CT", "in-domain (all)", "unseen (all)"} <= set(m)
        assert all(0.0 <= v["mean"] <= 1.0 for v in m.values())
    for name in ("results.csv", "results.json", "results.txt", "dice_by_domain.png", "demo.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("overlay_*.png"))
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("method,seed,case,domain")
    assert len(rows) == 1 + 2 * 5  # two arms x one test subject x five domains
    table = capsys.readouterr().out
    assert "unseen (all)" in table and "T1w *" in table
    assert "erm_seed0: best " in table and "maskgen_seed0: best " in table and "last-quarter gain" in table
    assert ("nothing learned" in table) == any(c["best_val_dice"] == 0.0 for c in json.loads((out / "convergence.json").read_text()).values())
    convergence = json.loads((out / "convergence.json").read_text())
    assert set(convergence) == {"erm_seed0", "maskgen_seed0"}
    assert all(0.0 <= c["best_val_dice"] <= 1.0 and c["best_step"] == 3 for c in convergence.values())
    assert (out / "logs" / "erm_seed0.log").is_file() and (out / "logs" / "maskgen_seed0.log").is_file()

    ckpt = out / "runs" / "maskgen_seed0" / "checkpoint_best.pt"
    mtime = ckpt.stat().st_mtime_ns
    run_demo(out, settings=_tiny(), device="cpu", progress=False)  # finished runs are not retrained
    assert ckpt.stat().st_mtime_ns == mtime
    assert json.loads((out / "results.json").read_text()).keys() == results.keys()

    with pytest.raises(OutputExistsError, match=r"other settings \(steps: 3 there, 5 now\)"):
        run_demo(out, settings=_tiny(steps=5), device="cpu", progress=False)


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="not a maskgen demo folder"):
        run_demo(tmp_path, settings=_tiny(), device="cpu", progress=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_demo_budget_and_mask_rate_overrides_reach_every_run(tmp_path):
    from maskgen.demo import FULL
    from maskgen.runtime.config import TrainConfig

    before = (FULL.steps, FULL.val_every, dict(FULL.arms), FULL.seeds)
    out = tmp_path / "demo"
    run_demo(out, settings=_tiny(), device="cpu", progress=False, steps=4, val_every=2, mask_rate=0.25, seeds=[1],
             patch_size=[8, 8, 8])
    erm = TrainConfig.load(out / "runs" / "erm_seed1" / "config.yaml")
    mg = TrainConfig.load(out / "runs" / "maskgen_seed1" / "config.yaml")
    assert (erm.steps, erm.val_every, mg.steps, mg.val_every) == (4, 2, 4, 2)
    assert mg.hparams["mask_rate"] == 0.25 and "mask_rate" not in erm.hparams
    assert list(erm.patch_size) == list(mg.patch_size) == [8, 8, 8]
    assert json.loads((out / "demo.json").read_text())["settings"]["steps"] == 4
    assert (FULL.steps, FULL.val_every, dict(FULL.arms), FULL.seeds) == before  # the preset is not mutated


@pytest.mark.parametrize("kw, msg", [({"steps": 0}, "--steps"), ({"val_every": -1}, "--val-every"),
                                     ({"mask_rate": 1.0}, "--mask-rate"), ({"patch_size": [10, 8, 8]}, "--patch-size"),
                                     ({"jobs": 0}, "--jobs")])
def test_demo_rejects_bad_budgets_before_writing(tmp_path, kw, msg):
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=msg):
        run_demo(out, settings=_tiny(), device="cpu", progress=False, **kw)
    assert not out.exists()


def test_demo_in_one_process_draws_its_bar_on_the_terminal_not_in_the_run_log(tmp_path, capsys):
    out = tmp_path / "demo"
    run_demo(out, settings=_tiny(), device="cpu", progress=True, jobs=1)
    err = capsys.readouterr().err
    assert "train erm_seed0, maskgen_seed0" in err and "6/6" in err  # one bar over both arms' steps
    log = (out / "logs" / "erm_seed0.log").read_text()
    assert "cell " in log and "train erm_seed0, maskgen_seed0" not in log


def test_the_default_demo_is_its_benchmark_config_at_the_p_validation_chose():
    """The demo's preset and configs/benchmark/phantom_demo.yaml cannot drift apart, and MaskGen's p is the
    grid point the committed export of that benchmark selected on validation (the paper's rule)."""
    from pathlib import Path

    from maskgen.benchmark.config import load_benchmark_config
    from maskgen.demo import FULL

    root = Path(__file__).resolve().parents[1]
    cfg = load_benchmark_config(root / "configs" / "benchmark" / "phantom_demo.yaml")
    phantom = cfg.datasets[0].phantom
    assert (list(phantom["shape"]), list(phantom["spacing"])) == (list(FULL.shape), list(FULL.spacing))
    assert (phantom["n_train"], phantom["n_val"], phantom["n_test"]) == (FULL.n_train, FULL.n_val, FULL.n_test)
    for key in ("steps", "val_every", "lr", "batch_size", "base_width", "n_poolings", "extractor"):
        assert cfg.train[key] == getattr(FULL, key), key
    assert list(cfg.train["patch_size"]) == list(FULL.patch_size)
    assert list(cfg.train["spacing"]) == list(FULL.spacing)
    table = json.loads((root / "docs" / "results" / "benchmark_phantom_demo" / "table.json").read_text())
    chosen = next(s for s in table["selections"] if s["arm"] == "maskgen")
    assert len(chosen["candidates"]) == 3  # the whole grid {0.25, 0.5, 0.75} had finished
    assert FULL.arms["maskgen"][1]["mask_rate"] == chosen["point"]["mask_rate"]
