"""The one ONNX Runtime session factory: export verification, the FP16 range check, the runtime and the
benchmarks all open sessions here. onnxruntime is imported on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def providers_for(device: str) -> list[str]:
    """CUDA/TensorRT execution providers where this onnxruntime has them and a GPU is asked for, else CPU."""
    import onnxruntime as ort
    import torch

    if device not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
    if device == "cuda" and not (gpu and torch.cuda.is_available()):
        raise UserError("--device cuda: this onnxruntime has no CUDA provider or there is no GPU; use --device cpu")
    return (gpu if torch.cuda.is_available() else []) + ["CPUExecutionProvider"]


def ort_session(model: str | Path | bytes, *, device: str = "cpu", threads: int | None = None,
                optimize: bool = True, source: str | None = None, spin_after_run: bool = True) -> Any:
    """An InferenceSession on a path or serialized model; `optimize=False` keeps every node (no fusion),
    so each intermediate tensor can be read. A model ONNX Runtime refuses is a one-line UserError.
    `spin_after_run=False` stops the intra-op workers when a run ends: by default (ONNX Runtime's) they spin on
    their cores for a while after it, waiting for the next, which a process that runs other work between runs on
    those cores (another runtime, decoding) pays for."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    if threads:
        options.intra_op_num_threads = threads
    if not spin_after_run:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = providers_for(device)
    name = source or (str(model) if not isinstance(model, bytes) else "the ONNX model")
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise UserError(f"ONNX Runtime cannot load {name}: {str(e).strip().splitlines()[0]}") from None
