"""A run's method and extractor, built from its configuration: the same objects for training and inference."""

from __future__ import annotations

from typing import Any

from maskgen.extractors import build_extractor
from maskgen.extractors.base import StableExtractor
from maskgen.extractors.channelwise import ChannelwiseExtractor, feature_reads
from maskgen.methods import METHODS, build_method
from maskgen.methods.base import Method
from maskgen.runtime.config import TrainConfig


def build_extractor_from_config(cfg: TrainConfig) -> StableExtractor | None:
    cls = METHODS[cfg.method]
    if not (cls.uses_features or cls.needs_extractor):
        return None
    kwargs: dict[str, Any] = {}
    if cfg.extractor_weights is not None:
        kwargs["weights"] = cfg.extractor_weights
    if cfg.extractor_layer is not None:
        kwargs["layer"] = cfg.extractor_layer
    extractor = build_extractor(cfg.extractor, **kwargs)
    names = cfg.channel_names()
    if len(names) == 1:
        return extractor
    if cls.needs_extractor:
        raise ValueError(f"method {cfg.method!r} fine-tunes the extractor, which reads one channel; it does not "
                         f"support a {len(names)}-channel dataset ({', '.join(names)})")
    return ChannelwiseExtractor(extractor, feature_reads(cfg.features_from, names)).freeze()


def build_method_from_config(cfg: TrainConfig, extractor: StableExtractor | None = None) -> Method:
    """The configured method, handed the run's extractor (``Method.attach_extractor``) before any checkpoint
    is loaded; a method that needs the extractor object gets one built from ``cfg`` when none is passed."""
    method = build_method(
        cfg.method,
        image_channels=len(cfg.image_modalities()),
        feature_channels=cfg.feature_channels or 0,
        n_classes=cfg.n_classes,
        network=cfg.network_kwargs(),
        hparams=cfg.hparams,
    )
    if extractor is None and method.needs_extractor:
        extractor = build_extractor_from_config(cfg)
    method.attach_extractor(extractor)
    return method
