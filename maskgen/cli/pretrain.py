"""``maskgen pretrain-extractor``: its flags come from ``PRETRAIN_FLAGS``, declared next to the config."""

from __future__ import annotations

import argparse
from typing import Any

from maskgen.extractors.pretrain import PRETRAIN_FLAGS, PretrainConfig, pretrain_extractor
from maskgen.extractors.pretrain import __doc__ as PRETRAIN_DOC


def add_pretrain_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``maskgen pretrain-extractor`` to the ``maskgen`` subparsers."""
    defaults = PretrainConfig()
    p = sub.add_parser(
        "pretrain-extractor", help="pretrain our own stable extractor (anatomix recipe, procedural data only)",
        description=PRETRAIN_DOC.split("\n\n")[0] + " Writes OUT_DIR/extractor.pt for --extractor maskgen-synth.",
    )  # fmt: skip
    p.add_argument("out_dir", metavar="OUT_DIR", help="run folder")
    for name, (typ, text) in PRETRAIN_FLAGS.items():
        kw: dict[str, Any] = {"choices": ["batch", "instance"]} if name == "norm" else {}
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                       help=f"{text} (default {getattr(defaults, name)})", **kw)
    p.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in OUT_DIR")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly after this many minutes of this invocation (checkpoint written; --resume "
                        "continues), to pretrain in slices")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_pretrain_extractor)
    return p


def cmd_pretrain_extractor(args: argparse.Namespace) -> int:
    given = [k for k in PRETRAIN_FLAGS if getattr(args, k) is not None]
    cfg = PretrainConfig(**{k: getattr(args, k) for k in given})
    result = pretrain_extractor(args.out_dir, cfg, resume=args.resume, overwrite=args.overwrite,
                                progress=args.progress, given=given, max_minutes=args.max_minutes)
    if not result["finished"]:
        print(f"stopped at step {result['steps']} of {result['total_steps']} after --max-minutes {args.max_minutes}; "
              f"continue with: maskgen pretrain-extractor {args.out_dir} --resume")
    print(f"{result['steps']} steps in {result['wall_time_s']:.0f} s; loss {result['loss']:.4f}, "
          f"validation loss {result['val_loss']:.4f}; extractor written to {result['extractor']}")
    return 0
