"""The benchmark's report: ``table.md/.csv/.json`` (selected cells only), ``sweep.md/.csv`` (every cell),
``per_case.csv``, ``per_domain.md/.csv`` (every domain's Dice, selected cells), ``dice_<dataset>.png`` (bars by domain), ``average_rank.png`` and
``validation_<dataset>.png`` (the selected cells' validation curves, to see that they converged).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.analysis.runs import point_tag
from maskgen.benchmark.cells import Cell
from maskgen.benchmark.config import BenchmarkConfig
from maskgen.benchmark.per_domain import format_per_domain, per_domain_rows, per_domain_stats
from maskgen.benchmark.selection import (
    CellResult,
    average_ranks,
    best_val_dice,
    paired_difference,
    read_test_rows,
    seed_spread,
    select,
    subject_scores,
    summarize_groups,
)
from maskgen.evaluation.evaluate import format_stat, mean_se
from maskgen.io import atomic_write_csv, atomic_write_json, atomic_write_text

IN, OUT = "in-domain", "out-of-domain"
#: a cell is called converged when its best validation Dice in the last quarter of training beats the best
#: before it by at most this much (the brief's "validation flat over the last quarter")
FLAT_TOLERANCE = 0.01
SE_NOTE = "± standard error over test subjects (each subject's cases averaged over the reported seeds)"


def validation_curve(log_csv: Path) -> list[tuple[int, float]]:
    """``(step, validation Dice)`` of every validation a run's ``log.csv`` records (empty if none)."""
    if not log_csv.is_file():
        return []
    with log_csv.open(newline="") as f:
        return [(int(r["step"]), float(r["val_dice"])) for r in csv.DictReader(f) if r.get("val_dice")]


def last_quarter_gain(log_csv: Path, steps: int) -> float:
    """Best validation Dice in the last quarter of training minus the best before it (nan if unknown)."""
    vals = validation_curve(log_csv)
    early = [v for s, v in vals if s <= 0.75 * steps]
    late = [v for s, v in vals if s > 0.75 * steps]
    return max(late) - max(early) if early and late else math.nan


