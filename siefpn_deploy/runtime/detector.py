"""`Detector`: one interface for every artifact (checkpoint, .onnx, .pt2, .plan).

    det = Detector.from_path("export/demo.onnx")                 # or engines/NAME.plan, or a .pth
    det = Detector.from_path("export/demo.onnx", runtime="openvino")  # the same graph in OpenVINO (CPU)
    det = Detector.from_path("export/demo.onnx", runtime="openvino-bf16")  # computed in bf16 (native bf16 CPUs)
    det = Detector.from_path("export/demo.int8-ov.onnx")          # NNCF's INT8: OpenVINO, its own runtime
    results = det.predict(["a.jpg", "b.jpg"])                    # paths, HWC arrays or CHW tensors
    results[0].boxes, .scores, .labels, .category_ids, .class_names, .masks

It is `model.predictor.Predictor` (the contract's preprocessing and postprocessing, shared with
training's evaluation) with constructors for each artifact kind. Results are in original image pixels;
labels follow `core.contract` (1..C); Mask R-CNN masks are pasted at image resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.config import config_from_dict, load_config
from ..core.contract import GraphContract
from ..core.errors import UserError
from ..core.openvino import OPENVINO_PRECISION, RUNTIMES, STATIC_SHAPES, own_runtime
from ..core.sidecar import ENGINE_SUFFIX, PACKAGE_SUFFIX, read_meta, resolve_artifact
from ..model.checkpoint import load_checkpoint, load_trained_detector
from ..model.predictor import Detections, Predictor
from .backends import OnnxRuntimeBackend, OpenVINOBackend, PackageBackend, TensorRTBackend

__all__ = ["Detections", "Detector"]

CHECKPOINT_SUFFIXES = (".pth", ".pt")


def engine_model_meta(engine_meta: dict[str, Any]) -> dict[str, Any]:
    """The model meta of an engine, with its runnable shapes taken from the engine's own profile."""
    lo, hi = engine_meta["profile"]["min"], engine_meta["profile"]["max"]
    shapes = {name: {"min": lo[axis], "max": hi[axis]} for name, axis in (("batch", 0), ("height", 2), ("width", 3))}
    return {**engine_meta["model"], "shapes": shapes}


class Detector(Predictor):
    @classmethod
    def from_path(cls, path: str | Path, *, device: str = "auto", config: str | Path | None = None,
                  threads: int | None = None, runtime: str | None = None, spin_after_run: bool = True,
                  fix_shapes: bool = True) -> Detector:
        """`.onnx` (ONNX Runtime, or OpenVINO on the CPU with runtime="openvino" in FP32 or "openvino-bf16" in bf16
        where the CPU computes it natively, else CannotRunHere; by default the file's own,
        `core.openvino.own_runtime`), `.pt2` (AOTInductor package), `.plan` (TensorRT), or `.pth` (PyTorch;
        `config` or the config.yaml beside it), or a folder `optimize` wrote (its best.*). device: auto, cpu or
        cuda. `spin_after_run=False`: ONNX Runtime's workers stop when a run ends (`core.ort.ort_session`).
        `fix_shapes=False`: OpenVINO never compiles a repeated canvas shape of its own (`OpenVINOBackend`), for
        images of mixed sizes."""
        path = resolve_artifact(path)
        if runtime not in (None, *RUNTIMES):
            raise UserError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime not in (None, "onnxruntime") and path.suffix != ".onnx":
            raise UserError(f"--runtime {runtime} runs .onnx files; {path} is not one")
        if path.suffix == ".onnx":
            meta = read_meta(path)
            contract = GraphContract.from_meta(meta, source=str(path))
            runtime = runtime or own_runtime(meta)
            if runtime in OPENVINO_PRECISION:
                if device == "cuda":
                    raise UserError(f"--runtime {runtime} runs on the CPU here; use --device cpu or auto")
                return cls(OpenVINOBackend(path, contract, threads=threads, runtime=runtime,
                                           static_shapes=STATIC_SHAPES if fix_shapes else 0), meta, path)
            return cls(OnnxRuntimeBackend(path, contract, device=device, threads=threads,
                                          spin_after_run=spin_after_run), meta, path)
        if path.suffix == PACKAGE_SUFFIX:
            meta = read_meta(path)
            compiled_for = meta["export"]["device"]
            if device not in ("auto", compiled_for):
                raise UserError(f"{path} was compiled for {compiled_for}; it cannot run on --device {device}")
            contract = GraphContract.from_meta(meta, source=str(path))
            return cls(PackageBackend(path, contract, compiled_for), meta, path)
        if path.suffix == ENGINE_SUFFIX:
            from ..tensorrt.plan import read_engine_meta

            engine_meta = read_engine_meta(path)
            return cls(TensorRTBackend(path, engine_meta), engine_model_meta(engine_meta), path)
        if path.suffix in CHECKPOINT_SUFFIXES:
            return cls.from_checkpoint(path, config=config, device=device)
        raise UserError(f"unknown artifact {path}: expected .onnx, {PACKAGE_SUFFIX}, {ENGINE_SUFFIX} or a .pth checkpoint")

    @classmethod
    def from_checkpoint(cls, weights: Path, *, config: str | Path | None, device: str = "auto",
                        overrides: Sequence[str] = (), autocast_dtype: torch.dtype | None = None,
                        cuda_graphs: bool = False) -> Detector:
        """PyTorch eager; on CUDA optionally under autocast (e.g. torch.float16) and with the backbone and
        neck replayed as CUDA graphs (see model/cuda_graphs.py)."""
        weights = Path(weights)
        overrides = [*overrides, "MODEL.WEIGHTS", str(weights)]
        if config is None:
            stored = load_checkpoint(weights).get("config")
            if not stored:
                raise UserError(f"{weights} stores no config; pass the config it was trained with")
            cfg = config_from_dict(stored, str(weights), overrides)  # training and convert store the full config
            config = weights
        else:
            cfg = load_config(config, overrides)
        detector, classes = load_trained_detector(cfg, config_name=str(config))
        torch_device = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
        if device == "cuda" and torch_device.type != "cuda":
            raise UserError("--device cuda: there is no CUDA device here")
        return cls.eager(detector, cfg=cfg, classes=classes, path=weights, device=torch_device,
                         autocast_dtype=autocast_dtype, cuda_graphs=cuda_graphs)
