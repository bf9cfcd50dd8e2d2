"""anatomix (Dey et al.): a 3D UNet pretrained contrastively on synthetic volumes, used frozen as g(x).

Our own implementation, written from the facts in ``shared/spec/anatomix.md``. The network is one flat
``nn.Sequential`` because the official checkpoints (``anatomix.pth``, ``anatomix-dev.pth``) are plain
state_dicts keyed ``model.{index}.…``: matching indices, shapes and dtypes exactly is what lets us load
them with ``strict=True``. Nothing here downloads weights; they must be fetched by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from maskgen.extractors.base import StableExtractor, register_extractor

#: keyword arguments of the released variants (``Unet(...)`` in the official code)
ANATOMIX_VARIANTS: dict[str, dict] = {
    "anatomix": dict(
        dimension=3, input_nc=1, output_nc=16, num_downs=4, ngf=16,
        norm="batch", pooling="Max", interp="nearest", norm_eps=1e-5,
    ),
    "anatomix-dev": dict(
        dimension=3, input_nc=1, output_nc=32, num_downs=5, ngf=32,
        norm="instance", pooling="Avg", interp="trilinear", norm_eps=1e-2,
    ),
}  # fmt: skip

WEIGHTS_HELP = (
    "the official anatomix weights are not bundled and must be downloaded by hand: get `anatomix.pth` "
    "from the GitHub repo neel-dey/anatomix (file `model-weights/anatomix.pth`) or from the HuggingFace "
    "repo `neeldey/anatomix` (`anatomix.pth`; `anatomix-dev.pth` for the 94M variant), then pass it with "
    "`--extractor-weights PATH`"
)

_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


class AnatomixUNet(nn.Module):
    """The anatomix UNet as one flat ``self.model`` Sequential (index layout = checkpoint key layout).

    Layout for ``num_downs = n``: stem conv; encoder level 0 (two more convs, skip after its ReLU);
    then per level a pool and a double conv (skip after the second ReLU); a bottleneck double conv;
    per decoder level an Upsample (followed in ``forward`` by ``cat([skip, up])``) and a double conv;
    a 3x3x3 head conv without norm or activation. Conv bias only with instance norm, as in the original.
    """

    def __init__(
        self,
        dimension: int = 3,
        input_nc: int = 1,
        output_nc: int = 16,
        num_downs: int = 4,
        ngf: int = 16,
        norm: str = "batch",
        pooling: str = "Max",
        interp: str = "nearest",
        norm_eps: float = 1e-5,
        activation: str = "relu",
        pad_type: str = "reflect",
    ):
        super().__init__()
        if dimension != 3:
            raise ValueError("only dimension=3 is implemented")
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        if pooling not in ("Max", "Avg"):
            raise ValueError(f"pooling must be 'Max' or 'Avg', got {pooling!r}")
        if activation != "relu":
            raise ValueError("only activation='relu' is implemented")
        if num_downs < 1:
            raise ValueError("num_downs must be >= 1")
        self.num_downs = num_downs
        self.output_nc = output_nc
        bias = norm == "instance"

        layers: list[nn.Module] = []
        #: per Sequential index: (output channels, downsampling factor relative to the input)
        self.layer_info: list[tuple[int, int]] = []
        #: indices whose output is kept as a skip, and the Upsample indices that consume them (LIFO)
        self.skip_indices: list[int] = []
        self.upsample_indices: list[int] = []

        def add(module: nn.Module, channels: int, factor: int) -> None:
            layers.append(module)
            self.layer_info.append((channels, factor))

        def conv_block(cin: int, cout: int, factor: int) -> None:
            add(
                nn.Conv3d(cin, cout, 3, stride=1, padding="same", bias=bias, padding_mode=pad_type),
                cout,
                factor,
            )
            if norm == "batch":
                add(nn.BatchNorm3d(cout, eps=norm_eps), cout, factor)
            else:
                add(nn.InstanceNorm3d(cout, eps=norm_eps), cout, factor)
            add(nn.ReLU(inplace=True), cout, factor)

        pool = nn.MaxPool3d if pooling == "Max" else nn.AvgPool3d
        chans = [ngf * 2**i for i in range(num_downs + 1)]

        conv_block(input_nc, ngf, 1)  # stem
        conv_block(ngf, ngf, 1)
        conv_block(ngf, ngf, 1)
        self.skip_indices.append(len(layers) - 1)
        for lvl in range(1, num_downs):
            add(pool(2), chans[lvl - 1], 2**lvl)
            conv_block(chans[lvl - 1], chans[lvl], 2**lvl)
            conv_block(chans[lvl], chans[lvl], 2**lvl)
            self.skip_indices.append(len(layers) - 1)
        add(pool(2), chans[num_downs - 1], 2**num_downs)
        conv_block(chans[num_downs - 1], chans[num_downs], 2**num_downs)  # bottleneck
        conv_block(chans[num_downs], chans[num_downs], 2**num_downs)
        for lvl in range(num_downs - 1, -1, -1):
            self.upsample_indices.append(len(layers))
            up = nn.Upsample(scale_factor=2, mode=interp)
            add(up, chans[lvl] + chans[lvl + 1], 2**lvl)  # channels after the skip concat
            conv_block(chans[lvl] + chans[lvl + 1], chans[lvl], 2**lvl)
            conv_block(chans[lvl], chans[lvl], 2**lvl)
        add(
            nn.Conv3d(ngf, output_nc, 3, stride=1, padding="same", bias=bias, padding_mode=pad_type),
            output_nc,
            1,
        )

        self.model = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        """The pretraining init (Kaiming-normal fan_in, BN weight ~ N(1, 0.02)): only matters without weights,
        but keeps activations well scaled through 20 convs so random-weight tests are meaningful."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @property
    def penultimate_index(self) -> int:
        """First conv of the last decoder block (59 for the default): the MaskGen reference config's layer."""
        return self.upsample_indices[-1] + 1

    @property
    def output_index(self) -> int:
        return len(self.model) - 1

    def forward(
        self, x: torch.Tensor, layers: Sequence[int] | None = None, encode_only: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward(x)`` -> output; ``forward(x, layers)`` -> ``(out, feats)``, feats after each listed index
        (after the concat at Upsample indices), in the order given. ``encode_only`` stops after the deepest
        listed index and returns the feats only."""
        n = len(self.model)
        wanted: list[int] = []
        if layers is not None:
            for i in layers:
                j = int(i) + n if int(i) < 0 else int(i)
                if not 0 <= j < n:
                    raise IndexError(f"layer index {i} out of range for {n} layers")
                wanted.append(j)
        keep = set(wanted)
        stop = max(wanted) if (encode_only and wanted) else n - 1
        skips: list[torch.Tensor] = []
        got: dict[int, torch.Tensor] = {}
        skip_set, up_set = set(self.skip_indices), set(self.upsample_indices)
        h = x
        for i, module in enumerate(self.model):
            h = module(h)
            if i in up_set:
                h = torch.cat([skips.pop(), h], dim=1)
            if i in skip_set:
                skips.append(h)
            if i in keep:
                nxt = self.model[i + 1] if i + 1 < n else None
                # the next in-place ReLU would overwrite a kept tensor (e.g. a BN output)
                got[i] = h.clone() if isinstance(nxt, nn.ReLU) and nxt.inplace else h
            if i == stop:
                break
        feats = [got[i] for i in wanted]
        if layers is None:
            return h
        if encode_only:
            return feats  # type: ignore[return-value]
        return h, feats


def build_anatomix(variant: str = "anatomix") -> AnatomixUNet:
    """The UNet of a released variant ("anatomix": 6M, 16 ch; "anatomix-dev": 94M, 32 ch), random weights."""
    if variant not in ANATOMIX_VARIANTS:
        raise ValueError(f"unknown anatomix variant {variant!r}; choose one of {sorted(ANATOMIX_VARIANTS)}")
    return AnatomixUNet(**ANATOMIX_VARIANTS[variant])


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def load_anatomix_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an official (or our own) checkpoint into ``model`` with ``strict=True``; returns ``model``.

    Accepts a plain state_dict or one wrapped under "state_dict"/"model", with or without the
    ``_orig_mod.`` (torch.compile) / ``module.`` (DDP) prefixes. Mismatches are reported by key before
    torch's own, longer error could hide which file was wrong.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"anatomix weights not found at {str(path)!r}: {WEIGHTS_HELP}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a weights-only torch file (pickled module, corrupt, LFS pointer, ...)
        raise ValueError(f"could not read {str(path)!r} as a weights-only torch checkpoint: {e}") from e
    if isinstance(ckpt, Mapping):
        for wrap in ("state_dict", "model"):
            if isinstance(ckpt.get(wrap), Mapping):
                ckpt = ckpt[wrap]
                break
    if not isinstance(ckpt, Mapping) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise ValueError(f"{str(path)!r} does not contain a state_dict of tensors")
    sd = {_strip_prefixes(k): v for k, v in ckpt.items()}

    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in own]
    problems += [
        f"shape {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the model ({len(sd)} keys vs {len(own)} expected; "
            f"anatomix has 115, anatomix-dev 48): {shown}{more}"
        )
    model.load_state_dict(sd, strict=True)
    return model


@register_extractor("anatomix")
class AnatomixExtractor(StableExtractor):
    """Frozen anatomix features at one full-resolution Sequential index.

    ``layer`` default "penultimate" = index 59 for the default variant (the first conv of the last decoder
    block, 16 channels, full resolution), following the MaskGen reference config; "final"/"output" = 65
    (the model output, also 16 channels). Any int index (negative allowed) whose output is at full
    resolution is accepted. Input is expected min-max normalised to [0, 1]. Volumes larger than
    ``tile_size`` (after padding) run by MONAI sliding windows with gaussian blending, as the authors do.
    """

    out_channels = 16
    size_multiple = 16
    min_size = 32  # bottleneck must stay >= 2 voxels for reflect padding
    default_variant = "anatomix"

    def __init__(
        self,
        weights: str | Path | None = None,
        layer: int | str = "penultimate",
        variant: str | None = None,
        tile_size: int = 128,
        tile_overlap: float = 0.25,
        *,
        allow_random: bool = False,
    ):
        super().__init__()
        variant = variant or self.default_variant
        if weights is None and not allow_random:
            raise FileNotFoundError(f"the {variant!r} extractor needs weights: {WEIGHTS_HELP}")
        self.variant = variant
        self.unet = build_anatomix(variant)
        if weights is not None:
            load_anatomix_weights(self.unet, weights)
        self.weights = None if weights is None else str(weights)
        self._configure(layer, tile_size, tile_overlap)
        self.freeze()

    def _configure(self, layer: int | str, tile_size: int, tile_overlap: float) -> None:
        """Pick the feature layer of ``self.unet`` and derive channels, size constraints and tiling from it."""
        self.layer = self._resolve_layer(layer)
        channels, factor = self.unet.layer_info[self.layer]
        if factor != 1:
            raise ValueError(
                f"{self.name} layer {self.layer} is at 1/{factor} resolution; choose a full-resolution layer "
                f"(0-{self.unet.skip_indices[0]}, {self.unet.upsample_indices[-1]}-{self.unet.output_index})"
            )
        self.out_channels = channels
        self.size_multiple = 2**self.unet.num_downs
        self.min_size = 2 * self.size_multiple

        if tile_size % self.size_multiple or tile_size < self.min_size:
            raise ValueError(
                f"tile_size must be a multiple of {self.size_multiple} and >= {self.min_size}, got {tile_size}"
            )
        if not 0.0 <= tile_overlap < 1.0:
            raise ValueError(f"tile_overlap must be in [0, 1), got {tile_overlap}")
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap

    def _resolve_layer(self, layer: int | str) -> int:
        n = len(self.unet.model)
        if isinstance(layer, str):
            names = {
                "penultimate": self.unet.penultimate_index,
                "final": self.unet.output_index,
                "output": self.unet.output_index,
            }
            if layer.lower() not in names:
                raise ValueError(
                    f"unknown anatomix layer name {layer!r}; use {sorted(names)} or an int index"
                )
            return names[layer.lower()]
        idx = int(layer)
        if not -n <= idx < n:
            raise ValueError(f"anatomix layer index {layer} out of range for {n} layers")
        return idx % n

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x, layers=[self.layer], encode_only=True)[0]

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if max(spatial) <= self.tile_size:
            return self._features(x)
        from monai.inferers import sliding_window_inference

        roi = tuple(min(self.tile_size, s) for s in spatial)
        return sliding_window_inference(
            x, roi, sw_batch_size=1, predictor=self._features, overlap=self.tile_overlap, mode="gaussian"
        )


@register_extractor("anatomix-dev")
class AnatomixDevExtractor(AnatomixExtractor):
    """The 94M anatomix-dev UNet (instance norm, 32 channels; "penultimate" = index 73, sizes multiple of 32)."""

    out_channels = 32
    size_multiple = 32
    min_size = 64
    default_variant = "anatomix-dev"
