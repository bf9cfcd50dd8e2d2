"""Analyses of trained models and of their inputs (``maskgen analyze ...``); each module registers its
declaration (``maskgen.analysis.registry``), and ``analyses()`` loads them all."""

from __future__ import annotations

import importlib

from maskgen.analysis import registry
from maskgen.analysis.registry import Analysis, Option
from maskgen.analysis.stability import (
    DEFAULT_GAMMAS,
    RAW_IMAGE,
    foreground_mask,
    format_table,
    linear_cka,
    read_pairs,
    stability_report,
)

#: the modules that declare an analysis, in the order ``maskgen analyze --help`` lists them
ANALYSIS_MODULES = ("stability", "views", "robustness", "flatness", "gradients", "adaptation", "qc")


def analyses() -> dict[str, Analysis]:
    """Every declared analysis by name (imports each analysis module once)."""
    for module in ANALYSIS_MODULES:
        importlib.import_module(f"maskgen.analysis.{module}")
    declared = registry.ANALYSES
    return {name: declared[name] for name in ANALYSIS_MODULES if name in declared} | declared


__all__ = [
    "ANALYSIS_MODULES",
    "DEFAULT_GAMMAS",
    "RAW_IMAGE",
    "Analysis",
    "Option",
    "analyses",
    "foreground_mask",
    "format_table",
    "linear_cka",
    "read_pairs",
    "stability_report",
]
