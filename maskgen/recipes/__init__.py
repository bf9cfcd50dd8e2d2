"""``maskgen recipe NAME SOURCE OUT``: the paper's six benchmarks, from their public release to an nnU-Net v2
raw dataset with the paper's split (``splits.csv``) and training settings (``preset.yaml``).

Facts from ``shared/spec/datasets.md``; where the release lacks what the rule needs, the recipe takes a
metadata or split file and says what it must contain.
"""

from maskgen.recipes import datasets  # noqa: F401  (registers the six recipes)
from maskgen.recipes.base import RECIPES, convert

__all__ = ["RECIPES", "convert"]