def train_seconds(log_csv: Path) -> float:
    """Sum of the logged seconds of a run's steps (validation included): its training wall time."""
    if not log_csv.is_file():
        return math.nan
    with log_csv.open(newline="") as f:
        return float(sum(float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds")))


def collect(cells: list[Cell], done: dict[str, bool]) -> list[CellResult]:
    results = []
    for c in cells:
        finished = done.get(c.cell_id, False)
        metrics = c.run_dir / "test" / "metrics_per_case.csv"
        rows = read_test_rows(metrics) if finished and metrics.is_file() else []
        results.append(CellResult(c.dataset, c.arm, c.point, c.seed, best_val_dice(c.run_dir / "log.csv"), rows,
                                  finished and bool(rows)))
    return results


def _dataset_info(cell: Cell) -> tuple[dict[str, str], set[str]]:
    """case -> subject, and the domains the model was trained on."""
    from maskgen.data.nnunet import load_dataset

    spec = load_dataset(cell.config.dataset, splits_file=cell.config.splits, check=False, progress=False)
    subjects = {c.case_id: c.subject for c in spec.split("test")}
    return subjects, set(spec.domains.get("train", []))


def build_report(cfg: BenchmarkConfig, cells: list[Cell], done: dict[str, bool], out: Path,
                 wall_seconds: float | None = None) -> dict[str, Any]:
    results = collect(cells, done)
    arms = [a.name for a in cfg.arms]
    rule = {a.name: a.seed_rule for a in cfg.arms}
    report: dict[str, Any] = {"setting": cfg.setting, "se": SE_NOTE, "reference": cfg.reference,
                              "rank_by": "mean out-of-domain test Dice (in-domain if a dataset has none)",
                              "datasets": {}, "selections": [], "average_rank": {}}
    ranks_per_dataset: dict[str, dict[str, float]] = {}
    per_case_lines: list[dict[str, Any]] = []
    for entry in cfg.datasets:
        ds = entry.name
        ds_cells = [c for c in cells if c.dataset == ds]
        subjects, in_domains = _dataset_info(ds_cells[0])
        table: dict[str, Any] = {}
        scores_by_arm: dict[str, dict[str, dict[str, float]]] = {}
        for arm in arms:
            arm_results = [r for r in results if r.dataset == ds and r.arm == arm]
            sel = select(arm_results, rule[arm])
            if sel is None:
                continue
            chosen = {r.seed: r.rows for r in arm_results if r.point == sel.point and r.seed in sel.seeds}
            scores = subject_scores(chosen, subjects, in_domains)
            scores_by_arm[arm] = scores
            groups = summarize_groups(scores)
            row = {"point": sel.point, "seeds": sel.seeds, "val_dice": sel.val_dice, "complete": sel.complete,
                   "groups": groups, "seed_spread": {g: seed_spread(chosen, subjects, in_domains, g) for g in (IN, OUT)}}
            if cfg.hd95:
                hd = subject_scores(chosen, subjects, in_domains, key="mean_hd95")
                row["hd95"] = {g: mean_se(v.values()) for g, v in hd.items() if g in (IN, OUT)}
            table[arm] = row
            report["selections"].append({"dataset": ds, "arm": arm, "point": sel.point, "seeds": sel.seeds,
                                         "val_dice": sel.val_dice, "complete": sel.complete,
                                         "candidates": sel.candidates})
            for seed, rows in chosen.items():
                for r in rows:
                    per_case_lines.append({"dataset": ds, "arm": arm, "point": point_tag(sel.point), "seed": seed,
                                           "case": r["case"], "subject": subjects.get(r["case"], r["case"]),
                                           "domain": r["domain"], "in_domain": r["domain"] in in_domains,
                                           "mean_dice": r["mean_dice"], "mean_hd95": r["mean_hd95"]})
        ref = scores_by_arm.get(cfg.reference)
        for arm, row in table.items():
            row["paired_vs_reference"] = ({g: paired_difference(scores_by_arm[arm].get(g, {}), ref.get(g, {}))
                                           for g in (IN, OUT)} if ref is not None and arm != cfg.reference else None)
        key = OUT if any(OUT in r["groups"] for r in table.values()) else IN
        ranks = average_ranks({a: _mean(r["groups"].get(key)) for a, r in table.items()})
        for arm, r in ranks.items():
            table[arm]["rank"] = r
        ranks_per_dataset[ds] = ranks
        report["datasets"][ds] = {"in_domains": sorted(in_domains), "arms": table}
    for arm in arms:
        rs = [ranks_per_dataset[d][arm] for d in ranks_per_dataset if arm in ranks_per_dataset[d]]
        if rs:
            report["average_rank"][arm] = {"mean": float(np.mean(rs)), "n_datasets": len(rs)}
    report["cells"] = {"total": len(cells), "done": sum(bool(v) for v in done.values())}
    minutes = [train_seconds(c.run_dir / "log.csv") / 60 for c in cells if done.get(c.cell_id)]
    report["train_hours_of_finished_cells"] = sum(minutes) / 60
    if wall_seconds is not None:
        report["wall_seconds_this_invocation"] = wall_seconds
    _write(cfg, cells, results, report, per_case_lines, out)
    return report


def _mean(stat: dict[str, Any] | None) -> float:
    return math.nan if not stat or stat.get("mean") is None else float(stat["mean"])


def _write(cfg: BenchmarkConfig, cells: list[Cell], results: list[CellResult], report: dict[str, Any],
           per_case: list[dict[str, Any]], out: Path) -> None:
    atomic_write_json(out / "table.json", report)
    atomic_write_text(out / "table.md", format_markdown(report, [a.name for a in cfg.arms]))
    atomic_write_csv(out / "table.csv", _table_rows(report), [
        "dataset", "arm", "point", "seeds", "val_dice", "in_mean", "in_se", "out_mean", "out_se", "out_seed_se",
        "paired_out_mean", "paired_out_se", "paired_in_mean", "paired_in_se", "rank", "complete"])
    atomic_write_csv(out / "per_case.csv", per_case, ["dataset", "arm", "point", "seed", "case", "subject", "domain",
                                                      "in_domain", "mean_dice", "mean_hd95"])
    by_domain = per_domain_stats(per_case)
    atomic_write_csv(out / "per_domain.csv", per_domain_rows(by_domain),
                     ["dataset", "arm", "domain", "mean", "se", "n_subjects"])
    atomic_write_text(out / "per_domain.md", format_per_domain(
        by_domain, [a.name for a in cfg.arms], {d: i["in_domains"] for d, i in report["datasets"].items()}))
    sweep = _sweep_rows(cells, results, report)
    atomic_write_csv(out / "sweep.csv", sweep, list(sweep[0]) if sweep else ["dataset"])
    atomic_write_text(out / "sweep.md", format_sweep(sweep))
    _figures(cfg, cells, report, out)


def _table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for ds, info in report["datasets"].items():
        for arm, r in info["arms"].items():
            g, p = r["groups"], r.get("paired_vs_reference") or {}
            rows.append({"dataset": ds, "arm": arm, "point": point_tag(r["point"]),
                         "seeds": " ".join(map(str, r["seeds"])), "val_dice": r["val_dice"],
                         "in_mean": g.get(IN, {}).get("mean"), "in_se": g.get(IN, {}).get("se"),
                         "out_mean": g.get(OUT, {}).get("mean"), "out_se": g.get(OUT, {}).get("se"),
                         "out_seed_se": r["seed_spread"][OUT].get("se"),
                         "paired_out_mean": p.get(OUT, {}).get("mean"), "paired_out_se": p.get(OUT, {}).get("se"),
                         "paired_in_mean": p.get(IN, {}).get("mean"), "paired_in_se": p.get(IN, {}).get("se"),
                         "rank": r.get("rank"), "complete": r["complete"]})
    return rows


def _sweep_rows(cells: list[Cell], results: list[CellResult], report: dict[str, Any]) -> list[dict[str, Any]]:
    selected = {(s["dataset"], s["arm"], point_tag(s["point"]), seed)
                for s in report["selections"] for seed in s["seeds"]}
    rows = []
    for c, r in zip(cells, results):
        in_d = set(report["datasets"].get(c.dataset, {}).get("in_domains", []))
        ins = [x["mean_dice"] for x in r.rows if x["domain"] in in_d]
        outs = [x["mean_dice"] for x in r.rows if x["domain"] not in in_d]
        rows.append({"dataset": c.dataset, "arm": c.arm, "point": c.point_tag, "seed": c.seed,
                     "status": "done" if r.done else "not finished", "val_dice": r.val_dice,
                     "last_quarter_gain": last_quarter_gain(c.run_dir / "log.csv", c.config.steps),
                     "train_minutes": train_seconds(c.run_dir / "log.csv") / 60,
                     "test_in": float(np.mean(ins)) if ins else None, "test_out": float(np.mean(outs)) if outs else None,
                     "selected": (c.dataset, c.arm, c.point_tag, c.seed) in selected})
    return rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_markdown(report: dict[str, Any], arms: list[str]) -> str:
    datasets = list(report["datasets"])
    lines = [f"Setting: {report['setting']}. Test Dice {report['se']}; the grid point (and seed) of each method "
             "chosen on validation. Δ: paired difference to "
             f"{report['reference']} over the same subjects. Rank by {report['rank_by']}.", ""]
    head = ["method"]
    for ds in datasets:
        head += [f"{ds} in-domain", f"{ds} out-of-domain", f"{ds} Δ in vs {report['reference']}",
                 f"{ds} Δ out vs {report['reference']}"]
    head.append("avg rank")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        cells = [arm]
        for ds in datasets:
            r = report["datasets"][ds]["arms"].get(arm)
            if r is None:
                cells += ["-", "-", "-", "-"]
                continue
            mark = "" if r["complete"] else " †"
            paired = r.get("paired_vs_reference") or {}
            cells += [format_stat(r["groups"].get(IN, {})) + mark, format_stat(r["groups"].get(OUT, {})) + mark]
            cells += [_signed(paired.get(g)) for g in (IN, OUT)]
        rank = report["average_rank"].get(arm)
        cells.append(f"{rank['mean']:.2f}" if rank else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Selected on validation (best validation Dice of the selected cells):", ""]
    lines += ["| dataset | method | grid point | seeds | val Dice |", "|---|---|---|---|---|"]
    for s in report["selections"]:
        lines.append(f"| {s['dataset']} | {s['arm']} | {point_tag(s['point'])} | {' '.join(map(str, s['seeds']))} | "
                     f"{_fmt(s['val_dice'])}{'' if s['complete'] else ' †'} |")
    if any(not s["complete"] for s in report["selections"]):
        lines += ["", "† selected among the cells that had finished: some cells of this method have not."]
    lines += ["", f"Cells finished: {report['cells']['done']} of {report['cells']['total']}; their training took "
              f"{report.get('train_hours_of_finished_cells', 0.0):.1f} h in all (wall time of steps and validations, "
              "summed over cells; cells that ran in parallel overlap)."]
    return "\n".join(lines) + "\n"


def _signed(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:+.3f}" + (f" ± {stat['se']:.3f}" if stat.get("se") is not None else "")


def format_sweep(rows: list[dict[str, Any]]) -> str:
    head = ["dataset", "method", "grid point", "seed", "status", "val Dice", "last-quarter gain", "train min",
            "test in", "test out", "selected"]
    lines = ["Every cell. last-quarter gain: best validation Dice in the last quarter of training minus the best "
             f"before it (flat, i.e. converged, when at most {FLAT_TOLERANCE}). train min: wall minutes of its "
             "training steps and validations, summed over its log.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["dataset"], r["arm"], r["point"], str(r["seed"]), r["status"],
                                        _fmt(r["val_dice"]), _fmt(r["last_quarter_gain"]),
                                        _fmt(r["train_minutes"], 1), _fmt(r["test_in"]),
                                        _fmt(r["test_out"]), "yes" if r["selected"] else ""]) + " |")
    return "\n".join(lines) + "\n"


def _figures(cfg: BenchmarkConfig, cells: list[Cell], report: dict[str, Any], out: Path) -> None:
    from maskgen.evaluation.plots import plot_domain_bars
    from maskgen.figures import new_figure, save_figure
    from maskgen.training.curves import plot_validation_curves

    for ds, info in report["datasets"].items():
        bars = {}
        for arm, r in info["arms"].items():
            bars[arm] = {g: (s.get("mean"), s.get("se")) for g, s in r["groups"].items()}
        if bars:
            plot_domain_bars(bars, out / f"dice_{ds}.png", title=f"{ds}: test Dice (mean ± SE over subjects)",
                             in_domain=[*info["in_domains"], IN])
        logs = {}
        for s in report["selections"]:
            if s["dataset"] == ds:
                cell = next(c for c in cells if c.dataset == ds and c.arm == s["arm"] and c.point == s["point"]
                            and c.seed == s["seeds"][0])
                if (cell.run_dir / "log.csv").is_file():
                    logs[f"{s['arm']} ({point_tag(s['point'])}, seed {cell.seed})"] = cell.run_dir / "log.csv"
        if logs:
            plot_validation_curves(logs, out / f"validation_{ds}.png", title=f"{ds}: validation Dice, selected cells")
    ranks = report["average_rank"]
    if ranks:
        names = sorted(ranks, key=lambda a: ranks[a]["mean"])
        fig = new_figure((5.0, 0.5 + 0.35 * len(names)))
        ax = fig.add_subplot()
        ax.barh(range(len(names)), [ranks[a]["mean"] for a in names], color="C0")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(f"average rank over {len(report['datasets'])} dataset(s) (1 = best)")
        ax.set_xlim(0, len(names) + 0.5)
        save_figure(fig, out / "average_rank.png")


#: what ``--export`` copies: the report, and per finished or started cell its settings, log and test scores
REPORT_FILES = ("table.md", "table.csv", "table.json", "sweep.md", "sweep.csv", "per_case.csv", "per_domain.md",
                "per_domain.csv", "average_rank.png", "benchmark.yaml")
CELL_FILES = ("config.yaml", "log.csv", "training_curves.png", "test/metrics_per_case.csv", "cases.json")


#: what ``export(checkpoints=True)`` adds for a cell still training, so ``--resume-from`` can continue it
PARTIAL_FILES = ("train.log", "checkpoint_latest.pt", "checkpoint_best.pt")


def export_results(out: Path, cells: list[Cell], dest: Path, checkpoints: bool = False) -> list[Path]:
    """Copy the small outputs (no checkpoints, no predictions) to ``dest``, e.g. to commit them with the docs;
    ``checkpoints``: also the checkpoints of the cells that have not finished (none of the finished ones), so
    a machine that loses the benchmark folder resumes them from ``dest`` rather than from scratch."""
    import shutil

    from maskgen.benchmark.cells import PARTIAL, cell_status

    dest = Path(dest)
    copied = []
    names = list(REPORT_FILES) + [p.name for p in out.glob("dice_*.png")] + [p.name for p in out.glob("validation_*.png")]
    for name in names:
        if (out / name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copy2(out / name, dest / name)))
    for c in cells:
        partial = checkpoints and cell_status(c) == PARTIAL
        stale = dest / "cells" / c.cell_id
        for name in PARTIAL_FILES if not partial else ():  # a cell finished since the last export
            if (stale / name).is_file():
                (stale / name).unlink()
        for name in CELL_FILES + (PARTIAL_FILES if partial else ()):
            src = c.run_dir / name
            if src.is_file():
                target = dest / "cells" / c.cell_id / name
                target.parent.mkdir(parents=True, exist_ok=True)
                copied.append(Path(shutil.copy2(src, target)))
    return copied
