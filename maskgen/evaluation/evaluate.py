"""Score a folder of predicted label maps against reference labels, per case and per domain.

Writes ``metrics_per_case.csv`` (one row per case) and ``summary.json`` (mean ± standard error
per domain and overall). NaN marks "not applicable" (class absent from both prediction and
reference) and is excluded from means; ``inf`` HD95 (class present in only one of them) is also
excluded from means but counted in ``n_nonfinite`` so misses stay visible. In JSON, NaN is
written as ``null`` so the file stays valid JSON.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.data.cases import IGNORE_LABEL
from maskgen.data.volumes import load_volume
from maskgen.io import OutputExistsError, atomic_write_json, atomic_write_text
from maskgen.metrics import (
    confusion_per_class,
    dice_per_class,
    drop_ignored,
    hd95_per_class,
    surface_dice_per_class,
)

log = logging.getLogger(__name__)

METRICS_CSV = "metrics_per_case.csv"
SUMMARY_JSON = "summary.json"
DEFAULT_DOMAIN = "all"


# ------------------------------------------------------------------------------------------ inputs
def _list_cases(folder: Path, file_ending: str | None) -> dict[str, Path]:
    """Case -> file for the volumes in ``folder`` (``file_ending`` None: every format maskgen reads)."""
    from maskgen.data.volumes import strip_ending, volume_ending

    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if file_ending is not None and not p.name.endswith(file_ending):
            continue
        if file_ending is None and volume_ending(p) is None:
            continue
        case = p.name[: -len(file_ending)] if file_ending is not None else strip_ending(p)
        if case in out:
            raise ValueError(f"{p}: case {case!r} appears twice in {folder} (also {out[case].name}); "
                             "keep one file per case or pass --file-ending")
        out[case] = p
    return out


def _labels_from_dataset_json(path: Path) -> dict[str, int]:
    """Read foreground labels from an nnU-Net ``dataset.json`` (v2 ``name: int`` or v1 ``"int": name``)."""
    with path.open() as f:
        labels = json.load(f).get("labels")
    if not labels:
        raise ValueError(f"{path}: no 'labels' entry")
    out: dict[str, int] = {}
    for k, v in labels.items():
        if isinstance(v, bool):
            raise ValueError(f"{path}: label {k!r} has a non-integer value {v!r}")
        if isinstance(v, int):
            name, value = str(k), v
        elif isinstance(v, str) and str(k).lstrip("-").isdigit():
            name, value = v, int(k)
        else:
            raise ValueError(f"{path}: label {k!r}: {v!r} is not supported (region-based labels are not scored here)")
        if value != 0:
            out[name] = value
    return out


def _file_ending_from_dataset_json(path: Path) -> str | None:
    try:
        fe = json.loads(path.read_text(encoding="utf-8")).get("file_ending")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: unreadable dataset.json ({type(e).__name__}: {e})") from e
    return fe if isinstance(fe, str) and fe.startswith(".") else None


def read_splits(path: str | Path, file_ending: str = ".nii.gz") -> dict[str, str]:
    """Case -> domain from a split file, read by the same parser as ``maskgen train --splits``
    (a case listed without a domain gets training's default: ``test`` for test cases, else ``source``)."""
    from maskgen.data.cases import default_domain
    from maskgen.data.splits import read_split_file

    entries = read_split_file(path, file_ending)
    return {e.case: e.domain or default_domain(e.split) for e in entries}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:

    img = load_volume(path)
    data = np.asarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data)
    return data.astype(np.int64, copy=False), img.affine, tuple(float(z) for z in img.header.get_zooms()[: data.ndim])


# ----------------------------------------------------------------------------------------- summary
def mean_se(values: Iterable[float]) -> dict[str, Any]:
    """Mean, SE (ddof=1 std / sqrt(n)) and n over the finite values; None where undefined."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(vals.size)
    mean = float(vals.mean()) if n else None
    se = float(vals.std(ddof=1) / math.sqrt(n)) if n >= 2 else None
    return {"mean": mean, "se": se, "n": n}


def case_mean_se(by_case: dict[str, list[float]]) -> dict[str, Any]:
    """Mean ± SE over cases of each case's mean over its repeats (NaN where every repeat is NaN)."""
    return mean_se(float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for v in by_case.values())


