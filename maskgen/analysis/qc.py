"""``maskgen analyze qc``: does ``predict --qc`` rank the failing cases? Checked on a run's labelled test cases.

Per test case: the quality-check score (agreement of the partial views with the full prediction), the
mean normalised softmax entropy (over the volume and over the predicted foreground) and the true mean
foreground Dice. Reports the Spearman rank correlation of each score with the Dice over all test cases
(entropy negated, so higher should mean better for every score) and draws score against Dice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from maskgen.analysis.registry import Analysis, Option, read_text_report, register_analysis
from maskgen.analysis.runs import resolve_runs
from maskgen.data.volumes import load_volume
from maskgen.evaluation.evaluate import case_row
from maskgen.evaluation.testing import labelled_test_cases
from maskgen.figures import new_figure, save_figure
from maskgen.inference.predict import Predictor
from maskgen.inference.qc import DEFAULT_RANDOM_VIEWS, QualityCheck
from maskgen.io import atomic_write_csv, atomic_write_json, atomic_write_text, ensure_fresh_dir
from maskgen.metrics import drop_ignored

#: score -> (column, sign): each is correlated with Dice so that higher should mean better
SCORES = {"qc score": ("qc_score", 1.0), "-entropy": ("entropy", -1.0), "-entropy (foreground)": ("entropy_foreground", -1.0)}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return float(rho)


def qc_validation(runs: Sequence[str | Path], out: str | Path, n_random: int = DEFAULT_RANDOM_VIEWS,
                  checkpoint: str = "best", device: str = "auto", overwrite: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    resolved = resolve_runs(runs, checkpoint)  # bad runs fail before anything is written
    out = ensure_fresh_dir(out, overwrite, what="analysis folder")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for name, run in resolved:
        pred = Predictor(run, checkpoint=checkpoint, device=device)
        qc = QualityCheck(pred, n_random=n_random)
        cfg = pred.cfg
        ignore = cfg.ignore_value
        fg = {k: int(v) for k, v in (cfg.label_names or {}).items() if int(v) != 0 and int(v) != ignore}
        run_rows = []
        for case in tqdm(labelled_test_cases(cfg, run), desc=f"qc {name}", disable=not progress):
            labels, _, _ = pred.predict_file(case.images)
            scores, _ = qc.score(pred)
            ref_img = load_volume(case.label)
            ref = np.asarray(ref_img.dataobj).reshape(labels.shape).astype(np.int64)
            scored, ref = drop_ignored(labels, ref, ignore)
            spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
            dice = case_row(case.case_id, case.domain, scored, ref, spacing, fg, compute_hd95=False)["mean_dice"]
            run_rows.append({"run": name, "case": case.case_id, "domain": case.domain, "dice": dice, **scores})
        rows += run_rows
        dice = [r["dice"] for r in run_rows]
        summary[name] = {"run": str(run), "method": cfg.method, "cases": len(run_rows),
                         "spearman_with_dice": {label: spearman([sign * r[col] for r in run_rows], dice)
                                                for label, (col, sign) in SCORES.items()}}
    _write(out, rows, summary)
    return summary


def _write(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    atomic_write_csv(out / "qc_validation.csv", rows)
    atomic_write_json(out / "summary.json", summary)
    lines = ["Spearman correlation with the true test Dice over all test cases (higher = ranks failures better)", ""]
    for name, s in summary.items():
        cells = "  ".join(f"{k}: {v:+.3f}" if math.isfinite(v) else f"{k}: -" for k, v in s["spearman_with_dice"].items())
        lines.append(f"{name:24s} ({s['cases']} cases)  {cells}")
    atomic_write_text(out / "qc.txt", "\n".join(lines) + "\n")
    fig = new_figure((9.0, 3.6))
    axes = fig.subplots(1, 2)
    for name in summary:
        rs = [r for r in rows if r["run"] == name]
        axes[0].scatter([r["qc_score"] for r in rs], [r["dice"] for r in rs], s=14, label=name)
        axes[1].scatter([r["entropy_foreground"] for r in rs], [r["dice"] for r in rs], s=14, label=name)
    axes[0].set_xlabel("qc score (view agreement)")
    axes[1].set_xlabel("mean normalised entropy, predicted foreground")
    for ax in axes:
        ax.set_ylabel("true mean Dice")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, out / "qc.png")


register_analysis(Analysis(
    name="qc", function=qc_validation, help="does predict --qc rank failing cases? Spearman with the true Dice on the test set",
    description="The quality-check score and softmax entropy of each labelled test case of the run, and their "
                "Spearman correlation with its true Dice.",
    runs="run folders of methods that read stable features",
    out_help="analysis folder (qc_validation.csv, summary.json, qc.txt, qc.png)", report=read_text_report("qc.txt"),
    options=(Option("--random-views", f"random channel masks per case (default {DEFAULT_RANDOM_VIEWS})",
                    DEFAULT_RANDOM_VIEWS, int, keyword="n_random"),),
))
