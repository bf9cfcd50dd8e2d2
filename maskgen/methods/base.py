"""The training-method interface, DomainBed style: a method owns its network and turns a batch into a loss.

The trainer only calls ``training_loss`` and, at inference, ``forward(image, features)`` (plus
``attach_extractor(extractor)`` once, right after construction, for every method); everything
method-specific (what the network reads, masking, mixing, extra passes) lives in the method's module.
A method declares its hyper-parameters in ``HPARAMS`` so the CLI can expose them as flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskgen.models import UNet
from maskgen.registry import Registry


@dataclass(frozen=True)
class HParam:
    default: Any
    help: str
    choices: tuple | None = None

    @property
    def type(self) -> type:
        return type(self.default)


METHODS: Registry = Registry("method")
register_method = METHODS.register

IMAGE_NORMS = ("none", "instance")
#: declared by the methods that read [image, features]. Why: the features are instance-normalised (unit
#: variance per channel) while the image keeps its [0, 1] intensities, whose variation inside the body can
#: be 20x smaller; under Adam every weight moves about lr per step, so an input 20x smaller steers the
#: first layer 20x slower and the network learns the features first. ``instance`` puts the image on the
#: features' scale (per sample and channel, over the patch or window the network reads).
IMAGE_NORM = HParam("none", "normalise the image like the features before concatenating them: none (the paper "
                            "and reference code: [0, 1] intensities) or instance (zero mean, unit std per sample "
                            "and channel)", IMAGE_NORMS)


def build_method(name: str, **kwargs) -> Method:
    return METHODS.lookup(name)(**kwargs)


def method_hparams(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's hyper-parameters: declared defaults updated by ``overrides``.

    A key the method does not declare is an error: silently dropping it would train something else
    than what was asked for.
    """
    cls = METHODS.lookup(name)
    hp = {k: v.default for k, v in cls.HPARAMS.items()}
    unknown = sorted(k for k, v in (overrides or {}).items() if k not in hp and v is not None)
    if unknown:
        declared = ", ".join(sorted(hp)) or "none"
        raise ValueError(f"method {name!r} has no hyper-parameter {', '.join(map(repr, unknown))} "
                         f"(it declares: {declared})")
    for k, v in (overrides or {}).items():
        if k in hp and v is not None:
            choices = cls.HPARAMS[k].choices
            if choices is not None and v not in choices:
                raise ValueError(f"method {name!r}: {k} must be one of {', '.join(map(str, choices))}, got {v!r}")
            hp[k] = v
    return hp


class Method(nn.Module):
    """Base: a UNet on the image alone (ERM behaviour). Subclasses override what they change."""

    name = "base"
    #: does the method read the stable extractor's features?
    uses_features: bool = False
    #: does the method need the extractor object itself (handed over by ``attach_extractor``), e.g. to
    #: fine-tune its network? The trainer then builds the extractor even when features are not read.
    needs_extractor: bool = False
    HPARAMS: dict[str, HParam] = {}
    #: names of the diagnostics ``training_loss`` may return; the trainer logs them as ``log.csv`` columns
    DIAGNOSTICS: tuple[str, ...] = ()

    def __init__(
        self,
        image_channels: int,
        feature_channels: int,
        n_classes: int,
        network: dict[str, Any] | None = None,
        hparams: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.image_channels = image_channels
        self.feature_channels = feature_channels if self.uses_features else 0
        self.n_classes = n_classes
        self.network_kwargs = dict(network or {})
        self.hparams = method_hparams(self.name, hparams)
        self.network = self.build_network()

    def attach_extractor(self, extractor: nn.Module | None) -> None:
        """Called by the trainer and the predictor for every method, right after construction and before any
        checkpoint is loaded, with the run's extractor (None without one). Default: nothing to do."""

    @property
    def in_channels(self) -> int:
        return self.image_channels + self.feature_channels

    def build_network(self) -> nn.Module:
        return UNet(self.in_channels, self.n_classes, **self.network_kwargs)

    @property
    def size_multiple(self) -> int:
        return getattr(self.network, "size_multiple", 1)

    def compose(self, image: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """The network input at inference."""
        if not self.uses_features:
            return image
        if features is None:
            raise ValueError(f"method {self.name!r} needs stable features")
        if self.hparams.get("image_norm", "none") == "instance":
            image = F.instance_norm(image, eps=1e-5)
        return torch.cat([image, features], dim=1)

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(self.compose(image, features))

    def training_loss(
        self,
        image: torch.Tensor,
        features: torch.Tensor | None,
        target: torch.Tensor,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one batch; ``target`` holds integer labels of shape (B, 1, D, H, W)."""
        logits = self.network(self.compose(image, features))
        loss = criterion(logits, target)
        return loss, {}
