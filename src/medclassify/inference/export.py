"""Exporting a run's model to ONNX (dynamic batch), with a parity check on the run's own images.

The ONNX graph takes the preprocessed tensor (N, C, H, W) and returns logits, exactly like the
PyTorch model, so the Predictor's preprocessing and temperature apply unchanged, and the penultimate
features as a second output, so the out-of-distribution guard scores alike on both backends (its
scores are part of the parity check). The file is stored
in the run (model.onnx) with export.json (opset, weights version, SHA-256 of the file, parity
figures); the Predictor uses it only while export.json vouches for that very file and the weights
now in the run (exported.py)."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data.images import UnreadableImage
from ..engine import WithFeatures, has_feature_head
from ..errors import ConfigError, RunError
from ..io import atomic_path, check_output_file
from ..reporting import Reporter
from ..run import Run, load_run
from ..training.tracking import run_tracker
from .exported import INT8_FILE, META_FILE, ONNX_FILE, file_sha256, read_export_meta, verified
from .predictor import Predictor, weights_hash

OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| over every class of every checked image
PARITY_IMAGES = 32
OOD_PARITY_TOLERANCE = 1e-3  # max |s_onnx - s_torch| / threshold of the out-of-distribution guard


def _exporter_kwargs() -> dict:
    """The TorchScript exporter unless onnxscript (needed by the dynamo exporter) is installed."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return {"dynamo": False, "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}}}
    return {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},)}