def _group_summary(rows: list[dict], label_names: dict[str, int], with_hd95: bool) -> dict[str, Any]:
    per_class: dict[str, Any] = {}
    for name in label_names:
        entry: dict[str, Any] = {"dice": mean_se(r.get(f"dice_{name}", math.nan) for r in rows)}
        if with_hd95:
            hd = [r.get(f"hd95_{name}", math.nan) for r in rows]
            entry["hd95"] = {**mean_se(hd), "n_nonfinite": int(sum(1 for v in hd if v is not None and math.isinf(v)))}
        per_class[name] = entry
    return {"n": len(rows), "mean_dice": mean_se(r["mean_dice"] for r in rows), "per_class": per_class}


def summarize(rows: list[dict], label_names: dict[str, int], unscored: Iterable[str] = ()) -> dict:
    """Per-domain and overall mean ± SE of each metric; JSON-ready (None instead of NaN).

    ``unscored`` names the cases with a label but no prediction, recorded as ``unscored_cases``.

    Means and SEs use finite values only; ``hd95.n_nonfinite`` counts the ``inf`` values (class
    present in only one of prediction/reference) that were left out. Background is never scored.
    """
    label_names = {str(k): int(v) for k, v in label_names.items() if int(v) != 0}
    with_hd95 = any(k.startswith("hd95_") for r in rows for k in r)
    domains: dict[str, list[dict]] = {}
    for r in rows:
        domains.setdefault(str(r.get("domain", DEFAULT_DOMAIN)), []).append(r)
    return {
        "n_cases": len(rows),
        "label_names": dict(label_names),
        "domains": {d: _group_summary(domains[d], label_names, with_hd95) for d in sorted(domains)},
        "overall": _group_summary(rows, label_names, with_hd95),
        "unscored_cases": sorted(unscored),
    }


def format_stat(stat: dict[str, Any], digits: int = 3) -> str:
    if stat.get("mean") is None:
        return "-"
    s = f"{stat['mean']:.{digits}f}"
    return s + (f" ± {stat['se']:.{digits}f}" if stat.get("se") is not None else "")


def format_table(summary: dict) -> str:
    """Fixed-width text table: one row per domain plus overall; n, mean Dice ± SE, per-class Dice."""
    names = list(summary.get("label_names", {}))
    header = ["domain", "n", "mean Dice ± SE", *names]
    groups = [*summary["domains"].items(), ("overall", summary["overall"])]
    body = [
        [dom, str(g["n"]), format_stat(g["mean_dice"]), *(format_stat({"mean": g["per_class"][n]["dice"]["mean"]}) for n in names)]
        for dom, g in groups
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in body[:-1]), rule, line(body[-1])])


# -------------------------------------------------------------------------------------- evaluation
def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        # repr() keeps full precision and writes nan/inf, which float() reads back.
        w.writerow([repr(float(r[c])) if isinstance(r[c], float) else r[c] for c in columns])
    return buf.getvalue()


def _case_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], labels: list[int], compute_hd95: bool
) -> tuple[dict[int, float], dict[int, float]]:
    dice = dice_per_class(pred, ref, labels)
    hd = hd95_per_class(pred, ref, labels, spacing) if compute_hd95 else {}
    return dice, hd


def _row(
    case: str, domain: str, dice: dict[int, float], hd: dict[int, float], label_names: dict[str, int], compute_hd95: bool
) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case, "domain": domain}
    for name, v in label_names.items():
        row[f"dice_{name}"] = dice.get(v, math.nan)
    if compute_hd95:
        for name, v in label_names.items():
            row[f"hd95_{name}"] = hd.get(v, math.nan)
    vals = [row[f"dice_{n}"] for n in label_names if not math.isnan(row[f"dice_{n}"])]
    row["mean_dice"] = float(np.mean(vals)) if vals else math.nan
    return row


def case_row(
    case: str,
    domain: str,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    label_names: dict[str, int],
    compute_hd95: bool = True,
) -> dict[str, Any]:
    """One ``metrics_per_case.csv`` row: ``case, domain, dice_<name>..., hd95_<name>..., mean_dice``.

    Shared by :func:`evaluate_folder` and in-memory scoring so both produce identical files.
    """
    fg = {str(k): int(v) for k, v in label_names.items() if int(v) != 0}
    dice, hd = _case_metrics(pred, ref, tuple(spacing), list(fg.values()), compute_hd95)
    return _row(case, domain, dice, hd, fg, compute_hd95)


