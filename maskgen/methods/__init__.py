"""Training methods, one small module each, in a registry (``--method NAME``)."""

from maskgen.methods import (  # noqa: F401  (registration)
    channel_dropout,
    concat,
    cutout,
    dsbn,
    erm,
    finetune,
    gin,
    gin_ipa,
    maskgen,
    mixstyle,
    mixup,
    reps_only,
    rsc,
    se_fusion,
)
from maskgen.methods.base import METHODS, HParam, Method, build_method, method_hparams, register_method

__all__ = ["METHODS", "HParam", "Method", "build_method", "method_hparams", "register_method"]
