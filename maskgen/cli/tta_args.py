"""The ``--tta`` flags of ``maskgen predict`` and ``maskgen analyze adaptation``, made from what each
adaptation declares."""

from __future__ import annotations

import argparse


def add_tta_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--tta NAME`` and one flag per option the adaptations declare (``TTA.OPTIONS``); ``required``: no
    default (``maskgen analyze adaptation`` compares with plain inference, so it needs one named)."""
    from maskgen.inference.tta import TTAS, tta_options

    g = p.add_argument_group("test-time adaptation (a change to the trained model before or per volume; MaskGen "
                             "itself needs none)")
    g.add_argument("--tta", default=None if required else "none", required=required,
                   choices=sorted(n for n in TTAS if not (required and n == "none")),
                   help="; ".join(f"{n}: {c.SUMMARY}"
                                  for n, c in sorted(TTAS.items()) if n != "none") + ("" if required else " (default none)"))
    for key, (flag, typ, uses) in tta_options().items():
        said: dict[str, list[str]] = {}  # one text per distinct help, naming every adaptation that uses it
        for n, h, d in uses:
            said.setdefault(h + ("" if d is None else f" (default {d})"), []).append(n)
        text = "; ".join(f"[{', '.join(names)}] {h}" for h, names in said.items())
        g.add_argument(flag, dest=f"tta_opt_{key}", metavar=key.upper(), type=typ, default=None, help=text)


def tta_from_args(args: argparse.Namespace):
    from maskgen.inference.tta import build_tta

    return build_tta(args.tta, **tta_options_from_args(args))


def tta_options_from_args(args: argparse.Namespace) -> dict:
    return {k[len("tta_opt_"):]: v for k, v in vars(args).items() if k.startswith("tta_opt_")}