class _FixedAdaptiveAvgPool(torch.nn.Module):
    """AdaptiveAvgPool2d for one known input size, as two small matrix products: the same averages,
    but exportable when the output size does not divide the input size (seed_cnn at most sizes)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        self.register_buffer("rows", self._matrix(in_hw[0], out_hw[0]))
        self.register_buffer("cols", self._matrix(in_hw[1], out_hw[1]))

    @staticmethod
    def _matrix(n_in: int, n_out: int) -> torch.Tensor:
        m = torch.zeros(n_out, n_in)
        for i in range(n_out):  # PyTorch's bins: [floor(i*n/o), ceil((i+1)*n/o))
            lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols.t())


class _StaticSameConv(torch.nn.Conv2d):
    """timm's Conv2dSame (TensorFlow 'SAME' padding computed from the input's shape at run time) for
    one known input size: the padding becomes a constant, so the exported graph has no shape
    arithmetic, ONNX Runtime folds the pad into the convolution, and the graph can be quantised."""

    def __init__(self, conv: torch.nn.Conv2d, in_hw: tuple[int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        pads = []
        for size, k, s, d in zip(in_hw, conv.kernel_size, conv.stride, conv.dilation):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        self.pad = (*pads[1], *pads[0])  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, self.pad), self.weight, self.bias, self.stride,
                                          0, self.dilation, self.groups)


def _is_dynamic_same_conv(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv2dSame" and isinstance(module, torch.nn.Conv2d)


def exportable(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """Fix, for the example's input size, the layers whose ONNX graph would depend on the input
    shape: adaptive average pools whose output size does not divide their input size, and
    TensorFlow-'SAME' convolutions (the tf_efficientnet_lite family)."""
    seen: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, tuple(inp[0].shape[-2:])))
             for name, m in model.named_modules()
             if isinstance(m, torch.nn.AdaptiveAvgPool2d) or _is_dynamic_same_conv(m)]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    for name, in_hw in seen.items():
        module = model.get_submodule(name)
        if _is_dynamic_same_conv(module):
            replacement: torch.nn.Module = _StaticSameConv(module, in_hw)
        else:
            size = module.output_size if isinstance(module.output_size, tuple) else (module.output_size, module.output_size)
            out_hw = tuple(in_hw[i] if s is None else s for i, s in enumerate(size))
            if all(o and i % o == 0 for i, o in zip(in_hw, out_hw)):
                continue
            replacement = _FixedAdaptiveAvgPool(in_hw, out_hw)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, replacement)
    return model


def _ood_parity(run: Run, torch_pred: Predictor, s_torch, s_onnx) -> dict:
    """The guard's scores on both backends agree (relative to the threshold), and its in/out
    decisions are the same for every checked image."""
    if s_torch is None or s_onnx is None:
        return {}
    scale = max(abs(torch_pred.guard.threshold), 1e-12)
    rel = float(np.abs(s_onnx - s_torch).max() / scale)
    t = torch_pred.guard.threshold
    same = float(((s_onnx <= t) == (s_torch <= t)).mean())
    if not rel <= OOD_PARITY_TOLERANCE:
        raise RunError(f"ONNX export of {run.path} gives out-of-distribution scores {rel:.2e} (relative to the threshold) "
                       f"away from PyTorch's (limit {OOD_PARITY_TOLERANCE:.0e}); the new model.onnx was not kept.",
                       "report this model architecture as an export bug; predict uses PyTorch meanwhile.")
    return {"max_rel_ood_score_diff": rel, "ood_agreement": same}


def parity_images(run: Run, n: int = PARITY_IMAGES) -> list[str]:
    """Real images of the run: its test split first, then val and train, files that still exist."""
    out: list[str] = []
    for split in ("test", "val", "train"):
        out += [r.path for r in run.records(split) if Path(r.path).is_file()][: n - len(out)]
        if len(out) >= n:
            break
    return out


def export_onnx(run: Run | str | Path, reporter: Reporter | None = None, images: list[str] | None = None) -> dict:
    """Write model.onnx and export.json into the run after a parity check; returns export.json's content.

    A transaction: the new model is written and checked under a temporary name, and the earlier
    verified model.onnx and export.json stay in place until it has passed (see exported.py)."""

    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX export needs the onnx and onnxruntime packages.", "pip install 'medclassify[export]'.") from None
    reporter = reporter or Reporter(quiet=True)
    run = run if isinstance(run, Run) else load_run(run)
    for name in (ONNX_FILE, META_FILE):
        check_output_file(run.path / name, what="export")
    torch_pred = Predictor(run, backend="torch")
    paths, arrays = [], []
    for p in images if images is not None else parity_images(run):
        try:
            arrays.append(torch_pred.load(p))
            paths.append(p)
        except UnreadableImage:  # checked on the images that can still be read
            continue
    if not paths:
        raise RunError(f"Run {run.path} lists no image that can still be read for the parity check; "
                       "the earlier export, if any, is left as it was.",
                       "restore the dataset the run was trained on, or pass images to check with.")
    prep = run.preprocessing
    dummy = torch.zeros(2, prep.channels, prep.image_size, prep.image_size)
    model = exportable(run.build_model().float().eval(), dummy)
    outputs = ["logits", "features"] if has_feature_head(model) else ["logits"]
    traced = WithFeatures(model).eval() if len(outputs) == 2 else model
    version = weights_hash(run.path)
    kwargs = _exporter_kwargs()
    old = read_export_meta(run.path)
    with atomic_path(run.path / ONNX_FILE) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
            torch.onnx.export(traced, (dummy,), str(tmp), input_names=["input"], output_names=outputs,
                              opset_version=OPSET, do_constant_folding=True, **kwargs)
        batch = np.stack(arrays)
        onnx_pred = Predictor(run, backend="onnx", onnx_file=tmp)
        p_torch, s_torch = torch_pred.outputs(batch)
        p_onnx, s_onnx = onnx_pred.outputs(batch)
        diff = float(np.abs(p_onnx - p_torch).max())
        if not diff <= PARITY_TOLERANCE:
            raise RunError(f"ONNX export of {run.path} differs from PyTorch by {diff:.2e} in probability "
                           f"(limit {PARITY_TOLERANCE:.0e}); the new model.onnx was not kept.",
                           "report this model architecture as an export bug; predict uses PyTorch meanwhile.")
        ood_parity = _ood_parity(run, torch_pred, s_torch, s_onnx)
        meta = {
            "format": "onnx",
            "file": ONNX_FILE,
            "opset": OPSET,
            "exporter": "dynamo" if kwargs.get("dynamo") else "torchscript",
            "input": {"name": "input", "shape": ["batch", prep.channels, prep.image_size, prep.image_size], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(run.classes)]},
            "outputs": outputs,
            "weights_version": version,
            "sha256": file_sha256(tmp),
            "parity": {"status": "passed", "images": len(paths), "max_abs_probability_diff": diff,
                       "tolerance": PARITY_TOLERANCE, "agreement": float((p_onnx.argmax(1) == p_torch.argmax(1)).mean()),
                       **ood_parity},
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "bytes": tmp.stat().st_size,
        }
        if verified(old.get("int8"), run.path / INT8_FILE, version):
            meta["int8"] = old["int8"]  # measured on these same weights: still true of the new float file
        # Both files are complete on disk before either is renamed: export.json, then model.onnx.
        with atomic_path(run.path / META_FILE) as meta_tmp:
            meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    reporter.info(f"Exported {run.path / ONNX_FILE} (opset {OPSET}, dynamic batch); parity on {len(paths)} images: "
                  f"max |p_onnx - p_torch| = {diff:.1e}.")
    run_tracker(run.info, reporter).log_artifacts(run.path, (ONNX_FILE, META_FILE))
    return meta
