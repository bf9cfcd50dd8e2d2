"""What each analysis declares, so ``maskgen analyze NAME`` is generated from it (as methods declare HPARAMS).

An analysis module registers one ``Analysis`` with its function and its ``Option``s; the CLI adds a
subcommand per entry of ``ANALYSES`` and calls the function with one keyword per option. Nothing here
imports an analysis, so every analysis module can import this one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Option:
    """One flag of an analysis. ``keyword``: the function's argument it fills (default: the flag's name);
    ``convert``: applied to the parsed value first (e.g. ``NAME=PATH`` strings to a mapping)."""

    flag: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    nargs: int | str | None = None
    choices: Sequence[Any] | None = None
    metavar: str | tuple[str, ...] | None = None
    keyword: str | None = None
    convert: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs = {k: v for k, v in (("type", self.type), ("nargs", self.nargs), ("choices", self.choices),
                                    ("metavar", self.metavar)) if v is not None}
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        parser.add_argument(self.flag, dest=self.dest, default=default, help=self.help, **kwargs)

    def value(self, args: argparse.Namespace) -> tuple[str, Any]:
        value = getattr(args, self.dest)
        return self.keyword or self.dest, value if self.convert is None else self.convert(value)


def read_text_report(name: str) -> Callable[[Any, Path], str]:
    """The report an analysis prints: the ``name`` file it wrote into its folder."""
    return lambda _result, out: (Path(out) / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Analysis:
    """``maskgen analyze NAME``. ``runs``: help of the positional run folders (None: the analysis reads none);
    ``model_options``: ``--checkpoint`` and ``--device`` (the trained models it loads); ``tta``: it takes one
    test-time adaptation with its declared options (``function(..., tta=NAME, tta_options={...})``)."""

    name: str
    help: str
    description: str
    function: Callable[..., Any]
    out_help: str
    report: Callable[[Any, Path], str]
    options: tuple[Option, ...] = ()
    runs: str | None = "run folders written by maskgen train"
    model_options: bool = True
    tta: bool = False
    device_default: str = "auto"
    #: keywords the CLI always passes (e.g. ``verbose=True`` for progress lines)
    call_kwargs: tuple[tuple[str, Any], ...] = ()


ANALYSES: dict[str, Analysis] = {}


def register_analysis(analysis: Analysis) -> Analysis:
    if analysis.name in ANALYSES:
        raise ValueError(f"analysis {analysis.name!r} registered twice")
    ANALYSES[analysis.name] = analysis
    return analysis


def first_paragraph(doc: str | None) -> str:
    return (doc or "").split("\n\n")[0]
