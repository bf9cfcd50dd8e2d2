"""Run checkpoints: the format tag, and loading that never runs code from the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maskgen.io import load_tagged_checkpoint

CHECKPOINT_FORMAT = "maskgen-checkpoint-v1"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training run's checkpoint, loaded safely (``weights_only=True``) and checked for its format tag."""
    return load_tagged_checkpoint(path, CHECKPOINT_FORMAT, map_location)
