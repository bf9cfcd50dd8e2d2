"""``maskgen export``: one self-contained model file (stable extractor + network) for deployment.

The exported module maps a *preprocessed* window (B, 1, D, H, W) to logits (B, C, D, H, W), exactly what
``maskgen predict`` feeds its sliding window; ``<file>.json`` beside it records that preprocessing (RAS
orientation, spacing, intensity rule, window size, overlap, the label value of each channel), so a
deployment reproduces ``predict`` without maskgen installed. TorchScript is traced; ONNX goes through
``torch.onnx.export`` and is checked with onnxruntime when it is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskgen.data.preprocess import CT_WINDOW
from maskgen.inference.predict import Predictor
from maskgen.io import OutputExistsError, atomic_write, atomic_write_json

FORMATS = ("torchscript", "onnx")


class ExportedSegmenter(nn.Module):
    """The run's extractor and network as one module: preprocessed window -> logits."""

    def __init__(self, method: nn.Module, extractor: nn.Module | None):
        super().__init__()
        self.method = method
        self.extractor = extractor if (extractor is not None and method.uses_features) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.extractor(x) if self.extractor is not None else None
        return self.method(x, feats).float()


def preprocessing_record(pred: Predictor) -> dict[str, Any]:
    cfg = pred.cfg
    modalities = cfg.image_modalities()

    def intensity(modality: str) -> str:
        return (f"clip to {list(CT_WINDOW)} HU, then scale to [0, 1]" if modality.upper() == "CT"
                else "min-max scale the whole volume to [0, 1]")

    return {
        "input": (f"{len(modalities)} channel(s) {cfg.channel_names()}, (B, {len(modalities)}, D, H, W) float32, a "
                  "window of the preprocessed volume"),
        "output": "logits (B, C, D, H, W); softmax over C; channel i is label value class_values[i]",
        "orientation": "RAS (nibabel / MONAI Orientation 'RAS')",
        "spacing_mm": cfg.spacing,
        "intensity": intensity(modalities[0]) if len(modalities) == 1 else
                     {name: intensity(m) for name, m in zip(cfg.channel_names(), modalities)},
        "window": cfg.patch_size,
        "sliding_window": {"overlap": pred.overlap, "blend": "gaussian (MONAI sliding_window_inference)"},
        "class_values": cfg.channel_values(),
        "label_names": cfg.label_names,
        "back_to_input_grid": "resample the probabilities (bilinear) onto the input's grid, then argmax",
        "method": cfg.method, "extractor": cfg.extractor if pred.extractor is not None else None,
        "checkpoint_step": pred.step,
    }  # fmt: skip


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "torchscript", checkpoint: str = "best",
               overwrite: bool = False, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write the model to ``out`` (and ``out.json``); returns the record, with the largest difference between
    the exported model and the run's own forward pass on a random window (must be within ``tolerance``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    sidecar = out.with_name(out.name + ".json")
    for p in (out, sidecar):
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p}: already exists; pass --overwrite to replace it")
    pred = Predictor(run_dir, checkpoint=checkpoint, device="cpu")
    # plain layout: predict's channels-last CPU layout is a speed choice that ONNX cannot express
    module = ExportedSegmenter(pred.method, pred.extractor).to(memory_format=torch.contiguous_format).eval()
    example = torch.rand(1, len(pred.cfg.image_modalities()), *pred.cfg.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(example)
        if fmt == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            got = traced(example)
            _check(got, expected, tolerance, out)
            atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp)))
        else:
            atomic_write(out, lambda tmp: _export_onnx(module, example, tmp))
            got = _run_onnx(out, example)
            if got is not None:
                _check(got, expected, tolerance, out)
    record = {"format": fmt, "file": out.name, **preprocessing_record(pred),
              "max_abs_difference_to_run": None if got is None else float((got - expected).abs().max())}
    atomic_write_json(sidecar, record)
    return record


def _check(got: torch.Tensor, expected: torch.Tensor, tolerance: float, out: Path) -> None:
    diff = float((torch.as_tensor(got) - expected).abs().max())
    if not diff <= tolerance:
        raise ValueError(f"{out}: the exported model differs from the run by {diff:.3g} (> {tolerance}); not written")


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    axes = {0: "batch", 2: "d", 3: "h", 4: "w"}
    torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": axes, "logits": axes}, opset_version=17, dynamo=False)


def _run_onnx(path: Path, example: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort
    except ImportError:  # checked where onnxruntime is installed (the tests install it)
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.as_tensor(sess.run(["logits"], {"image": example.numpy().astype(np.float32)})[0])
