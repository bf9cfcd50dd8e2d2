"""``maskgen analyze views``: how much each trained model depends on each input source (the paper's Figure 4).

Each run's labelled test cases are segmented three times: with every input, with the image zeroed, and
with the stable features zeroed (what ``predict --mask`` does). A model that ignores the stable features
(ERM-style shortcut through the image) loses everything without the image and nothing without the
features; MaskGen should hold up without the image. Runs that read no features get only the first two.
A run with several input channels is also scored with each channel missing (``predict --missing``: its
image zeros, no features from it), ``without <channel>``: an ERM run is then given zeros for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maskgen.analysis.registry import Analysis, first_paragraph, read_text_report, register_analysis
from maskgen.analysis.runs import resolve_runs
from maskgen.evaluation.evaluate import format_stat
from maskgen.evaluation.plots import plot_domain_bars
from maskgen.evaluation.testing import labelled_test_cases, score_cases
from maskgen.inference.predict import Predictor
from maskgen.io import atomic_write_csv, atomic_write_json, atomic_write_text, ensure_fresh_dir

#: view name -> what ``Predictor(feature_mask=...)`` zeroes (None: nothing)
VIEWS = {"all inputs": None, "image masked": "image", "features masked": "features"}


def view_dependence(runs: Sequence[str | Path], out: str | Path, checkpoint: str = "best", device: str = "auto",
                    overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Score every run's labelled test cases under each view; writes views.csv, summary.json, views.txt and
    views.png into ``out`` and returns the summary (run -> view -> domain -> mean Dice, SE, n)."""
    resolved = resolve_runs(runs, checkpoint)  # bad runs fail before anything is written
    out = ensure_fresh_dir(out, overwrite, what="analysis folder")
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    for name, run in resolved:
        base = Predictor(run, checkpoint=checkpoint, device=device)
        cfg = base.cfg
        cases = labelled_test_cases(cfg, run)
        summary[name] = {"run": str(run), "method": cfg.method, "views": {}}
        views = [(view, {"feature_mask": mask}) for view, mask in VIEWS.items()
                 if not (mask == "features" and base.extractor is None)]  # a run that reads no features: no mask
        channels = cfg.channel_names()
        if len(channels) > 1:
            views += [(f"without {c}", {"missing": [i]}) for i, c in enumerate(channels)]
        for view, kwargs in views:
            pred = base if not any(kwargs.values()) else Predictor(run, checkpoint=checkpoint, device=device, **kwargs)
            res = score_cases(pred, cases, out / name / view.replace(" ", "_"), cfg.label_names or {},
                              compute_hd95=False, save_predictions=False, overwrite=True, progress=progress)
            summary[name]["views"][view] = {d: g["mean_dice"] for d, g in res["summary"]["domains"].items()}
            summary[name]["views"][view]["overall"] = res["summary"]["overall"]["mean_dice"]
            rows += [{"run": name, "method": cfg.method, "view": view, "case": r["case"], "domain": r["domain"],
                      "mean_dice": r["mean_dice"]} for r in res["rows"]]
    _write(out, rows, summary)
    return summary


def _write(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    atomic_write_csv(out / "views.csv", rows, ["run", "method", "view", "case", "domain", "mean_dice"])
    atomic_write_json(out / "summary.json", summary)
    lines = ["Mean test Dice per view (± SE over cases); a view zeroes one input source at inference", ""]
    bars: dict[str, dict[str, tuple[float, float]]] = {}
    for name, s in summary.items():
        for view, by_domain in s["views"].items():
            stats = by_domain["overall"]
            lines.append(f"{name:24s} {view:16s} {format_stat(stats)}   "
                         + "  ".join(f"{d} {format_stat(v)}" for d, v in by_domain.items() if d != "overall"))
            bars[f"{name}: {view}"] = {d: (v["mean"], v["se"]) for d, v in by_domain.items() if d != "overall"}
    atomic_write_text(out / "views.txt", "\n".join(lines) + "\n")
    plot_domain_bars(bars, out / "views.png", title="Dependence on each input source (test Dice per domain)")


register_analysis(Analysis(
    name="views", function=view_dependence, help="test Dice with all inputs, the image masked, the features masked (Figure 4)",
    description=first_paragraph(__doc__), out_help="analysis folder (views.csv, summary.json, views.txt, views.png)",
    report=read_text_report("views.txt"),
))
