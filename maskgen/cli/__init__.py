"""The ``maskgen`` command: phantom, train, predict, evaluate, export, demo, analyze, benchmark, pretrain-extractor."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from maskgen import __version__


def _add_method_hparams(p: argparse.ArgumentParser) -> None:
    from maskgen.methods import METHODS

    declared: dict[str, tuple[list[str], object]] = {}  # a flag several methods share is listed once, for all
    for mname, cls in sorted(METHODS.items()):
        for key, hp in cls.HPARAMS.items():
            declared.setdefault(key, ([], hp))[0].append(mname)
    g = p.add_argument_group("method hyper-parameters (used by the methods that declare them)")
    for key, (names, hp) in declared.items():
        g.add_argument(f"--{key.replace('_', '-')}", dest=f"hp_{key}", type=hp.type, default=None,
                       choices=hp.choices, help=f"[{', '.join(names)}] {hp.help} (default {hp.default})")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from maskgen.extractors import EXTRACTORS, extractor_name
    from maskgen.methods import METHODS

    p.add_argument("--method", default="maskgen", choices=sorted(METHODS), help="training method (default maskgen)")
    p.add_argument("--extractor", default="mind", type=extractor_name, metavar="NAME[+NAME...]",
                   help="frozen stable feature extractor: "
                        + ", ".join(sorted(k for k in EXTRACTORS if k != "none"))
                        + "; several joined by '+' (mind+maskgen-synth) concatenate their features (default mind: "
                          "weight-free MIND-SSC, the offline one that measured best out of domain, docs/results.md)")
    p.add_argument("--extractor-weights", default=None,
                   help="weights file for extractors that need one (anatomix.pth; with several extractors, "
                        "NAME=PATH pairs joined by commas). Weights load with "
                        "weights_only=True, but --extractor torchscript runs the file's own code when it loads: "
                        "use trusted files only")
    p.add_argument("--extractor-layer", default=None, help="extractor layer (anatomix: penultimate|final|INDEX)")
    p.add_argument("--features-from", default="all", metavar="all|CHANNEL",
                   help="multi-channel datasets: the extractor reads every channel, each giving its own features "
                        "(default all: a missing channel then takes only its own features away), or one channel "
                        "named by its channel_names entry or index")
    p.add_argument("--steps", type=int, default=250_000, help="training steps (paper: 250000 all-data, 40000 few-shot)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help="crop size (default: the paper's 128^3, clipped to the median image size)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="target voxel spacing in mm, RAS order (default: median of the training images)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--val-every", type=int, default=1000, help="validate (sliding window) every N steps")
    p.add_argument("--base-width", type=int, default=20, help="UNet width at full resolution (reference: 20)")
    p.add_argument("--n-poolings", type=int, default=5, help="UNet poolings (paper: 5)")
    p.add_argument("--aug-prob", type=float, default=0.33, help="probability of each augmentation (paper: 0.33)")
    p.add_argument("--no-flips", dest="flips", action="store_false",
                   help="no flips/rotations (where left and right matter, as for AMOS and TopCoW)")
    p.add_argument("--fg-fraction", type=float, default=0.33, help="share of patches centred on foreground")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--num-workers", type=int, default=1, help="data-loading worker processes")
    p.add_argument("--grad-check-every", type=int, default=0, metavar="K",
                   help="every K steps record the paper's gradient check (B.2) in grad_check.csv; plot it with "
                        "maskgen analyze gradients (default 0: off)")
    _add_method_hparams(p)


def _config_from_args(args: argparse.Namespace, dataset: str, out: str, method: str | None = None):
    from maskgen.runtime.config import TrainConfig

    hparams = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None}
    layer = args.extractor_layer
    if layer is not None and str(layer).lstrip("-").isdigit():
        layer = int(layer)
    return TrainConfig(
        dataset=str(dataset), out=str(out), method=method or args.method, hparams=hparams, extractor=args.extractor,
        extractor_weights=args.extractor_weights, extractor_layer=layer, features_from=args.features_from,
        splits=getattr(args, "splits", None), train_subjects=getattr(args, "train_subjects", None),
        steps=args.steps, batch_size=args.batch_size, patch_size=args.patch_size, spacing=args.spacing, lr=args.lr,
        weight_decay=args.weight_decay, val_every=args.val_every, base_width=args.base_width,
        n_poolings=args.n_poolings, aug_prob=args.aug_prob, flips=args.flips, fg_fraction=args.fg_fraction,
        seed=args.seed, device=args.device, amp=args.amp, num_workers=args.num_workers,
        grad_check_every=args.grad_check_every,
    )


def cmd_phantom(args: argparse.Namespace) -> int:
    from maskgen.data.phantom import generate_phantom

    out = generate_phantom(args.out_dir, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                           shape=tuple(args.shape), spacing=tuple(args.spacing), seed=args.seed,
                           overwrite=args.overwrite, variant=args.variant,
                           channels=None if args.channels is None else [c.strip() for c in args.channels.split(",")])
    print(f"phantom benchmark written to {out}")
    return 0


_NOT_GIVEN = object()


def given_settings(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The config settings the user typed on the command line (abbreviated flags included).

    Found by parsing ``argv`` again with every default replaced by a sentinel, so a flag given with
    its default value still counts as given (``--resume --lr 2e-4`` is checked against the run).
    """
    sub = _subparser(parser, argv)
    saved = [(a, a.default) for a in sub._actions]
    try:
        for a, _ in saved:
            if a.dest not in ("help", "dataset", "out"):
                a.default = _NOT_GIVEN
        ns = parser.parse_args(argv)
    finally:
        for a, d in saved:
            a.default = d
    given = set()
    for dest, value in vars(ns).items():
        if value is _NOT_GIVEN or dest in ("func", "command", "verbose", "resume", "overwrite", "no_test", "config"):
            continue
        given.add("hparams" if dest.startswith("hp_") else dest)
    return given | {"dataset"}


