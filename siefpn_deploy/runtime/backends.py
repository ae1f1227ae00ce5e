"""One backend per artifact kind. Each runs a preprocessed canvas [B,3,H,W] (0..input_scale) and returns
the graph's fixed-size outputs as numpy arrays:

    num_dets [B], boxes [B,K,4] (canvas pixels), scores [B,K], labels [B,K] (1-based, -1 pads),
    masks [B,K,28,28] (Mask R-CNN: the box's mask probabilities)

The PyTorch backend runs the trained detector's own eager modules and postprocessing and pads its
detections into that same layout, so everything downstream is shared.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import CannotRunHere, UserError


class TorchBackend:
    """A checkpoint + its config, eager PyTorch (CPU or CUDA).

    On CUDA it can also run under FP16 autocast (`autocast_dtype=torch.float16`) and replay the backbone
    and neck as CUDA graphs (`cuda_graphs=True`, one capture per input shape; see cuda_graphs.py)."""

    kind = "pytorch"

    def __init__(self, detector: torch.nn.Module, meta: dict[str, Any], device: torch.device, *,
                 autocast_dtype: torch.dtype | None = None, cuda_graphs: bool = False) -> None:
        if (autocast_dtype is not None or cuda_graphs) and device.type != "cuda":
            raise UserError("FP16 autocast and CUDA graphs need a CUDA device; use --device cuda on a GPU machine")
        self.detector = detector.to(device).eval()
        self.meta = meta
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.backbone = None
        if cuda_graphs:
            from ..model.cuda_graphs import GraphedBackbone

            self.backbone = GraphedBackbone(self.detector.backbone, autocast_dtype=autocast_dtype)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def variant(self) -> str:
        """e.g. "fp32", "fp16-autocast", "fp16-autocast+cuda-graphs"."""
        name = "fp32" if self.autocast_dtype is None else f"{str(self.autocast_dtype).removeprefix('torch.')}-autocast"
        name = name.replace("float16", "fp16").replace("bfloat16", "bf16")
        return name + ("+cuda-graphs" if self.backbone is not None else "")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from ..model.inference import detect_on_canvas

        batch = torch.from_numpy(images).to(self.device) / self.meta["preprocess"]["input_scale"]
        autocast = (torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            dets = detect_on_canvas(self.detector, batch, paste_masks=False, backbone=self.backbone)
        k = self.meta["postprocess"]["max_det"]
        b = len(dets)
        out = {"num_dets": np.zeros(b, np.int32), "boxes": np.zeros((b, k, 4), np.float32),
               "scores": np.zeros((b, k), np.float32), "labels": np.full((b, k), -1, np.int32)}
        if "masks" in [o["name"] for o in self.meta["outputs"]]:
            out["masks"] = np.zeros((b, k, 28, 28), np.float32)
        for i, d in enumerate(dets):
            n = len(d["boxes"])
            out["num_dets"][i] = n
            out["boxes"][i, :n] = d["boxes"].cpu().numpy()
            out["scores"][i, :n] = d["scores"].cpu().numpy()
            out["labels"][i, :n] = d["labels"].cpu().numpy()
            if "masks" in out:
                out["masks"][i, :n] = d["masks"][:, 0].cpu().numpy()
        return out


def ort_providers(device: str) -> list[str]:
    """CUDA/TensorRT execution providers where this onnxruntime has them and a GPU is asked for, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if device == "cuda" and not (wanted and torch.cuda.is_available()):
        raise UserError("--device cuda: this onnxruntime has no CUDA provider or there is no GPU; use --device cpu")
    return (wanted if torch.cuda.is_available() else []) + ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    kind = "onnxruntime"

    def __init__(self, path: Path, meta: dict[str, Any], device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=ort_providers(device))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}") from None
        self.meta = meta
        self.names = [o.name for o in self.session.get_outputs()]
        expected = [o["name"] for o in meta["outputs"]]
        if self.names != expected or [i.name for i in self.session.get_inputs()] != ["images"]:
            raise UserError(f"{path} has outputs {self.names}, but its meta.json says {expected}")
        self.providers = self.session.get_providers()

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] != "CPUExecutionProvider"

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(None, {"images": np.ascontiguousarray(images, np.float32)})))


class TensorRTBackend:
    """A serialized engine, run with TensorRT's runtime on torch CUDA tensors (no pycuda needed)."""

    kind = "tensorrt"
    on_gpu = True

    def __init__(self, path: Path, engine_meta: dict[str, Any]) -> None:
        if not torch.cuda.is_available():
            raise CannotRunHere(f"cannot run the TensorRT engine {path} here: no CUDA device (this machine has no "
                                "GPU); run the .onnx with ONNX Runtime instead")
        from ..tensorrt.builder import load_backend

        try:
            backend = load_backend()
        except UserError as e:
            raise CannotRunHere(str(e)) from None
        if backend.flavour != engine_meta["tensorrt"]["flavour"]:
            raise CannotRunHere(f"{path} was built with {engine_meta['tensorrt']['flavour']}, but {backend.flavour} "
                            "is installed")
        trt = backend.trt
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"{backend.flavour} {backend.version} cannot deserialize {path} "
                            f"(built with {engine_meta['tensorrt']['version']} for another GPU?)")
        self.context = self.engine.create_execution_context()
        self.meta = engine_meta["model"]
        self.outputs = [io["name"] for io in engine_meta["io"] if io["mode"] == "output"]
        self.dtypes = {io["name"]: io["dtype"] for io in engine_meta["io"]}
        self.stream = torch.cuda.Stream()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32,
                       "int64": torch.int64, "bool": torch.bool}
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).cuda(non_blocking=True)
            self.context.set_input_shape("images", tuple(x.shape))
            self.context.set_tensor_address("images", x.data_ptr())
            buffers = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=torch_dtype[self.dtypes[name]], device="cuda")
                self.context.set_tensor_address(name, buffers[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise UserError("TensorRT execution failed")
        self.stream.synchronize()
        return {name: t.cpu().numpy() for name, t in buffers.items()}
