"""Fine-tuning the stable extractor itself (paper appendix B.3): ``finetune_decoder`` and ``finetune_extractor``.

Why: foundation-model weights are a good initialisation, so the obvious alternative to MaskGen is to
fine-tune the extractor network on the segmentation task. The paper shows this loses the robustness (Table
7: F.T. Decoder / F.T. Extractor below MaskGen everywhere): an in-domain ERM loss gives no reason to keep
the domain-stable behaviour. These ablations reproduce it.

The method gets the run's extractor through ``Method.attach_extractor`` (the trainer and the predictor call
it for every method) and trains a *copy* of the extractor's network (the frozen extractor is untouched), so
its state dict, and thus every checkpoint, holds the fine-tuned weights and ``maskgen predict`` rebuilds
the same network. The image UNet is not used. Network: the extractor network up to the extractor's
feature layer (anatomix: the configured ``--extractor-layer``, default the penultimate block, index 59;
the layers after it are unused and stay as loaded), the extractor's per-sample instance normalisation,
then a 1x1x1 convolution head to the class logits.

- ``finetune_decoder``: the encoder half (everything before the first upsampling: stem, encoder levels and
  bottleneck) is frozen, parameters and BatchNorm statistics (kept in eval mode); the decoder and the head
  train.
- ``finetune_extractor``: the whole network and the head train.

Needs an extractor with a network (``unet``) in anatomix's layout (``upsample_indices``, ``forward(x,
layers=..., encode_only=True)``); weight-free extractors (mind, none) raise a clear error.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from maskgen.extractors.base import instance_normalize
from maskgen.methods.base import Method, register_method


class FineTuneNet(nn.Module):
    """Extractor network up to ``layer`` -> (instance norm) -> 1x1x1 conv head; optionally frozen encoder."""

    def __init__(self, unet: nn.Module, layer: int, channels: int, n_classes: int, size_multiple: int = 1,
                 normalize: bool = True, freeze_encoder: bool = False):
        super().__init__()
        self.unet = unet
        self.layer = int(layer)
        self.normalize = normalize
        self.size_multiple = int(size_multiple)
        self.head = nn.Conv3d(channels, n_classes, 1)
        self.n_frozen = int(unet.upsample_indices[0]) if freeze_encoder else 0
        if freeze_encoder and self.layer < self.n_frozen:
            raise ValueError(f"extractor layer {self.layer} lies in the encoder (before index {self.n_frozen}): "
                             "fine-tuning the decoder would train nothing but the head; choose a decoder layer")
        for p in unet.parameters():
            p.requires_grad_(True)
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @property
    def encoder(self) -> nn.Sequential:
        """The frozen part (empty unless ``freeze_encoder``)."""
        return self.unet.model[: self.n_frozen]

    def train(self, mode: bool = True) -> FineTuneNet:
        super().train(mode)
        self.encoder.eval()  # frozen BatchNorm statistics too
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"the extractor network needs spatial sizes divisible by {m}, got {tuple(x.shape[2:])}")
        feats = self.unet(x, layers=[self.layer], encode_only=True)[0]
        if self.normalize:
            feats = instance_normalize(feats)
        return self.head(feats)


class _FineTune(Method):
    uses_features = False
    needs_extractor = True
    freeze_encoder = False

    def build_network(self) -> None:
        return None  # built from the extractor in attach_extractor

    def attach_extractor(self, extractor: nn.Module | None) -> None:
        unet = getattr(extractor, "unet", None)
        usable = (isinstance(unet, nn.Module) and hasattr(unet, "upsample_indices")
                  and hasattr(extractor, "layer") and any(True for _ in unet.parameters()))
        if not usable:
            got = "no extractor" if extractor is None else f"extractor {getattr(extractor, 'name', extractor)!r}"
            raise ValueError(
                f"method {self.name!r} fine-tunes the extractor's own network, so it needs a network extractor "
                f"such as anatomix (--extractor anatomix --extractor-weights anatomix.pth); got {got}, which has "
                "no trainable network"
            )
        self.network = FineTuneNet(
            copy.deepcopy(unet), extractor.layer, extractor.out_channels, self.n_classes,
            size_multiple=getattr(extractor, "size_multiple", 1), normalize=getattr(extractor, "normalize", True),
            freeze_encoder=self.freeze_encoder,
        ).train(self.training)

    def _net(self) -> FineTuneNet:
        if self.network is None:
            raise ValueError(f"method {self.name!r} has no network yet: attach a network extractor such as "
                             "anatomix first (Method.attach_extractor)")
        return self.network

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return self._net()(image)

    def training_loss(self, image, features, target, criterion):
        return criterion(self._net()(image), target), {}


@register_method("finetune_decoder")
class FineTuneDecoder(_FineTune):
    freeze_encoder = True


@register_method("finetune_extractor")
class FineTuneExtractor(_FineTune):
    freeze_encoder = False
