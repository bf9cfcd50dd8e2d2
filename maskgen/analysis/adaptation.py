"""``maskgen analyze adaptation``: each run's test Dice per domain without and with one test-time adaptation.

The same labelled test cases, split as the run split them, are segmented twice: plainly, and with the
adaptation ``--tta NAME`` and its options (``maskgen predict --tta``: TENT, alpha tuning, stable feature
boosting, or ``recalibrate-bn``, the BatchNorm statistics re-estimated on unmasked training patches).
In-domain (the domains the run trained on) and out-of-domain means over cases come next to every domain, so
a gain out of domain bought by a loss in domain shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maskgen.analysis.registry import Analysis, first_paragraph, read_text_report, register_analysis
from maskgen.analysis.runs import resolve_runs, write_rows_and_summary
from maskgen.evaluation.evaluate import format_stat, mean_se
from maskgen.evaluation.plots import plot_domain_bars
from maskgen.evaluation.testing import labelled_test_cases, score_cases
from maskgen.inference.predict import Predictor
from maskgen.inference.tta import build_tta
from maskgen.io import atomic_write_text, ensure_fresh_dir

IN, OUT = "in-domain", "out-of-domain"


def _train_domains(cfg) -> set[str]:
    from maskgen.data.nnunet import load_dataset

    spec = load_dataset(cfg.dataset, splits_file=cfg.splits, train_subjects=cfg.train_subjects, seed=cfg.seed,
                        check=False)
    return set(spec.domains.get("train", []))


def adaptation(runs: Sequence[str | Path], out: str | Path, tta: str, tta_options: dict[str, Any] | None = None,
               checkpoint: str = "best", device: str = "auto", overwrite: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Mean test Dice (± SE over cases) per run, per domain and in/out of domain, plain and with ``tta``;
    writes adaptation.csv, summary.json (with the adaptation's own report), adaptation.txt and .png."""
    build_tta(tta, **(tta_options or {}))  # bad options fail before anything is written
    resolved = resolve_runs(runs, checkpoint)  # bad runs fail before anything is written
    out = ensure_fresh_dir(out, overwrite, what="analysis folder")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for name, run in resolved:
        plain = Predictor(run, checkpoint=checkpoint, device=device)
        cfg = plain.cfg
        cases = labelled_test_cases(cfg, run)
        trained_on = _train_domains(cfg)
        summary[name] = {"run": str(run), "method": cfg.method, "train_domains": sorted(trained_on), "settings": {}}
        adapted = Predictor(run, checkpoint=checkpoint, device=device, tta=build_tta(tta, **(tta_options or {})))
        for setting, pred in (("plain", plain), (tta, adapted)):
            res = score_cases(pred, cases, out / "scratch", cfg.label_names or {}, compute_hd95=False,
                              save_predictions=False, overwrite=True, progress=progress)
            by_domain = {d: g["mean_dice"] for d, g in res["summary"]["domains"].items()}
            for group, inside in ((IN, True), (OUT, False)):
                vals = [r["mean_dice"] for r in res["rows"] if (r["domain"] in trained_on) == inside]
                if vals:
                    by_domain[group] = mean_se(vals)
            summary[name]["settings"][setting] = by_domain
            rows += [{"run": name, "method": cfg.method, "setting": setting, "case": r["case"], "domain": r["domain"],
                      "in_domain": r["domain"] in trained_on, "mean_dice": r["mean_dice"]} for r in res["rows"]]
        summary[name]["report"] = adapted.tta.report()
    _write(out, rows, summary)
    return summary


def _write(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    write_rows_and_summary(out, "adaptation.csv", rows, summary)
    lines = ["Mean test Dice (± SE over cases), plain and with the adaptation", ""]
    bars: dict[str, dict[str, tuple[float, float]]] = {}
    in_domain: set[str] = set()
    for name, s in summary.items():
        in_domain |= set(s["train_domains"])
        for setting, by_domain in s["settings"].items():
            groups = "  ".join(f"{g} {format_stat(by_domain[g])}" for g in (IN, OUT) if g in by_domain)
            lines.append(f"{name:24s} {setting:16s} {groups}   " + "  ".join(
                f"{d} {format_stat(v)}" for d, v in by_domain.items() if d not in (IN, OUT)))
            bars[f"{name}: {setting}"] = {d: (v["mean"], v["se"]) for d, v in by_domain.items() if d not in (IN, OUT)}
    atomic_write_text(out / "adaptation.txt", "\n".join(lines) + "\n")
    plot_domain_bars(bars, out / "adaptation.png", title="Test Dice per domain, plain and adapted",
                     in_domain=sorted(in_domain))


register_analysis(Analysis(
    name="adaptation", function=adaptation, help="test Dice per domain without and with a test-time adaptation (--tta)",
    description=first_paragraph(__doc__), out_help="analysis folder (adaptation.csv, summary.json, .txt, .png)",
    report=read_text_report("adaptation.txt"), tta=True,
))
