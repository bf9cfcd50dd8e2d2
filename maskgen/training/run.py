"""One call for the whole user story: train, keep the best checkpoint, test it on every test domain."""

from __future__ import annotations

from typing import Any

from maskgen.training.config import TrainConfig
from maskgen.training.trainer import Trainer


def train_and_test(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, test: bool = True,
                   progress: bool = True, given: set[str] | None = None) -> dict[str, Any]:
    """``given``: the settings the user gave (checked against the saved run on ``resume``; None: all)."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite, progress=progress, given=given)
    result = trainer.run()
    test_cases = [c for c in trainer.spec.split("test") if c.label is not None]
    if test and test_cases:
        from maskgen.evaluation.testing import score_cases
        from maskgen.inference.predict import Predictor

        predictor = Predictor(trainer.run_dir, checkpoint="best", device=cfg.device)
        res = score_cases(predictor, test_cases, trainer.run_dir / "test", trainer.cfg.label_names or {},
                        overwrite=True, progress=progress)
        result["test_summary"] = res["summary"]
        result["test_table"] = res["table"]
    return result
