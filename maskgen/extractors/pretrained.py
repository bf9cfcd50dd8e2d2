"""Extractors from weight files: our own pretrained UNet ("maskgen-synth") and any TorchScript module.

``maskgen-synth`` loads a checkpoint written by ``maskgen pretrain-extractor`` (an anatomix-architecture UNet
pretrained contrastively on procedural label ensembles, see :mod:`maskgen.extractors.pretrain`): a small
file holding only the network weights and its constructor arguments, readable with
``torch.load(weights_only=True)``. Without ``--extractor-weights`` it uses the checkpoint shipped with the
package at ``maskgen/extractors/weights/maskgen-synth.pt``.

``torchscript`` wraps any ``torch.jit.save``'d module mapping (B, 1, D, H, W) to (B, C, D, H, W); its
channels and input-size constraints are found by probing it on small inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskgen.extractors.anatomix import AnatomixExtractor, AnatomixUNet
from maskgen.extractors.base import StableExtractor, register_extractor

EXTRACTOR_FORMAT = "maskgen-extractor-v1"
#: checkpoints shipped with the package, selectable by extractor name
WEIGHTS_DIR = Path(__file__).parent / "weights"


def shipped_weights(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def save_extractor_checkpoint(
    path: str | Path, unet: AnatomixUNet, arch: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
    layer: str | int = "final",
) -> Path:
    """Write the weights-only extractor file (atomically): format tag, ``arch`` kwargs, ``state_dict``, ``meta``."""
    from maskgen.io import atomic_torch_save

    sd = {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()}
    obj = {"format": EXTRACTOR_FORMAT, "arch": dict(arch), "layer": layer, "state_dict": sd, "meta": dict(meta or {})}
    out = atomic_torch_save(obj, path)
    out.chmod(0o644)  # meant to be shared or shipped (the atomic temp file is private)
    return out


def load_extractor_checkpoint(path: str | Path) -> tuple[AnatomixUNet, dict[str, Any]]:
    """The UNet of a ``maskgen pretrain-extractor`` checkpoint (eval mode) and the checkpoint minus its weights."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"extractor checkpoint not found at {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # TorchScript archive, pickled module, corrupt file, LFS pointer, ...
        raise ValueError(
            f"could not read {str(path)!r} as a weights-only torch checkpoint ({type(e).__name__}: {e}); "
            "for a TorchScript file use --extractor torchscript"
        ) from e
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != EXTRACTOR_FORMAT:
        hint = " (it looks like a plain state_dict: official anatomix weights go with --extractor anatomix)" if (
            isinstance(ckpt, Mapping) and ckpt and all(torch.is_tensor(v) for v in ckpt.values())
        ) else ""
        raise ValueError(
            f"{str(path)!r} is not a maskgen extractor checkpoint (format {EXTRACTOR_FORMAT!r}, written as "
            f"extractor.pt by `maskgen pretrain-extractor`){hint}"
        )
    try:
        unet = AnatomixUNet(**ckpt["arch"])
        unet.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise ValueError(f"{str(path)!r}: extractor checkpoint does not match its architecture: {e}") from e
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return unet.eval(), info


@register_extractor("maskgen-synth")
class SynthPretrainedExtractor(AnatomixExtractor):
    """Our own anatomix-style UNet, pretrained by ``maskgen pretrain-extractor`` on procedural data only.

    ``weights``: an ``extractor.pt`` written by that command; default the shipped
    ``maskgen/extractors/weights/<name>.pt``. ``layer`` as for anatomix; default "final", the network output
    that the contrastive loss shaped at full resolution (its channels = the checkpoint's ``output_nc``).
    Input is expected min-max normalised to [0, 1]. Channels and size constraints come from the checkpoint.
    """

    # class-level values for the default architecture (depth 3); instances take them from their checkpoint
    out_channels = 16
    size_multiple = 8
    min_size = 16

    def __init__(
        self,
        weights: str | Path | None = None,
        layer: int | str | None = None,
        tile_size: int = 128,
        tile_overlap: float = 0.25,
    ):
        StableExtractor.__init__(self)
        if weights is None:
            path = shipped_weights(self.name)
            if not path.is_file():
                raise FileNotFoundError(
                    f"the {self.name!r} extractor has no shipped checkpoint yet (expected {str(path)!r}): train one "
                    f"with `maskgen pretrain-extractor OUT_DIR` and pass `--extractor-weights OUT_DIR/extractor.pt`, "
                    f"or copy that file to {str(path)!r}"
                )
        else:
            path = Path(weights).expanduser()
        self.unet, self.checkpoint_info = load_extractor_checkpoint(path)
        self.variant = self.name
        self.weights = str(path)
        self._configure(self.checkpoint_info.get("layer", "final") if layer is None else layer, tile_size,
                        tile_overlap)
        self.freeze()


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not torch.is_tensor(out):
        raise TypeError(f"the module returned {type(out).__name__}, not a tensor (or a tuple starting with one)")
    return out


def _int_attr(module: nn.Module, name: str) -> int | None:
    try:
        v = getattr(module, name)
    except (AttributeError, RuntimeError):
        return None
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


@register_extractor("torchscript")
class TorchScriptExtractor(StableExtractor):
    """Any TorchScript module file as g(x): (B, 1, D, H, W) in [0, 1] -> (B, C, D, H, W) features.

    ``out_channels`` is measured by a forward pass on a small random input. The input-size constraints are
    read from integer module attributes ``size_multiple`` / ``min_size`` when the module has them, else
    probed: the smallest working cube among 4, 8, ..., ``probe_max`` is ``min_size`` and the smallest
    step above it that works again is ``size_multiple``. The module may also return a tuple; its first
    element is used. A module that cannot run on CPU at load time (e.g. traced on CUDA) can be given both
    constraints and ``out_channels`` to skip probing.
    """

    out_channels = 0

    def __init__(
        self,
        weights: str | Path | None = None,
        layer: int | str | None = None,
        out_channels: int | None = None,
        size_multiple: int | None = None,
        min_size: int | None = None,
        probe_max: int = 128,
    ):
        super().__init__()
        if layer is not None:
            raise ValueError("the torchscript extractor has no layers to choose from; drop --extractor-layer")
        if weights is None:
            raise FileNotFoundError("the torchscript extractor needs a module file: pass --extractor-weights FILE.pt")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript module not found at {str(path)!r}")
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; it still loads
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # not a TorchScript archive
            raise ValueError(
                f"could not load {str(path)!r} as a TorchScript module (a file written by torch.jit.save of a "
                f"scripted or traced module): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
                "A `maskgen pretrain-extractor` checkpoint goes with --extractor maskgen-synth"
            ) from e
        self.module = module
        self.weights = str(path)
        self.freeze()
        self.size_multiple = size_multiple or _int_attr(module, "size_multiple") or 0
        self.min_size = min_size or _int_attr(module, "min_size") or 0
        if out_channels is not None and self.size_multiple and self.min_size:
            self.out_channels = int(out_channels)
            return
        self._probe_constraints(probe_max)
        if out_channels is not None and out_channels != self.out_channels:
            raise ValueError(f"{str(path)!r} returns {self.out_channels} channels, not the {out_channels} stated")

    def _try(self, size: int) -> tuple[int | None, str]:
        x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                out = _first_tensor(self.module(x))
        except Exception as e:  # noqa: BLE001 - any failure means "this size does not work"
            return None, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        if out.ndim != 5 or out.shape[0] != 1 or tuple(out.shape[2:]) != (size,) * 3:
            return None, f"output shape {tuple(out.shape)} for input {tuple(x.shape)} (need (1, C, {size}, {size}, {size}))"
        if out.shape[1] < 1:
            return None, "no output channels"
        return int(out.shape[1]), ""

    def _probe_constraints(self, probe_max: int) -> None:
        m0, n0 = self.size_multiple, self.min_size  # stated constraints (0: unknown)
        cands = {s for s in (4, 8, 16, 32, 64, 128, 256) if s <= max(4, probe_max)}
        if n0:
            cands.add(-(-n0 // (m0 or 1)) * (m0 or 1))
        sizes = sorted(s for s in cands if s >= n0 and (not m0 or s % m0 == 0))
        channels, why, first = None, "", 0
        for s in sizes:
            channels, why = self._try(s)
            if channels is not None:
                first = s
                break
        if channels is None:
            raise ValueError(
                f"TorchScript module {self.weights!r} did not produce (1, C, S, S, S) features for a (1, 1, S, S, S) "
                f"input at S in {sizes}; last error: {why}"
            )
        self.out_channels = channels
        if not self.min_size:
            self.min_size = first
        if not self.size_multiple:
            self.size_multiple = first
            for m in (1, 2, 4, 8, 16, 32, 64):
                if m > first:
                    break
                if self._try(first + m)[0] == channels:
                    self.size_multiple = m
                    break

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        out = _first_tensor(self.module(x))
        if out.ndim != 5 or out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"TorchScript extractor returned shape {tuple(out.shape)} for input {tuple(x.shape)}; it must keep "
                "the batch and spatial size"
            )
        return out