def nnunet_summary(cases: list[tuple[str, str, dict[int, dict[str, float]]]]) -> dict[str, Any]:
    """nnU-Net v2's ``summary.json`` keys from ``(prediction_file, reference_file, confusion_per_class)`` per
    case: ``metric_per_case``, ``mean`` (per label, NaN-skipping mean over cases) and ``foreground_mean``
    (mean of those over labels). Label keys are strings, as nnU-Net writes them; NaN becomes null."""
    per_case = [{"metrics": {str(v): m for v, m in counts.items()}, "prediction_file": pf, "reference_file": rf}
                for pf, rf, counts in cases]
    labels = sorted({v for _, _, counts in cases for v in counts})
    metrics = list(dict.fromkeys(k for _, _, counts in cases for m in counts.values() for k in m))
    mean: dict[str, dict[str, float | None]] = {}
    for v in labels:
        mean[str(v)] = {}
        for k in metrics:
            vals = np.asarray([c[v].get(k, math.nan) for _, _, c in cases if v in c], dtype=float)
            vals = vals[~np.isnan(vals)]
            mean[str(v)][k] = float(vals.mean()) if vals.size else None
    fg = {k: [mean[str(v)][k] for v in labels if mean[str(v)][k] is not None] for k in metrics}
    foreground_mean = {k: (float(np.mean(x)) if x else None) for k, x in fg.items()}
    return {"metric_per_case": _json_nan(per_case), "mean": mean, "foreground_mean": foreground_mean}


def _with_labels(confusions, label_names: dict[str, int]):
    """Every scored label in every case (a label absent from a case's maps is NaN there, as in nnU-Net)."""
    values = [int(v) for v in label_names.values()]

    def empty(n: int) -> dict[str, float]:
        return {"Dice": math.nan, "IoU": math.nan, "FN": 0, "FP": 0, "TN": n, "TP": 0, "n_pred": 0, "n_ref": 0}

    return [(pf, rf, {v: c.get(v) or empty(n) for v in values}) for pf, rf, c, n in confusions]


def _json_nan(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_nan(v) for v in obj]
    return obj


