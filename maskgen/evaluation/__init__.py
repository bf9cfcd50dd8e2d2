"""Evaluation: per-class metrics, folder scoring with per-domain summaries (plots live in ``.plots``)."""

from maskgen.evaluation.evaluate import (
    case_row,
    evaluate_folder,
    format_table,
    read_splits,
    summarize,
    write_metrics,
)
from maskgen.metrics import dice_per_class, hd95_per_class

__all__ = [
    "case_row",
    "dice_per_class",
    "evaluate_folder",
    "format_table",
    "hd95_per_class",
    "read_splits",
    "summarize",
    "write_metrics",
]
