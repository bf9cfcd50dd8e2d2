"""``maskgen analyze`` is generated from what each analysis declares (``maskgen.analysis.registry``)."""

from __future__ import annotations

import argparse

import pytest

from maskgen.analysis import ANALYSIS_MODULES, Analysis, Option, analyses, registry
from maskgen.analysis.registry import read_text_report, register_analysis
from maskgen.cli import build_parser, main


def _subcommand(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_every_declared_analysis_is_a_subcommand_with_its_declared_flags():
    declared = analyses()
    assert list(declared)[: len(ANALYSIS_MODULES)] == list(ANALYSIS_MODULES)
    analyze = _subcommand(build_parser(), "analyze")
    for name, analysis in declared.items():
        p = _subcommand(analyze, name)
        flags = {s for a in p._actions for s in a.option_strings}
        assert {"--out", "--overwrite"} | {o.flag for o in analysis.options} <= flags, name
        assert ("--checkpoint" in flags) == analysis.model_options, name
        assert ("--tta" in flags) == analysis.tta, name
        positional = [a.dest for a in p._actions if not a.option_strings and a.dest != "help"]
        assert positional == (["runs"] if analysis.runs else []), name


def test_a_new_declaration_gets_its_flags_and_is_called_with_them(tmp_path, capsys, monkeypatch):
    calls = []

    def toy(runs, out, overwrite=False, levels=(), n_draws=1, device="auto", checkpoint="best"):
        calls.append(dict(runs=runs, out=out, overwrite=overwrite, levels=levels, n_draws=n_draws, device=device,
                          checkpoint=checkpoint))
        (tmp_path / "toy.txt").write_text(f"toy report over {len(runs)} runs\n")
        return {}

    monkeypatch.setattr(registry, "ANALYSES", dict(analyses()))  # the real ones, plus the toy for this test only
    register_analysis(Analysis(
        name="toy", function=toy, help="a toy", description="A toy analysis.", out_help="toy folder",
        report=read_text_report("toy.txt"), options=(
            Option("--levels", "levels", (1.0, 2.0), float, "+"),
            Option("--draws", "draws", 3, int, keyword="n_draws", convert=lambda v: v * 10),
        ),
    ))
    assert main(["analyze", "toy", "a", "b", "--out", str(tmp_path), "--draws", "2"]) == 0
    assert calls == [dict(runs=["a", "b"], out=str(tmp_path), overwrite=False, levels=[1.0, 2.0], n_draws=20,
                          device="auto", checkpoint="best")]
    out = capsys.readouterr().out
    assert "toy report over 2 runs" in out and f"written to {tmp_path}" in out
    with pytest.raises(ValueError, match="registered twice"):
        register_analysis(Analysis(name="toy", function=toy, help="", description="", out_help="",
                                   report=read_text_report("toy.txt")))


def test_an_analysis_names_a_missing_or_foreign_run_folder_before_writing(tmp_path, capsys):
    (tmp_path / "not_a_run").mkdir()
    carried = tmp_path / "carried"
    carried.mkdir()
    (carried / "config.yaml").write_text("method: erm\n")
    (carried / "carried_over.json").write_text("{}\n")
    for run, said in ((tmp_path / "gone", "gone: no such run folder"),
                      (tmp_path / "not_a_run", "not_a_run: not a run folder written by maskgen train"),
                      (carried, "checkpoint_best.pt not found (a cell carried over by --resume-from")):
        assert main(["analyze", "views", str(run), "--out", str(tmp_path / "out")]) == 2
        assert said in capsys.readouterr().err, run
    assert not (tmp_path / "out").exists()