def _subparser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    name = next(t for t in argv if t in action.choices)
    return action.choices[name]


def cmd_train(args: argparse.Namespace) -> int:
    from maskgen.evaluation.testing import train_and_test

    if args.config is not None:
        cfg = _config_from_file(args)
        given = None
    else:
        if args.dataset is None or args.out is None:
            raise ValueError("train needs DATASET and --out (or --config RUN/config.yaml to rerun a run)")
        cfg = _config_from_args(args, args.dataset, args.out)
        given = given_settings(build_parser(), args.argv) if args.resume or args.preset else None
        if args.preset:
            from maskgen.runtime.config import load_preset

            for key, value in load_preset(args.preset).items():  # flags given on the command line win
                if key not in given:
                    setattr(cfg, key, value)
            if not args.resume:
                given = None
    result = train_and_test(cfg, resume=args.resume, overwrite=args.overwrite, test=not args.no_test, given=given)
    args.out = cfg.out
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 alone reports
    print(f"best validation Dice {result['best_val_dice']:.4f} at step {result['best_step']}; run folder {args.out}")
    if "test_table" in result:
        print(result["test_table"])
    return 0


def _config_from_file(args: argparse.Namespace):
    """A saved run's configuration, with the settings given on the command line on top (``--out`` included)."""
    from dataclasses import fields, replace

    from maskgen.runtime.config import TrainConfig

    saved = TrainConfig.load(args.config)
    # what a run fills in when it starts is worked out again from the dataset
    cfg = replace(saved, **dict.fromkeys(TrainConfig.FILLED_AT_START))
    given = given_settings(build_parser(), args.argv) - {"dataset"}
    from_args = _config_from_args(args, args.dataset or cfg.dataset, args.out or cfg.out)
    names = {f.name for f in fields(TrainConfig)}
    for name in given & names:
        value = getattr(from_args, name)
        setattr(cfg, name, {**cfg.hparams, **value} if name == "hparams" else value)
    if args.dataset is not None:
        cfg.dataset = args.dataset
    if args.out is not None:
        cfg.out = args.out
    return cfg


