"""``maskgen analyze NAME``: one subcommand per declared analysis (``maskgen.analysis.registry``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskgen.analysis import Analysis, analyses
from maskgen.cli.tta_args import add_tta_args, tta_options_from_args

RUNS_SUFFIX = " (or a maskgen benchmark folder: its selected cells)"


def run_analysis(args: argparse.Namespace) -> int:
    """Call the analysis with one keyword per declared option, then print its report."""
    analysis: Analysis = args.analysis_declaration
    kwargs = dict(analysis.call_kwargs)
    kwargs.update(option.value(args) for option in analysis.options)
    if analysis.model_options:
        kwargs["checkpoint"] = args.checkpoint
    if analysis.model_options or analysis.device_default != "auto":
        kwargs["device"] = args.device
    if analysis.tta:
        kwargs["tta"], kwargs["tta_options"] = args.tta, tta_options_from_args(args)
    positional = [args.runs] if analysis.runs is not None else []
    result = analysis.function(*positional, out=args.out, overwrite=args.overwrite, **kwargs)
    print(analysis.report(result, Path(args.out)).rstrip("\n"))
    print(f"written to {args.out}")
    return 0


def add_analysis_parser(sub: argparse._SubParsersAction, analysis: Analysis) -> argparse.ArgumentParser:
    p = sub.add_parser(analysis.name, help=analysis.help, description=analysis.description)
    if analysis.runs is not None:
        p.add_argument("runs", nargs="+", help=analysis.runs + RUNS_SUFFIX)
    p.add_argument("--out", required=True, help=analysis.out_help)
    for option in analysis.options:
        option.add_to(p)
    if analysis.tta:
        add_tta_args(p, required=True)
    if analysis.model_options:
        p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    if analysis.model_options or analysis.device_default != "auto":
        help_ = "cpu, auto, cuda, ..." + f" (default {analysis.device_default})"
        p.add_argument("--device", default=analysis.device_default, help=help_)
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    p.set_defaults(func=run_analysis, analysis_declaration=analysis)
    return p


def add_analyze_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``maskgen analyze`` with one subcommand per declared analysis to the ``maskgen`` subparsers."""
    declared = analyses()
    an = sub.add_parser("analyze", help=f"analyses of trained models and their inputs: {', '.join(declared)}")
    asub = an.add_subparsers(dest="analysis", required=True)
    for analysis in declared.values():
        add_analysis_parser(asub, analysis)
    return an
