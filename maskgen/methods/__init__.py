"""Training methods, one small module each, in a registry (``--method NAME``)."""

from maskgen.methods import channel_dropout, concat, cutout, erm, gin, maskgen, mixup, reps_only, se_fusion  # noqa: F401  (registration)
from maskgen.methods.base import METHODS, HParam, Method, build_method, method_hparams, register_method

__all__ = ["METHODS", "HParam", "Method", "build_method", "method_hparams", "register_method"]
