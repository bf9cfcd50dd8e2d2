"""Test-time adaptation for ``maskgen predict --tta NAME``: one small module per method, in a registry."""

from maskgen.inference.tta import alpha, recalibrate, sfb, tent  # noqa: F401  (registration)
from maskgen.inference.tta.base import TTA, TTAS, TTAOption, build_tta, register_tta, tta_options

__all__ = ["TTA", "TTAS", "TTAOption", "build_tta", "register_tta", "tta_options"]