def cmd_predict(args: argparse.Namespace) -> int:
    from maskgen.cli.tta_args import tta_from_args
    from maskgen.inference.predict import Predictor

    tta = tta_from_args(args)
    from maskgen.runtime.sliding import DEFAULT_FEATURE_PASS

    pred = Predictor(args.run, checkpoint=args.checkpoint, device=args.device, feature_mask=args.mask, tta=tta,
                     mirror=args.mirror, feature_pass=args.feature_pass or DEFAULT_FEATURE_PASS, missing=args.missing)
    qc = None
    if args.qc:
        from maskgen.inference.qc import QualityCheck

        qc = QualityCheck(pred, threshold=args.qc_threshold, n_random=args.qc_random_views, maps=args.qc_maps)
    written = pred.predict_to_folder(args.input, args.output, overwrite=args.overwrite,
                                     save_probabilities=args.save_probabilities, qc=qc)
    print(f"wrote {len(written)} files to {args.output}")
    if qc is not None:
        flagged = [r["case"] for r in qc.rows if r["flagged"]]
        print(f"quality check: {len(flagged)} of {len(qc.rows)} case(s) below {args.qc_threshold}"
              + (f": {', '.join(flagged)}" if flagged else "") + f" (scores in {args.output}/qc.csv)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from maskgen.evaluation.evaluate import evaluate_folder, format_table

    summary = evaluate_folder(args.pred, args.labels, out_dir=args.out, splits_file=args.splits,
                              compute_hd95=not args.no_hd95, overwrite=args.overwrite,
                              file_ending=args.file_ending, allow_missing=args.allow_missing,
                              surface_tolerance=args.surface_dice)
    print(format_table(summary))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from maskgen.inference.export import export_run

    rec = export_run(args.run, args.out, fmt=args.format, checkpoint=args.checkpoint, overwrite=args.overwrite)
    diff = rec["max_abs_difference_to_run"]
    print(f"wrote {args.out} ({args.format}) and {args.out}.json (preprocessing)"
          + ("" if diff is None else f"; largest difference to the run's forward pass {diff:.2g}"))
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from maskgen.recipes import convert

    summary = convert(args.name, args.source, args.out, overwrite=args.overwrite, metadata=args.metadata,
                      splits=args.splits, few_shot=args.few_shot)
    for split in ("train", "val", "test"):
        by_domain = summary["counts"].get(split, {})
        print(f"{split:5s} {sum(by_domain.values()):5d}  " + ", ".join(f"{d}: {n}" for d, n in sorted(by_domain.items())))
    for d in summary["differences"]:
        print(f"note: {d}")
    print(f"written to {args.out} (dataset.json, splits.csv, preset.yaml); train with: maskgen train {args.out} "
          f"--splits {args.out}/splits.csv --preset {args.out}/preset.yaml --out RUN")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from maskgen.demo import run_demo

    run_demo(args.out, quick=args.quick, overwrite=args.overwrite, device=args.device, seeds=args.seeds,
             steps=args.steps, val_every=args.val_every, mask_rate=args.mask_rate, base_width=args.base_width,
             patch_size=args.patch_size, jobs=args.jobs)
    return 0




def build_parser() -> argparse.ArgumentParser:
    from maskgen.cli.analyze import add_analyze_parser
    from maskgen.cli.benchmark import add_benchmark_parser
    from maskgen.cli.pretrain import add_pretrain_parser
    from maskgen.cli.tta_args import add_tta_args

    p = argparse.ArgumentParser(prog="maskgen", description=__doc__)
    p.add_argument("--version", action="version", version=f"maskgen {__version__}")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    ph = sub.add_parser("phantom", help="generate the multi-domain phantom benchmark (nnU-Net layout)")
    ph.add_argument("out_dir")
    ph.add_argument("--n-train", type=int, default=8)
    ph.add_argument("--n-val", type=int, default=2)
    ph.add_argument("--n-test", type=int, default=4)
    ph.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    ph.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5])
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--channels", default=None, metavar="T1w,CT",
                    help="the multi-channel variant: each subject in these domains, one channel file each (comma-"
                         "separated, of T1w, T2w, PDw, FLAIR, CT), for training with several channels and "
                         "predict --missing")
    ph.add_argument("--variant", default="edges", choices=["edges", "texture"],
                    help="edges (default): structures differ from their surroundings in intensity; texture: low "
                         "contrast, one texture per structure, partial volume and more noise, so local edges "
                         "(what MIND-SSC captures) no longer suffice")
    ph.add_argument("--overwrite", action="store_true")
    ph.set_defaults(func=cmd_phantom)

    tr = sub.add_parser("train", help="train a model on an nnU-Net-layout dataset, then test it")
    tr.add_argument("dataset", nargs="?", default=None,
                    help="dataset folder with dataset.json, imagesTr, labelsTr, ... (default with --config: the saved one)")
    tr.add_argument("--out", default=None, help="run folder (required unless --config gives one)")
    tr.add_argument("--config", default=None, metavar="RUN/config.yaml",
                    help="rerun a run from its saved configuration; flags given as well override it (give --out "
                         "for a new folder)")
    tr.add_argument("--splits", default=None, help="CSV/JSON assigning cases to train/val/test and domains")
    tr.add_argument("--train-subjects", type=int, default=None, help="few-shot: train on N random subjects")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    tr.add_argument("--no-test", action="store_true", help="skip testing the best checkpoint on the test split")
    tr.add_argument("--preset", default=None, metavar="preset.yaml",
                    help="training settings from a file (maskgen recipe writes the paper's for each dataset); flags "
                         "given as well win")
    _add_train_args(tr)
    tr.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="segment NIfTI files with a trained run")
    pr.add_argument("--run", required=True, help="run folder written by maskgen train")
    pr.add_argument("--input", required=True, nargs="+", help="NIfTI file(s) or folder(s)")
    pr.add_argument("--output", required=True, help="output folder for the masks")
    pr.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    pr.add_argument("--save-probabilities", action="store_true", help="also write probabilities/<case>.nii.gz (4D: X, Y, Z, class)")
    pr.add_argument("--mask", default=None, choices=["image", "features"],
                    help="zero one input source at inference, to measure the model's dependence on it")
    pr.add_argument("--mirror", action="store_true",
                    help="test-time augmentation: average over the 8 flips of the three axes (nnU-Net's mirroring; "
                         "8x slower; off by default)")
    pr.add_argument("--feature-pass", default=None, choices=["window", "volume", "volume-norm"],
                    help="stable features on every sliding window (default, as validation computes them), once per "
                         "voxel a slab at a time and normalised per window (volume: faster, 0.2 GB more), or once "
                         "over the whole volume held in memory (volume-norm); measured in docs/benchmarks.md")
    pr.add_argument("--qc", action="store_true",
                    help="per-case reliability from the partial views (image masked, features masked, random masks "
                         "at the training rate): agreement with the full prediction in qc.csv, low = likely failing; "
                         "needs a method that reads features; 2 + --qc-random-views extra passes per case")
    pr.add_argument("--qc-threshold", type=float, default=0.5, help="flag cases whose qc score is below this (default 0.5)")
    pr.add_argument("--qc-random-views", type=int, default=3, help="random channel masks per case (default 3)")
    pr.add_argument("--qc-maps", action="store_true",
                    help="also write qc/<case>_disagreement.nii.gz: the share of views disagreeing at each voxel")
    pr.add_argument("--missing", nargs="+", default=[], metavar="CHANNEL",
                    help="multi-channel runs: predict without these channels (names from channel_names, or indices); "
                         "their files may be absent, their image is zeros and they give no features, as MaskGen's "
                         "channel masking trained the network for")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--overwrite", action="store_true")
    add_tta_args(pr)
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="Dice and HD95 per case, class and domain")
    ev.add_argument("--pred", required=True)
    ev.add_argument("--labels", required=True)
    ev.add_argument("--splits", default=None, help="CSV/JSON naming each case's domain")
    ev.add_argument("--out", default=None, help="where to write metrics_per_case.csv and summary.json (default --pred)")
    ev.add_argument("--no-hd95", action="store_true")
    ev.add_argument("--file-ending", default=None,
                    help="only score files with this ending (default: dataset.json's file_ending next to --labels, "
                         "else every format maskgen reads: .nii.gz, .nii, .mgz, .mgh, .mha, .mhd, .nrrd, .nhdr)")
    ev.add_argument("--surface-dice", type=float, default=None, metavar="MM",
                    help="also MONAI's normalised surface Dice at this tolerance in mm (summary.json: NSD@MMmm per "
                         "label in metric_per_case, mean and foreground_mean)")
    ev.add_argument("--allow-missing", action="store_true",
                    help="score the predicted cases even if some labels have no prediction (listed in summary.json "
                         "as unscored_cases); without it that is an error")
    ev.add_argument("--overwrite", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="one self-contained model file (extractor + network) for deployment")
    ex.add_argument("run", help="run folder written by maskgen train")
    ex.add_argument("--out", required=True, help="model file to write (its preprocessing goes to OUT.json)")
    ex.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"])
    ex.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    rc = sub.add_parser("recipe", help="one of the paper's six benchmarks, from its public release to nnU-Net layout")
    rc.add_argument("name", choices=["brats", "hvsmr", "prostate", "pandg", "amos", "topcow"])
    rc.add_argument("source", metavar="SOURCE_DIR", help="the release as downloaded")
    rc.add_argument("out", metavar="OUT_DIR", help="nnU-Net v2 raw dataset to write (with splits.csv, preset.yaml)")
    rc.add_argument("--metadata", default=None, help="hvsmr: CSV patient,severity (names each patient's domain)")
    rc.add_argument("--splits", default=None,
                    help="pandg: CSV image,label,split,domain[,subject] (the split rule is not published)")
    rc.add_argument("--few-shot", type=int, default=None, metavar="N",
                    help="the paper's few-shot setting (Table 2): keep the first N training subjects (BraTS: images) "
                         "of the rng(123) shuffle, as the reference does")
    rc.add_argument("--overwrite", action="store_true", help="replace an OUT_DIR an earlier recipe wrote")
    rc.set_defaults(func=cmd_recipe)

    de = sub.add_parser("demo", help="phantom benchmark end to end: ERM vs MaskGen, in- and out-of-domain")
    de.add_argument("--out", default="maskgen_demo")
    de.add_argument("--quick", action="store_true", help="plumbing check only (about 1.5 minutes on 2 CPU cores): a width-4 network, 150 steps, Dice 0 expected")
    de.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: 0)")
    de.add_argument("--steps", type=int, default=None,
                    help="training steps per arm (default 4000: about 23 minutes on 2 CPU cores with the arms "
                         "at once; ERM converges there, MaskGen nearly; docs/results.md)")
    de.add_argument("--val-every", type=int, default=None, help="validate every N steps (default 250)")
    de.add_argument("--mask-rate", type=float, default=None,
                    help="MaskGen's masking rate p (default 0.25: what validation chose from the paper's "
                         "0.25, 0.5, 0.75 in configs/benchmark/phantom_demo.yaml)")
    de.add_argument("--base-width", type=int, default=None,
                    help="UNet base width of both arms (default 8, as the benchmark's phantom_cpu.yaml)")
    de.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                    help="training crop of both arms (default 24 24 24 on the demo's 2.67 mm voxels; "
                         "multiples of 2**poolings = 8)")
    de.add_argument("--jobs", type=int, default=None,
                    help="arms trained at once, each in its own process with its share of the CPU threads "
                         "(default: one per core on a CPU, one on a GPU)")
    de.add_argument("--device", default="auto")
    de.add_argument("--overwrite", action="store_true")
    de.set_defaults(func=cmd_demo)
    add_analyze_parser(sub)
    add_benchmark_parser(sub)
    add_pretrain_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"maskgen {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
