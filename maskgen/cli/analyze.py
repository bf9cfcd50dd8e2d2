"""``maskgen analyze stability``: linear CKA of extractor features between domains and under gamma."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskgen.analysis.adaptation import __doc__ as ADAPTATION_DOC
from maskgen.analysis.flatness import DEFAULT_SCALES as FLAT_SCALES
from maskgen.analysis.flatness import __doc__ as FLATNESS_DOC
from maskgen.analysis.robustness import DEFAULT_BIAS as ROBUST_BIAS
from maskgen.analysis.robustness import DEFAULT_GAMMAS as ROBUST_GAMMAS
from maskgen.analysis.robustness import __doc__ as ROBUSTNESS_DOC
from maskgen.analysis.stability import (
    DEFAULT_GAMMAS,
    DEFAULT_N_VOXELS,
    MASKS,
    format_table,
    parse_weights,
    stability_report,
)
from maskgen.analysis.stability import __doc__ as STABILITY_DOC
from maskgen.analysis.views import __doc__ as VIEWS_DOC
from maskgen.cli.tta_args import add_tta_args, tta_options_from_args
from maskgen.data.phantom import VARIANTS as PHANTOM_VARIANTS


def cmd_analyze_stability(args: argparse.Namespace) -> int:
    kwargs = parse_weights(args.extractor_weights or [])
    report = stability_report(
        out=args.out, extractors=args.extractors, extractor_kwargs=kwargs, pairs=args.pairs,
        subjects=args.subjects, shape=args.shape, spacing=args.spacing, variant=args.variant, domains=args.domains,
        reference=args.reference, gammas=args.gammas, n_voxels=args.voxels, mask=args.mask, seed=args.seed,
        device=args.device, overwrite=args.overwrite, verbose=True,
    )  # fmt: skip
    print(format_table(report["summary"]))
    print(f"\n{report['summary']['wall_time_s']:.1f} s; report written to {args.out}")
    return 0


def cmd_analyze_views(args: argparse.Namespace) -> int:
    from maskgen.analysis.views import view_dependence

    view_dependence(args.runs, args.out, checkpoint=args.checkpoint, device=args.device, overwrite=args.overwrite)
    print((Path(args.out) / "views.txt").read_text(), end="")
    print(f"written to {args.out}")
    return 0


def cmd_analyze_robustness(args: argparse.Namespace) -> int:
    from maskgen.analysis.robustness import robustness

    robustness(args.runs, args.out, gammas=args.gammas, strengths=args.strengths, fields=args.fields,
               checkpoint=args.checkpoint, device=args.device, overwrite=args.overwrite)
    print((Path(args.out) / "robustness.txt").read_text(), end="")
    print(f"written to {args.out}")
    return 0


def cmd_analyze_flatness(args: argparse.Namespace) -> int:
    from maskgen.analysis.flatness import flatness

    flatness(args.runs, args.out, scales=args.scales, draws=args.draws, checkpoint=args.checkpoint,
             device=args.device, overwrite=args.overwrite)
    print((Path(args.out) / "flatness.txt").read_text(), end="")
    print(f"written to {args.out}")
    return 0


def cmd_analyze_gradients(args: argparse.Namespace) -> int:
    from maskgen.analysis.gradients import gradients

    gradients(args.runs, args.out, overwrite=args.overwrite)
    print((Path(args.out) / "gradients.txt").read_text(), end="")
    print(f"written to {args.out}")
    return 0


def cmd_analyze_qc(args: argparse.Namespace) -> int:
    from maskgen.analysis.qc import qc_validation

    qc_validation(args.runs, args.out, n_random=args.random_views, checkpoint=args.checkpoint, device=args.device,
                  overwrite=args.overwrite)
    print((Path(args.out) / "qc.txt").read_text(), end="")
    print(f"written to {args.out}")
    return 0


def cmd_analyze_adaptation(args: argparse.Namespace) -> int:
    from maskgen.analysis.adaptation import adaptation

    adaptation(args.runs, args.out, args.tta, tta_options_from_args(args), checkpoint=args.checkpoint, device=args.device,
               overwrite=args.overwrite)
    print((Path(args.out) / "adaptation.txt").read_text(), end="")
    print(f"written to {args.out}")
    return 0


def _add_runs(p: argparse.ArgumentParser, runs_help: str, out_help: str) -> None:
    p.add_argument("runs", nargs="+", help=runs_help + " (or a maskgen benchmark folder: its selected cells)")
    p.add_argument("--out", required=True, help=out_help)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")


def add_analyze_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``maskgen analyze`` (with its ``stability`` subcommand) to the ``maskgen`` subparsers."""
    from maskgen.extractors import extractor_name

    an = sub.add_parser("analyze", help="analyses: feature stability (CKA), dependence on each input (views), robustness, flatness, gradients, qc")
    asub = an.add_subparsers(dest="analysis", required=True)
    vw = asub.add_parser("views", help="test Dice with all inputs, the image masked, the features masked (Figure 4)",
                         description=(VIEWS_DOC or "").split("\n\n")[0])
    _add_runs(vw, "run folders written by maskgen train", "analysis folder (views.csv, summary.json, views.txt, views.png)")
    _add_model_options(vw)
    vw.set_defaults(func=cmd_analyze_views)
    rb = asub.add_parser("robustness", help="test Dice under gamma and bias fields of increasing strength",
                         description=(ROBUSTNESS_DOC or "").split("\n\n")[0])
    _add_runs(rb, "run folders written by maskgen train", "analysis folder (robustness.csv, summary.json, .txt, .png)")
    rb.add_argument("--gammas", type=float, nargs="+", default=list(ROBUST_GAMMAS),
                    help=f"gamma levels (default {' '.join(map(str, ROBUST_GAMMAS))})")
    rb.add_argument("--strengths", type=float, nargs="+", default=list(ROBUST_BIAS),
                    help=f"bias field strengths (default {' '.join(map(str, ROBUST_BIAS))})")
    rb.add_argument("--fields", type=int, default=3, help="seeded bias fields per strength (default 3)")
    _add_model_options(rb)
    rb.set_defaults(func=cmd_analyze_robustness)
    fl = asub.add_parser("flatness", help="test Dice after Gaussian noise of increasing scale on all weights (B.7)",
                         description=(FLATNESS_DOC or "").split("\n\n")[0])
    _add_runs(fl, "run folders written by maskgen train", "analysis folder (flatness.csv, summary.json, .txt, .png)")
    fl.add_argument("--scales", type=float, nargs="+", default=list(FLAT_SCALES),
                    help=f"noise scales relative to each weight tensor's norm (default {' '.join(map(str, FLAT_SCALES))})")
    fl.add_argument("--draws", type=int, default=5, help="seeded noise draws per scale (default 5, the paper's)")
    _add_model_options(fl)
    fl.set_defaults(func=cmd_analyze_flatness)
    gr = asub.add_parser("gradients", help="the gradient check (B.2) of runs trained with --grad-check-every",
                         description="Histogram and summary of the cosines in each run's grad_check.csv (the "
                                     "paper's appendix B.2, Figure 8).")
    gr.add_argument("runs", nargs="+", help="run folders trained with maskgen train --grad-check-every K")
    gr.add_argument("--out", required=True, help="analysis folder (gradients.csv, summary.json, .txt, .png)")
    gr.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    gr.set_defaults(func=cmd_analyze_gradients)
    ad = asub.add_parser("adaptation", help="test Dice per domain without and with a test-time adaptation (--tta)",
                         description=(ADAPTATION_DOC or "").split("\n\n")[0])
    _add_runs(ad, "run folders written by maskgen train", "analysis folder (adaptation.csv, summary.json, .txt, .png)")
    add_tta_args(ad, required=True)
    _add_model_options(ad)
    ad.set_defaults(func=cmd_analyze_adaptation)
    qc = asub.add_parser("qc", help="does predict --qc rank failing cases? Spearman with the true Dice on the test set",
                         description="The quality-check score and softmax entropy of each labelled test case of the "
                                     "run, and their Spearman correlation with its true Dice.")
    _add_runs(qc, "run folders of methods that read stable features", "analysis folder (qc_validation.csv, summary.json, qc.txt, qc.png)")
    qc.add_argument("--random-views", type=int, default=3, help="random channel masks per case (default 3)")
    _add_model_options(qc)
    qc.set_defaults(func=cmd_analyze_qc)
    st = asub.add_parser(
        "stability", help="linear CKA of extractor features (and of the raw image) between domains and under gamma",
        description=STABILITY_DOC.split("\n\n")[0] + " Without --pairs, subjects are rendered by the phantom generator.",
    )  # fmt: skip
    st.add_argument("--out", required=True, help="report folder (cka_domains.csv, cka_gamma.csv, summary.json, PNGs)")
    st.add_argument("--extractors", nargs="+", default=["mind"], type=extractor_name,
                    metavar="NAME[+NAME...]",
                    help="extractors to score besides the raw image; a+b scores their concatenated features (default mind)")
    st.add_argument("--extractor-weights", nargs="+", default=None, metavar="NAME=PATH",
                    help="weights file per extractor, e.g. anatomix=anatomix.pth")
    st.add_argument("--pairs", default=None,
                    help="CSV with columns subject,domain,image (co-registered images; default: phantom subjects)")
    st.add_argument("--subjects", type=int, default=3, help="phantom subjects (default 3)")
    st.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"),
                    help="phantom volume shape (default 64 64 64)")
    st.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5], metavar=("X", "Y", "Z"),
                    help="phantom voxel spacing in mm (default 1.5)")
    st.add_argument("--variant", default="edges", choices=PHANTOM_VARIANTS,
                    help="phantom variant (default edges; texture: issue 17's harder test, as maskgen phantom --variant)")
    st.add_argument("--domains", nargs="+", default=None,
                    help="domains to compare (phantom default: T1w T2w PDw FLAIR CT; with --pairs: all listed)")
    st.add_argument("--reference", default=None,
                    help="domain compared with all others and perturbed by gamma (default T1w / first in --pairs)")
    st.add_argument("--gammas", type=float, nargs="+", default=list(DEFAULT_GAMMAS),
                    help=f"gamma perturbations x -> x**gamma (default {' '.join(map(str, DEFAULT_GAMMAS))})")
    st.add_argument("--voxels", type=int, default=DEFAULT_N_VOXELS,
                    help=f"voxels sampled per subject inside the mask (default {DEFAULT_N_VOXELS})")
    st.add_argument("--mask", default="otsu", choices=MASKS,
                    help="where to sample voxels: otsu body mask of the reference image (default), nonzero, all")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, ...")
    st.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    st.set_defaults(func=cmd_analyze_stability)
    return an
