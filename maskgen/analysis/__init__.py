"""Analyses of trained models and of their inputs (``maskgen analyze ...``)."""

from maskgen.analysis.stability import (
    DEFAULT_GAMMAS,
    RAW_IMAGE,
    foreground_mask,
    format_table,
    linear_cka,
    read_pairs,
    stability_report,
)

__all__ = [
    "DEFAULT_GAMMAS",
    "RAW_IMAGE",
    "foreground_mask",
    "format_table",
    "linear_cka",
    "read_pairs",
    "stability_report",
]