def _check_fresh(out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    csv_path, json_path = out_dir / METRICS_CSV, out_dir / SUMMARY_JSON
    if not overwrite:
        for p in (csv_path, json_path):
            if p.exists():
                raise OutputExistsError(f"{p} already exists; pass overwrite=True (--overwrite) to replace it")
    return csv_path, json_path


def write_metrics(
    rows: list[dict],
    summary: dict,
    label_names: dict[str, int],
    out_dir: str | Path,
    compute_hd95: bool = True,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Atomically write ``metrics_per_case.csv`` and ``summary.json``; refuse to replace them unless ``overwrite``."""
    csv_path, json_path = _check_fresh(Path(out_dir), overwrite)
    names = [n for n, v in label_names.items() if int(v) != 0]
    columns = ["case", "domain", *(f"dice_{n}" for n in names)]
    if compute_hd95:
        columns += [f"hd95_{n}" for n in names]
    columns.append("mean_dice")
    atomic_write_text(csv_path, _csv_text(rows, columns))
    atomic_write_json(json_path, summary)
    return csv_path, json_path


def evaluate_folder(
    pred_dir: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path | None = None,
    splits_file: str | Path | None = None,
    label_names: dict[str, int] | None = None,
    compute_hd95: bool = True,
    file_ending: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    allow_missing: bool = False,
    ignore_value: int | None = None,
    surface_tolerance: float | None = None,
) -> dict:
    """Score every prediction in ``pred_dir`` against the same-named file in ``labels_dir``.

    Returns the summary (the content of ``summary.json``). Raises ValueError if a prediction has
    no label, and if a label has no prediction unless ``allow_missing`` (a silently skipped case
    would bias the means); allowed, the unscored cases are listed in ``summary["unscored_cases"]``.
    ``file_ending`` None takes the dataset.json next to ``labels_dir``, else every format maskgen reads.
    Reference voxels of nnU-Net's ``ignore`` label (from ``label_names`` or ``ignore_value``) are scored
    for no class.
    """
    from tqdm import tqdm

    pred_dir, labels_dir = Path(pred_dir), Path(labels_dir)
    out_dir = Path(out_dir) if out_dir is not None else pred_dir
    for d, what in ((pred_dir, "prediction folder"), (labels_dir, "labels folder")):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: {what} does not exist")
    _check_fresh(out_dir, overwrite)  # fail before the slow part, not after it

    dataset_json = labels_dir.parent / "dataset.json"
    if file_ending is None and dataset_json.is_file():
        file_ending = _file_ending_from_dataset_json(dataset_json)
    preds, refs = _list_cases(pred_dir, file_ending), _list_cases(labels_dir, file_ending)
    if not preds:
        raise ValueError(f"{pred_dir}: no prediction files" + (f" ending in {file_ending!r}" if file_ending else ""))
    missing = sorted(set(preds) - set(refs))
    if missing:
        raise ValueError(
            f"{len(missing)} prediction(s) have no label in {labels_dir}: "
            + ", ".join(preds[c].name for c in missing)
        )
    unpredicted = sorted(set(refs) - set(preds))
    if unpredicted:
        msg = f"{len(unpredicted)} label(s) in {labels_dir} have no prediction in {pred_dir}: " + ", ".join(
            refs[c].name for c in unpredicted
        )
        if not allow_missing:
            raise ValueError(msg + "; predict them, or pass --allow-missing to score the others (the unscored "
                             "cases are then listed in summary.json)")
        warnings.warn(msg + " (not scored; listed in summary.json)", stacklevel=2)

    domains = read_splits(splits_file, file_ending) if splits_file is not None else {}
    if label_names is None and (labels_dir.parent / "dataset.json").is_file():
        label_names = _labels_from_dataset_json(labels_dir.parent / "dataset.json")
    if label_names is not None:
        label_names = {str(k): int(v) for k, v in label_names.items() if int(v) != 0}
        if IGNORE_LABEL in label_names:
            ignore_value = label_names.pop(IGNORE_LABEL) if ignore_value is None else ignore_value
            label_names.pop(IGNORE_LABEL, None)

    per_case: list[tuple[str, dict[int, float], dict[int, float]]] = []
    confusions: list[tuple[str, str, dict[int, dict[str, float]], int]] = []
    seen: set[int] = set()
    if surface_tolerance is not None and not surface_tolerance > 0:
        raise ValueError(f"surface Dice tolerance must be positive (mm), got {surface_tolerance}")
    for case in tqdm(sorted(preds), desc="evaluate", disable=not progress):
        pred, pred_affine, _ = _load(preds[case])
        ref, ref_affine, spacing = _load(refs[case])
        if ignore_value is not None and pred.shape == ref.shape:
            pred, ref = drop_ignored(pred, ref, ignore_value)
        if pred.shape != ref.shape:
            raise ValueError(
                f"{preds[case].name}: prediction shape {pred.shape} differs from label shape {ref.shape}"
            )
        if not np.allclose(pred_affine, ref_affine, rtol=1e-4, atol=1e-3):
            msg = f"{preds[case].name}: prediction affine differs from label affine; scoring in label voxel spacing"
            warnings.warn(msg, stacklevel=2)
        if label_names is not None:
            labels = list(label_names.values())
        else:
            # A label absent from both maps scores NaN either way, so only the values present
            # in this case need computing; the union over cases is taken afterwards.
            labels = [int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0]
            seen.update(labels)
        per_case.append((case, *_case_metrics(pred, ref, spacing, labels, compute_hd95)))
        counts = confusion_per_class(pred, ref, labels)
        if surface_tolerance is not None:  # nnU-Net has no such key; "NSD@<mm>mm" is maskgen's addition
            for v, x in surface_dice_per_class(pred, ref, labels, spacing, surface_tolerance).items():
                counts[v][f"NSD@{surface_tolerance:g}mm"] = x
        confusions.append((str(preds[case]), str(refs[case]), counts, int(ref.size)))

    if label_names is None:
        label_names = {f"label_{v}": v for v in sorted(seen)}

    rows = [
        _row(case, domains.get(case, DEFAULT_DOMAIN), dice, hd, label_names, compute_hd95) for case, dice, hd in per_case
    ]
    summary = summarize(rows, label_names, unscored=unpredicted)
    summary.update(nnunet_summary(_with_labels(confusions, label_names)))
    csv_path, json_path = write_metrics(rows, summary, label_names, out_dir, compute_hd95, overwrite)
    log.info("wrote %s and %s\n%s", csv_path, json_path, format_table(summary))
    return summary
