"""``maskgen benchmark CONFIG.yaml --out DIR``: the paper's protocol on your datasets, one command."""

from __future__ import annotations

import argparse

from maskgen.benchmark import runner
from maskgen.benchmark.execute import EXECUTORS


def add_benchmark_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "benchmark", help="methods x datasets x seeds, selected on validation, ranked (resumable)",
        description=runner.__doc__.split("\n\n")[0] + " The config format: configs/benchmark/README.md.",
    )  # fmt: skip
    p.add_argument("config", metavar="CONFIG.yaml", help="benchmark configuration (datasets, train, methods)")
    p.add_argument("--out", required=True, help="benchmark folder (cells/, logs/, data/, table.md, ...)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once, each in its own process (default 1)")
    p.add_argument("--devices", default="cpu",
                   help="comma-separated devices the jobs take in turn: cpu, or cuda:0,cuda:1,... (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per job (default: the machine's cores divided by --jobs)")
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local processes (default), slurm through submitit (the config's 'cluster' section gives "
                        "its parameters), or submitit-local (submitit's local executor, for testing)")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the cells that have finished")
    p.add_argument("--export", default=None, metavar="DEST",
                   help="also copy the report and each cell's config.yaml, log.csv, curves and test scores (no "
                        "checkpoints, no predictions) to DEST, e.g. to commit them with your docs")
    p.add_argument("--export-checkpoints", action="store_true",
                   help="with --export: also the checkpoints of cells that have not finished (a few MB each for a "
                        "CPU-sized network), so --resume-from continues them on another machine")
    p.add_argument("--resume-from", default=None, metavar="EXPORT",
                   help="a folder --export wrote (e.g. committed results): its finished cells with this config's "
                        "settings count as done here, so a machine that lost --out trains only the rest")
    p.add_argument("--only", nargs="+", action="extend", default=[], metavar="PATTERN",
                   help="train only the cells whose id matches a shell pattern, e.g. 'phantom/erm/*/seed0' "
                        "'*/maskgen/mask_rate=0.25/*' (ids: DATASET/METHOD/GRID POINT/seedK); the report still "
                        "covers every finished cell; repeating --only adds patterns")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_benchmark)
    return p


def cmd_benchmark(args: argparse.Namespace) -> int:
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if args.export_checkpoints and args.export is None:
        print("maskgen benchmark: --export-checkpoints needs --export DEST")
        return 1
    try:
        report = runner.run_benchmark(args.config, args.out, jobs=args.jobs, devices=devices, threads=args.threads,
                                      executor=args.executor, report_only=args.report_only, progress=args.progress,
                                      export=args.export, resume_from=args.resume_from,
                                      only=args.only, export_checkpoints=args.export_checkpoints)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"maskgen benchmark: {e}")
        return 1
    print(open(f"{args.out}/table.md", encoding="utf-8").read(), end="")
    print(f"{report['cells']['done']} of {report['cells']['total']} cells finished; report in {args.out}")
    return 0
