"""Test a trained run on labelled cases: predict in each case's own geometry, score, group by domain.

``train_and_test`` is the whole user story of ``maskgen train``: train, keep the best checkpoint, test it.
It lives here, above both training and inference, so neither of those imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from maskgen.data.nnunet import Case
from maskgen.data.volumes import load_volume
from maskgen.evaluation.evaluate import case_row, format_table, nnunet_summary, summarize, write_metrics
from maskgen.inference.predict import Predictor, write_mask
from maskgen.metrics import confusion_per_class, drop_ignored
from maskgen.runtime.config import TrainConfig
from maskgen.training.trainer import Trainer


def train_and_test(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, test: bool = True,
                   progress: bool = True, given: set[str] | None = None) -> dict[str, Any]:
    """Train, then score the best checkpoint on the labelled test cases (``given``: see ``Trainer``)."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite, progress=progress, given=given)
    result = trainer.run()
    if not trainer.dist.is_main:  # under torchrun, rank 0 alone tests the run
        return result
    test_cases = [c for c in trainer.spec.split("test") if c.label is not None]
    if test and test_cases:
        predictor = Predictor(trainer.run_dir, checkpoint="best", device=trainer.cfg.device)
        res = score_cases(predictor, test_cases, trainer.run_dir / "test", trainer.cfg.label_names or {},
                          overwrite=True, progress=progress)
        result["test_summary"] = res["summary"]
        result["test_table"] = res["table"]
    return result


def labelled_test_cases(cfg: TrainConfig, run: str | Path) -> list[Case]:
    """The run's labelled test cases, split exactly as its training split them (for analyses of a run)."""
    from maskgen.data.nnunet import load_dataset

    spec = load_dataset(cfg.dataset, splits_file=cfg.splits, train_subjects=cfg.train_subjects, seed=cfg.seed,
                        check=False)
    cases = [c for c in spec.split("test") if c.label is not None]
    if not cases:
        raise ValueError(f"{run}: the run's dataset {cfg.dataset} has no labelled test cases")
    return cases


def score_cases(
    predictor: Predictor,
    cases: Sequence[Case],
    out_dir: str | Path,
    label_names: dict[str, int],
    compute_hd95: bool = True,
    save_predictions: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    keep: Sequence[str] = (),
) -> dict[str, Any]:
    """Predict and score each case; writes ``metrics_per_case.csv``, ``summary.json`` (and the masks).

    ``keep`` names cases whose prediction arrays are returned (for figures).
    """
    out_dir = Path(out_dir)
    ignore = predictor.cfg.ignore_value
    fg = {k: int(v) for k, v in label_names.items() if int(v) != 0 and int(v) != ignore}
    rows, kept, confusions = [], {}, []
    for case in tqdm(cases, desc="test", disable=not progress):
        if case.label is None:
            continue
        labels, _, original = predictor.predict_file(case.images)
        ref_img = load_volume(case.label)
        ref = np.asarray(ref_img.dataobj).reshape(labels.shape).astype(np.int64)
        labels_scored, ref = drop_ignored(labels, ref, ignore)
        spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
        rows.append(case_row(case.case_id, case.domain, labels_scored, ref, spacing, fg, compute_hd95))
        confusions.append((f"predictions/{case.case_id}.nii.gz", str(case.label),
                           confusion_per_class(labels_scored, ref, list(fg.values()))))
        if save_predictions:
            write_mask(labels, original, out_dir / "predictions" / f"{case.case_id}.nii.gz")
        if case.case_id in keep:
            kept[case.case_id] = labels
    if not rows:
        return {"rows": [], "summary": None, "table": "no labelled test cases", "predictions": kept}
    summary = summarize(rows, fg)
    summary.update(nnunet_summary(confusions))
    write_metrics(rows, summary, fg, out_dir, compute_hd95=compute_hd95, overwrite=overwrite)
    return {"rows": rows, "summary": summary, "table": format_table(summary), "predictions": kept}
