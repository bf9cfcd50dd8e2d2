"""maskgen benchmark: the protocol's arithmetic on known numbers, then a tiny benchmark end to end
(resume without retraining, a changed config refused, 2 jobs = 1 job, a killed runner resumed, submitit)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from maskgen.benchmark.config import load_benchmark_config
from maskgen.benchmark.per_domain import format_per_domain, per_domain_stats
from maskgen.benchmark.runner import run_benchmark
from maskgen.benchmark.selection import (
    CellResult,
    average_ranks,
    paired_difference,
    select,
    subject_scores,
    summarize_groups,
)

TINY = {
    "datasets": {"phantom": {"phantom": {"shape": [32, 32, 32], "spacing": [4.0, 4.0, 4.0], "n_train": 2, "n_val": 1,
                                         "n_test": 2}}},
    "train": {"steps": 4, "val_every": 2, "batch_size": 2, "patch_size": [16, 16, 16], "base_width": 2,
              "n_poolings": 2, "convs_per_level": 1, "num_workers": 0},
    "methods": {"erm": {"seeds": [0, 1]}, "maskgen": {"grid": {"mask_rate": [0.25, 0.5]}, "seeds": [0]}},
}


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------- the arithmetic
def test_ranks_share_the_mean_rank_on_ties_and_put_missing_scores_last():
    assert average_ranks({"a": 0.5, "b": 0.7, "c": 0.5, "d": 0.1}) == {"b": 1.0, "a": 2.5, "c": 2.5, "d": 4.0}
    assert average_ranks({"a": 0.3, "b": 0.3, "c": 0.3}) == {"a": 2.0, "b": 2.0, "c": 2.0}
    assert average_ranks({"a": math.nan, "b": 0.2}) == {"b": 1.0, "a": 2.0}


def _cell(point, seed, val, done=True):
    return CellResult("d", "m", point, seed, val, [], done)


def test_selection_mean_rule_picks_the_best_seed_average():
    cells = [_cell({"p": 0.25}, 0, 0.80), _cell({"p": 0.25}, 1, 0.60),  # mean 0.70
             _cell({"p": 0.5}, 0, 0.75), _cell({"p": 0.5}, 1, 0.71),  # mean 0.73 <- best on average
             _cell({"p": 0.75}, 0, 0.90), _cell({"p": 0.75}, 1, 0.10)]  # best single seed, mean 0.50
    sel = select(cells, "mean")
    assert sel.point == {"p": 0.5} and sel.seeds == [0, 1] and sel.val_dice == pytest.approx(0.73)
    assert sel.complete and len(sel.candidates) == 3


def test_selection_best_rule_keeps_the_best_seed():
    cells = [_cell({"w": 1}, 0, 0.5), _cell({"w": 1}, 1, 0.2), _cell({"w": 10}, 0, 0.4), _cell({"w": 10}, 1, 0.6)]
    sel = select(cells, "best")
    assert sel.point == {"w": 10} and sel.seeds == [1] and sel.val_dice == 0.6


def test_selection_compares_grid_points_on_the_seeds_all_have_finished_and_says_it_is_incomplete():
    cells = [_cell({"p": 0.25}, 0, 0.5), _cell({"p": 0.25}, 1, 0.95), _cell({"p": 0.5}, 0, 0.9),
             _cell({"p": 0.5}, 1, math.nan, done=False), _cell({"p": 0.75}, 0, math.nan, done=False)]
    sel = select(cells, "mean")  # seed 0 only: 0.5 against 0.9 (p = 0.25's seed 1 does not count yet)
    assert sel.point == {"p": 0.5} and sel.seeds == [0] and not sel.complete
    assert select([_cell({}, 0, math.nan, done=False)], "mean") is None


def test_subject_scores_average_seeds_per_case_then_cases_per_subject():
    subjects = {"s1_A": "s1", "s1_B": "s1", "s2_A": "s2", "s2_B": "s2"}
    rows = {0: [{"case": "s1_A", "domain": "A", "mean_dice": 0.8}, {"case": "s1_B", "domain": "B", "mean_dice": 0.2},
                {"case": "s2_A", "domain": "A", "mean_dice": 0.6}, {"case": "s2_B", "domain": "B", "mean_dice": 0.4}],
            1: [{"case": "s1_A", "domain": "A", "mean_dice": 0.6}, {"case": "s1_B", "domain": "B", "mean_dice": 0.4},
                {"case": "s2_A", "domain": "A", "mean_dice": 0.6}, {"case": "s2_B", "domain": "B", "mean_dice": 0.0}]}
    scores = subject_scores(rows, subjects, in_domains={"A"})
    assert scores["in-domain"] == pytest.approx({"s1": 0.7, "s2": 0.6})
    assert scores["out-of-domain"] == pytest.approx({"s1": 0.3, "s2": 0.2})
    stat = summarize_groups(scores)["in-domain"]
    assert stat["mean"] == pytest.approx(0.65) and stat["n"] == 2
    assert stat["se"] == pytest.approx(0.05)  # std (ddof 1) of 0.7, 0.6 is 0.0707; / sqrt(2)
    diff = paired_difference({"s1": 0.9, "s2": 0.5, "s3": 0.4}, {"s1": 0.7, "s2": 0.6})
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(0.05) and diff["se"] == pytest.approx(0.15)


# ------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize("change, message", [
    (lambda c: c["methods"].update(nope={}), "methods.nope: unknown method 'nope'"),
    (lambda c: c["methods"]["maskgen"]["grid"].update(maskrate=[0.1]), "has no hyper-parameter 'maskrate'"),
    (lambda c: c["train"].update(seed=3), "'train' has keys that are not training settings: ['seed']"),
    (lambda c: c["methods"]["erm"].update(seeds=[0, 0]), "methods.erm.seeds must be a list of distinct"),
    (lambda c: c.update(reference="gin"), "reference arm 'gin' is not among the methods"),
    (lambda c: c["datasets"].update(real={"path": "missing_folder"}), "has no dataset.json"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, change, message):
    cfg = json.loads(json.dumps(TINY))
    change(cfg)
    path = _write(tmp_path / "bench.yaml", cfg)
    with pytest.raises(ValueError) as err:
        load_benchmark_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    config = _write(root / "tiny.yaml", TINY)
    report = run_benchmark(config, root / "one", jobs=1, threads=1, progress=False)
    return root, config, report


def _mtimes(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "cells").rglob("checkpoint_*.pt")}


def test_benchmark_writes_the_report_with_the_selection(finished):
    root, _, report = finished
    out = root / "one"
    for name in ("table.md", "table.csv", "table.json", "sweep.md", "sweep.csv", "per_case.csv", "per_domain.md",
                 "per_domain.csv", "dice_phantom.png", "average_rank.png", "validation_phantom.png", "benchmark.yaml"):
        assert (out / name).is_file(), name
    arms = report["datasets"]["phantom"]["arms"]
    assert set(arms) == {"erm", "maskgen"}
    assert arms["erm"]["seeds"] == [0, 1] and arms["maskgen"]["seeds"] == [0]
    assert arms["maskgen"]["point"]["mask_rate"] in (0.25, 0.5)
    vals = {c["point"]["mask_rate"]: c["val_dice"] for s in report["selections"] if s["arm"] == "maskgen"
            for c in s["candidates"]}
    assert report["selections"][1]["val_dice"] == max(vals.values())
    # 2 test subjects, each in 5 domains: in-domain over 2 subjects, out-of-domain over the same 2
    assert arms["erm"]["groups"]["in-domain"]["n"] == 2 and arms["erm"]["groups"]["out-of-domain"]["n"] == 2
    assert arms["erm"]["paired_vs_reference"] is None and arms["maskgen"]["paired_vs_reference"]["out-of-domain"]["n"] == 2
    assert sorted(report["average_rank"]) == ["erm", "maskgen"]
    assert report["cells"] == {"total": 4, "done": 4}
    per_case = (out / "per_case.csv").read_text().splitlines()
    assert len(per_case) == 1 + 10 * 2 + 10  # erm: 2 seeds x 10 cases; maskgen: 1 seed x 10 cases
    assert "| erm |" in (out / "table.md").read_text()
    by_domain = list(csv.DictReader((out / "per_domain.csv").open()))
    assert len(by_domain) == 2 * 5 and {r["n_subjects"] for r in by_domain} == {"2"}  # 2 arms x 5 domains
    erm_t1 = [float(r["mean_dice"]) for r in csv.DictReader((out / "per_case.csv").open())
              if r["arm"] == "erm" and r["domain"] == "T1w"]  # 2 seeds x 2 subjects: the mean of all four
    row = next(r for r in by_domain if r["arm"] == "erm" and r["domain"] == "T1w")
    assert float(row["mean"]) == pytest.approx(sum(erm_t1) / 4)
    assert "| method | T1w * |" in (out / "per_domain.md").read_text()  # the in-domain column first, marked


def test_per_domain_averages_seeds_per_subject_then_subjects():
    rows = [{"dataset": "d", "arm": "a", "subject": s, "domain": dom, "in_domain": dom == "A", "mean_dice": v}
            for s, dom, v in [("s1", "A", 0.8), ("s1", "A", 0.6), ("s2", "A", 0.6), ("s1", "B", 0.2), ("s2", "B", 0.0)]]
    stats = per_domain_stats(rows)["d"]["a"]
    assert list(stats) == ["A", "B"]
    assert stats["A"]["mean"] == pytest.approx(0.65) and stats["A"]["se"] == pytest.approx(0.05)  # s1 0.7, s2 0.6
    assert stats["B"]["mean"] == pytest.approx(0.1) and stats["B"]["n"] == 2
    text = format_per_domain({"d": {"a": stats}}, ["a", "missing"], {"d": ["A"]})
    assert "| method | A * | B |" in text and "| a | 0.650 ± 0.050 | 0.100 ± 0.100 |" in text
    assert "missing" not in text


def test_rerun_trains_nothing_and_a_changed_setting_is_refused_by_name(finished):
    root, config, report = finished
    out = root / "one"
    before = _mtimes(out)
    again = run_benchmark(config, out, jobs=1, threads=1, progress=False)
    assert _mtimes(out) == before
    assert again["datasets"] == report["datasets"]
    changed = json.loads(json.dumps(TINY))
    changed["train"]["steps"] = 6
    changed["methods"]["maskgen"]["hparams"] = {"mask_mode": "zero"}
    with pytest.raises(ValueError) as err:
        run_benchmark(_write(root / "changed.yaml", changed), out, progress=False)
    msg = str(err.value)
    assert "phantom/erm/default/seed0" in msg and "steps: 4 -> 6" in msg and "mask_mode: 'rescale' -> 'zero'" in msg
    assert _mtimes(out) == before


def test_two_parallel_jobs_give_the_same_table(finished):
    root, config, report = finished
    two = run_benchmark(config, root / "two", jobs=2, threads=1, progress=False)
    assert two["datasets"] == report["datasets"]
    assert two["average_rank"] == report["average_rank"]


def test_a_killed_benchmark_resumes_without_retraining_finished_cells(finished, tmp_path):
    root, config, report = finished
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "maskgen.cli", "benchmark", str(config), "--out", str(out), "--threads", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "cells" / "phantom" / "erm" / "default" / "seed0" / "test" / "summary.json"
    deadline = time.time() + 120
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.is_file(), "the first cell never finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {k: v for k, v in _mtimes(out).items() if k.startswith("cells/phantom/erm/default/seed0/")}
    assert done_before
    resumed = run_benchmark(config, out, threads=1, progress=False)
    after = _mtimes(out)
    assert all(after[k] == v for k, v in done_before.items())  # the finished cell was not retrained
    assert resumed["cells"] == {"total": 4, "done": 4}
    assert resumed["datasets"] == report["datasets"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_stop_when_the_runner_is_killed(finished, tmp_path):
    _, config, _ = finished
    cmd = [sys.executable, "-m", "maskgen.cli", "benchmark", str(config), "--out", str(tmp_path / "orphans"),
           "--jobs", "2", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def session_members() -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != proc.pid:
                try:
                    if os.getsid(int(d.name)) == proc.pid and " Z " not in (d / "stat").read_text():
                        pids.append(int(d.name))
                except (OSError, ProcessLookupError):
                    pass
        return pids

    deadline = time.time() + 120
    while not list((tmp_path / "orphans").glob("cells/*/*/*/*/log.csv")) and time.time() < deadline:
        time.sleep(0.2)
    assert session_members(), "no worker started"
    proc.kill()  # the runner alone: its workers must notice and stop (they would train on, outside the lock)
    proc.wait()
    deadline = time.time() + 30
    while session_members() and time.time() < deadline:
        time.sleep(0.5)
    left = session_members()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} worker process(es) went on after the runner was killed"


def test_submitit_local_executor_runs_the_same_cells(finished, tmp_path):
    pytest.importorskip("submitit")
    root, _, report = finished
    cfg = json.loads(json.dumps(TINY))
    cfg["methods"] = {"erm": {"seeds": [0]}}
    config = _write(tmp_path / "one_cell.yaml", cfg)
    got = run_benchmark(config, tmp_path / "sub", executor="submitit-local", progress=False)
    local = run_benchmark(config, tmp_path / "loc", threads=1, progress=False)
    assert got["cells"] == {"total": 1, "done": 1}
    assert (tmp_path / "sub" / "submitit").is_dir()
    erm_sub, erm_loc = (r["datasets"]["phantom"]["arms"]["erm"] for r in (got, local))
    assert erm_sub["val_dice"] == erm_loc["val_dice"]


@pytest.mark.parametrize("name", ["phantom_cpu.yaml", "paper.yaml", "paper_fewshot.yaml"])
def test_shipped_configs_parse(tmp_path, name):
    """The shipped configs are valid (the paper's datasets swapped for a phantom, which is not at hand)."""
    from maskgen.benchmark.config import parse_benchmark_config

    path = Path(__file__).resolve().parents[1] / "configs" / "benchmark" / name
    raw = yaml.safe_load(path.read_text())
    if "phantom" not in raw["datasets"]:
        raw["datasets"] = {"phantom": TINY["datasets"]["phantom"]}
    cfg = parse_benchmark_config(raw, path)
    names = [a.name for a in cfg.arms]
    assert "erm" in names and "maskgen" in names
    maskgen = next(a for a in cfg.arms if a.name == "maskgen")
    assert maskgen.grid == {"mask_rate": [0.25, 0.5, 0.75]}
    gin_ipa = next(a for a in cfg.arms if a.name == "gin_ipa")
    assert gin_ipa.seed_rule == "best" and len(gin_ipa.seeds) == 3
    if name.startswith("paper"):
        assert cfg.train["steps"] == (40_000 if "fewshot" in name else 250_000)
        assert cfg.train["extractor_weights"] == str(path.parent / "weights" / "anatomix.pth")
        assert cfg.few_shot_subjects == (5 if "fewshot" in name else None)


@pytest.mark.parametrize("name, variant, channels", [("phantom_two_channel.yaml", None, ["T1w", "CT"]),
                                                      ("phantom_texture.yaml", "texture", None)])
def test_the_phantom_variant_configs_parse(name, variant, channels):
    from maskgen.benchmark.config import parse_benchmark_config

    path = Path(__file__).resolve().parents[1] / "configs" / "benchmark" / name
    cfg = parse_benchmark_config(yaml.safe_load(path.read_text()), path)
    (entry,) = cfg.datasets
    assert entry.phantom.get("variant") == variant and entry.phantom.get("channels") == channels
    assert "erm" in [a.name for a in cfg.arms]


def test_a_methods_relative_weights_path_is_read_against_the_config_folder(tmp_path):
    """As at the top level: a cell must find the file whatever folder the benchmark is started from."""
    from maskgen.benchmark.config import parse_benchmark_config

    raw = json.loads(json.dumps(TINY))
    raw["methods"]["erm"]["train"] = {"extractor_weights": "weights/synth.pt"}
    cfg = parse_benchmark_config(raw, tmp_path / "configs" / "bench.yaml")
    erm = next(a for a in cfg.arms if a.name == "erm")
    assert erm.train["extractor_weights"] == str(tmp_path / "configs" / "weights" / "synth.pt")
    texture = Path(__file__).resolve().parents[1] / "configs" / "benchmark" / "phantom_texture.yaml"
    cfg = parse_benchmark_config(yaml.safe_load(texture.read_text()), texture)
    weights = [a.train["extractor_weights"] for a in cfg.arms if "extractor_weights" in a.train]
    assert weights and all(Path(w).is_file() for w in weights)


def test_a_dataset_preset_is_read_and_its_own_train_settings_win(tmp_path):
    from maskgen.benchmark.config import parse_benchmark_config

    (tmp_path / "preset.yaml").write_text("spacing: [1.0, 1.0, 1.5]\npatch_size: [192, 192, 128]\nflips: false\n")
    raw = json.loads(json.dumps(TINY))
    raw["datasets"]["phantom"]["preset"] = "preset.yaml"
    raw["datasets"]["phantom"]["train"] = {"patch_size": [16, 16, 16]}
    cfg = parse_benchmark_config(raw, tmp_path / "bench.yaml")
    assert cfg.datasets[0].train == {"spacing": [1.0, 1.0, 1.5], "patch_size": [16, 16, 16], "flips": False}
    raw["datasets"]["phantom"]["preset"] = "missing.yaml"
    with pytest.raises(ValueError, match="datasets.phantom.preset: .*missing.yaml: preset not found"):
        parse_benchmark_config(raw, tmp_path / "bench.yaml")


def test_a_second_runner_is_locked_out_but_a_report_may_be_taken_meanwhile(finished):
    import fcntl

    from maskgen.benchmark.runner import BenchmarkLockedError

    root, config, report = finished
    out = root / "one"
    with open(out / ".benchmark.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running benchmark holds it
        with pytest.raises(BenchmarkLockedError, match="another maskgen benchmark is running"):
            run_benchmark(config, out, progress=False)
        again = run_benchmark(config, out, report_only=True, progress=False)
    assert again["datasets"] == report["datasets"]


def test_export_copies_the_report_and_each_cells_small_files_but_no_checkpoints(finished, tmp_path):
    root, config, _ = finished
    dest = tmp_path / "docs_copy"
    run_benchmark(config, root / "one", report_only=True, progress=False, export=dest)
    assert (dest / "table.md").is_file() and (dest / "sweep.csv").is_file() and (dest / "dice_phantom.png").is_file()
    assert (dest / "per_domain.md").is_file() and (dest / "per_domain.csv").is_file()
    cell = dest / "cells" / "phantom" / "erm" / "default" / "seed0"
    for name in ("config.yaml", "log.csv", "test/metrics_per_case.csv"):
        assert (cell / name).is_file(), name
    assert not list(dest.rglob("*.pt")) and not list(dest.rglob("*.nii.gz"))


def test_a_lost_folder_resumes_from_its_export_and_trains_only_what_did_not_finish(finished, tmp_path, capsys):
    import shutil

    root, config, report = finished
    export = tmp_path / "committed"
    run_benchmark(config, root / "one", report_only=True, progress=False, export=export)
    unfinished = export / "cells" / "phantom" / "maskgen" / "mask_rate=0.5" / "seed0"
    (unfinished / "test" / "metrics_per_case.csv").unlink()
    out = tmp_path / "new_machine"
    resumed = run_benchmark(config, out, threads=1, progress=True, resume_from=export)
    printed = capsys.readouterr().out
    assert "3 finished cell(s)" in printed and "mask_rate=0.5/seed0: unfinished (no test/metrics_per_case.csv)" in printed
    trained = sorted(str(p.parent.relative_to(out / "cells")) for p in (out / "cells").rglob("checkpoint_latest.pt"))
    assert trained == ["phantom/maskgen/mask_rate=0.5/seed0"]  # the carried cells were not retrained
    assert (out / "cells" / "phantom" / "erm" / "default" / "seed1" / "carried_over.json").is_file()
    assert resumed["cells"] == {"total": 4, "done": 4}
    assert resumed["datasets"] == report["datasets"]
    # rerunning keeps what is there; a changed setting is refused for carried cells too
    again = run_benchmark(config, out, threads=1, progress=False, resume_from=export)
    assert again["datasets"] == report["datasets"]
    changed = json.loads(json.dumps(TINY))
    changed["train"]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"phantom/erm/default/seed0 .*lr: .* -> 0\.5"):
        run_benchmark(_write(tmp_path / "changed.yaml", changed), out, progress=False)
    # an export trained with other settings is not carried: its cells train from scratch
    longer = json.loads(json.dumps(TINY))
    longer["train"]["steps"] = 6
    fresh = tmp_path / "other_settings"
    shutil.rmtree(fresh, ignore_errors=True)
    with pytest.raises(FileNotFoundError, match="not a folder written by"):
        run_benchmark(_write(tmp_path / "longer.yaml", longer), fresh, progress=False, resume_from=tmp_path)
    run_benchmark(_write(tmp_path / "longer.yaml", longer), fresh, report_only=True, progress=True, resume_from=export)
    assert "erm/default/seed0: trained 4 of 6 steps" in capsys.readouterr().out
    assert not list((fresh / "cells").rglob("carried_over.json"))


def test_analyses_take_a_benchmark_folder_for_its_selected_cells(finished, tmp_path):
    from maskgen.analysis.runs import resolve_runs
    from maskgen.cli import main

    root, _, _ = finished
    runs = resolve_runs([root / "one"])
    assert [label for label, _ in runs] == ["erm_seed0", "erm_seed1", "maskgen"]
    assert all((run / "checkpoint_best.pt").is_file() for _, run in runs)
    assert main(["analyze", "views", str(root / "one"), "--out", str(tmp_path / "views")]) == 0
    summary = json.loads((tmp_path / "views" / "summary.json").read_text())
    assert set(summary) == {"erm_seed0", "erm_seed1", "maskgen"} and summary["maskgen"]["method"] == "maskgen"


def test_only_trains_the_matching_cells_and_a_pattern_matching_none_is_refused(tmp_path):
    config = _write(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "subset"
    with pytest.raises(ValueError, match=r"--only phantom/ermm/\*: no cell matches .*phantom/erm/default/seed0"):
        run_benchmark(config, out, threads=1, progress=False, only=["phantom/ermm/*"])
    assert not (out / "cells").exists()  # refused before anything was generated or trained
    report = run_benchmark(config, out, threads=1, progress=False, only=["*/seed0", "*/mask_rate=0.5/*"])
    trained = sorted(str(p.parent.relative_to(out / "cells")) for p in (out / "cells").rglob("checkpoint_latest.pt"))
    assert trained == ["phantom/erm/default/seed0", "phantom/maskgen/mask_rate=0.25/seed0",
                       "phantom/maskgen/mask_rate=0.5/seed0"]
    assert report["cells"] == {"total": 4, "done": 3}


def test_an_unfinished_cell_exported_with_its_checkpoints_resumes_on_a_new_machine(finished, tmp_path):
    import shutil

    import torch

    _, config, report = finished
    out = tmp_path / "interrupted"
    run_benchmark(config, out, threads=1, progress=False)
    cell = out / "cells" / "phantom" / "maskgen" / "mask_rate=0.5" / "seed0"
    shutil.rmtree(cell / "test")  # interrupted after its step-2 checkpoint: untested, 2 of 4 steps
    ckpt = torch.load(cell / "checkpoint_latest.pt", weights_only=True)
    ckpt["step"] = 2
    torch.save(ckpt, cell / "checkpoint_latest.pt")
    export = tmp_path / "committed"
    run_benchmark(config, out, report_only=True, progress=False, export=export, export_checkpoints=True)
    exported = sorted(str(p.relative_to(export / "cells")) for p in (export / "cells").rglob("*.pt"))
    assert exported == ["phantom/maskgen/mask_rate=0.5/seed0/checkpoint_best.pt",
                        "phantom/maskgen/mask_rate=0.5/seed0/checkpoint_latest.pt"]  # none of the finished cells
    new = tmp_path / "new_machine"
    resumed = run_benchmark(config, new, threads=1, progress=False, resume_from=export)
    again = new / "cells" / "phantom" / "maskgen" / "mask_rate=0.5" / "seed0"
    assert "resumed from step 2" in (again / "train.log").read_text()
    assert str(new) in (again / "config.yaml").read_text()  # this folder's paths, the same settings
    assert resumed["cells"] == {"total": 4, "done": 4}
    # once it has finished, a new export drops its checkpoints
    run_benchmark(config, new, report_only=True, progress=False, export=export, export_checkpoints=True)
    assert not list((export / "cells").rglob("*.pt"))


def test_weights_are_compared_by_content_so_a_moved_checkout_resumes_and_another_file_is_refused(tmp_path):
    """A saved run names its weights by absolute path; a checkout or export moved elsewhere must still
    resume, and a different file, wherever it lies, must be refused by name."""
    from maskgen.benchmark.cells import Cell, settings_differences
    from maskgen.runtime.config import TrainConfig

    old_dir, new_dir = tmp_path / "old" / "weights", tmp_path / "new" / "weights"
    for d in (old_dir, new_dir):
        d.mkdir(parents=True)
    (old_dir / "synth.pt").write_bytes(b"same bytes")
    (new_dir / "synth.pt").write_bytes(b"same bytes")
    saved = TrainConfig(dataset="d", out=str(tmp_path / "run"), extractor="maskgen-synth",
                        extractor_weights=str(old_dir / "synth.pt"))
    cell = Cell("phantom", "mg", {}, 0, TrainConfig(dataset="d", out=str(tmp_path / "run"), extractor="maskgen-synth",
                                                    extractor_weights=str(new_dir / "synth.pt")))
    assert settings_differences(cell, saved) == []
    assert settings_differences(cell, saved, compare_paths=False) == []
    (new_dir / "synth.pt").write_bytes(b"other bytes")
    for compare_paths in (True, False):  # a live cell, and one carried over from an export
        problems = settings_differences(cell, saved, compare_paths=compare_paths)
        assert len(problems) == 1 and problems[0].startswith("extractor_weights: ")
    # an export from another machine names files this machine lacks: only a live cell is refused for it
    saved.extractor_weights = "/elsewhere/weights/synth.pt"
    assert settings_differences(cell, saved, compare_paths=False) == []
    assert settings_differences(cell, saved)[0].startswith("extractor_weights: '/elsewhere")


def test_name_path_weight_pairs_are_made_absolute_path_by_path(tmp_path, monkeypatch):
    from maskgen.benchmark.config import parse_benchmark_config
    from maskgen.extractors.combined import weight_pairs
    from maskgen.runtime.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(dataset="d", out="run", extractor="anatomix+maskgen-synth",
                      extractor_weights="anatomix=a.pth,maskgen-synth=w/b.pt").with_absolute_paths()
    assert weight_pairs(cfg.extractor_weights) == {"anatomix": str(tmp_path / "a.pth"),
                                                   "maskgen-synth": str(tmp_path / "w" / "b.pt")}
    raw = json.loads(json.dumps(TINY))
    raw["methods"]["erm"]["train"] = {"extractor_weights": "anatomix=../a.pth,maskgen-synth=b.pt"}
    arms = parse_benchmark_config(raw, tmp_path / "configs" / "bench.yaml").arms
    weights = next(a for a in arms if a.name == "erm").train["extractor_weights"]
    assert weight_pairs(weights) == {"anatomix": str(tmp_path / "a.pth"),
                                     "maskgen-synth": str(tmp_path / "configs" / "b.pt")}
    with pytest.raises(ValueError, match="NAME=PATH pairs"):
        weight_pairs("anatomix=a.pth,b.pt")


def test_the_sources_config_carries_its_mind_cells_from_the_committed_protocol_export(tmp_path):
    """phantom_sources.yaml promises that its ERM, reps_only and MaskGen (p = 0.25) cells come from
    phantom_cpu.yaml's committed export: their settings must stay those cells' settings."""
    from maskgen.benchmark.carry_over import carry_over_problem
    from maskgen.benchmark.cells import expand_cells
    from maskgen.benchmark.config import parse_benchmark_config

    root = Path(__file__).resolve().parents[1]
    path = root / "configs" / "benchmark" / "phantom_sources.yaml"
    cfg = parse_benchmark_config(yaml.safe_load(path.read_text()), path)
    export = root / "docs" / "results" / "benchmark_phantom_cpu" / "cells"
    cells = {c.cell_id: c for c in expand_cells(cfg, tmp_path)}
    carried = ["phantom/erm/default/seed0", "phantom/reps_only/default/seed0", "phantom/maskgen/mask_rate=0.25/seed0"]
    for cell_id in carried:
        assert carry_over_problem(cells[cell_id], export / cell_id) is None, cell_id
    assert len(cells) == 11 and not (export / "phantom" / "reps_only_synth").exists()
    texture = root / "configs" / "benchmark" / "phantom_texture.yaml"
    arms = parse_benchmark_config(yaml.safe_load(texture.read_text()), texture).arms
    assert next(a for a in arms if a.name == "maskgen_mind_synth").train["extractor"] == "mind+maskgen-synth"


def test_a_malformed_weights_list_in_a_benchmark_config_names_the_file_and_the_key(tmp_path):
    from maskgen.benchmark.config import parse_benchmark_config

    raw = json.loads(json.dumps(TINY))
    raw["methods"]["erm"]["train"] = {"extractor_weights": "anatomix=a.pth,b.pt"}
    with pytest.raises(ValueError, match=r"bench\.yaml: methods\.erm\.train\.extractor_weights: .*NAME=PATH pairs"):
        parse_benchmark_config(raw, tmp_path / "bench.yaml")


def test_a_moved_benchmark_folder_resumes_its_interrupted_cell(finished, tmp_path):
    """Every cell saves absolute paths (data, splits, run folder); a benchmark folder moved or renamed as a
    whole must continue where it stopped, not be refused for paths that no longer exist."""
    import shutil

    import torch

    _, config, _ = finished
    out = tmp_path / "before"
    run_benchmark(config, out, threads=1, progress=False, only=["*/maskgen/mask_rate=0.5/*"])
    cell = Path("cells") / "phantom" / "maskgen" / "mask_rate=0.5" / "seed0"
    shutil.rmtree(out / cell / "test")  # interrupted after its step-2 checkpoint
    ckpt = torch.load(out / cell / "checkpoint_latest.pt", weights_only=True)
    ckpt["step"] = 2
    torch.save(ckpt, out / cell / "checkpoint_latest.pt")
    moved = tmp_path / "after"
    shutil.move(out, moved)
    report = run_benchmark(config, moved, threads=1, progress=False, only=["*/maskgen/mask_rate=0.5/*"])
    assert "resumed from step 2" in (moved / cell / "train.log").read_text()
    saved = (moved / cell / "config.yaml").read_text()
    assert str(moved) in saved and str(out) not in saved  # the folder's paths now, the same settings
    assert (moved / cell / "test" / "summary.json").is_file() and report["cells"]["done"] == 1
    # a path that still exists and differs is a different choice, and still refused
    other = tmp_path / "other_data"
    shutil.copytree(moved / "data", other)
    from maskgen.runtime.config import TrainConfig

    cfg = TrainConfig.load(moved / cell / "config.yaml")
    assert any(p.startswith("dataset: ") for p in replace(cfg, dataset=str(other / "phantom")).conflicts_with(cfg))


def test_repeated_only_flags_add_their_patterns():
    """``--only A --only B`` trains both (argparse's plain nargs kept only the last, and a session lost cells)."""
    from maskgen.cli import build_parser

    args = build_parser().parse_args(["benchmark", "c.yaml", "--out", "o", "--only", "a/*", "b/*", "--only", "c/*"])
    assert args.only == ["a/*", "b/*", "c/*"]
    assert build_parser().parse_args(["benchmark", "c.yaml", "--out", "o"]).only == []
