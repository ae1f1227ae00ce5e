"""The deployed artifacts' backends: ONNX Runtime (or OpenVINO, FP32 or bf16) for .onnx, AOTInductor for .pt2, TensorRT for .plan. Each runs a
preprocessed canvas [B,3,H,W] (0..input_scale) with its image sizes [B,2] and returns the contract's padded outputs
as numpy arrays (`core.contract`); the eager PyTorch backend is `model.inference.EagerBackend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.aoti import load_package
from ..core.contract import INPUT_NAMES, GraphContract, graph_inputs
from ..core.errors import CannotRunHere, UserError
from ..core.openvino import FIX_AFTER, OPENVINO_PRECISION, STATIC_SHAPES, compile_onnx
from ..core.ort import ort_session

Shapes = tuple[tuple[str, tuple[int, ...]], ...]  # a call's input shapes: ((name, shape), ...)


def check_graph_io(path: Path, inputs: list[str], outputs: list[str], contract: GraphContract) -> None:
    if outputs != list(contract.output_names) or inputs != list(INPUT_NAMES):
        raise UserError(f"{path} has inputs {inputs} and outputs {outputs}, but a siefpn-deploy "
                        f"{contract.architecture} graph has {list(INPUT_NAMES)} and {list(contract.output_names)}; "
                        "re-export it with this version")


class OnnxRuntimeBackend:
    kind = "onnxruntime"
    computes_in_torch = False

    def __init__(self, path: Path, contract: GraphContract, device: str = "auto", threads: int | None = None,
                 spin_after_run: bool = True) -> None:
        self.session = ort_session(path, device=device, threads=threads, spin_after_run=spin_after_run)
        self.names = [o.name for o in self.session.get_outputs()]
        check_graph_io(path, [i.name for i in self.session.get_inputs()], self.names, contract)
        self.providers = self.session.get_providers()

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] != "CPUExecutionProvider"

    def run(self, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(None, graph_inputs(images, image_sizes))))


class OpenVINOBackend:
    """The same .onnx compiled by OpenVINO for the CPU (`core.openvino.compile_onnx`): runtime "openvino" computes
    in FP32, "openvino-bf16" in bf16 where the CPU computes it natively (else CannotRunHere). Its `kind` is the
    runtime's name, so bench's variant ("openvino-bf16 fp32") and parity's row join in `parity.rank`. One infer
    request per compiled model, so a backend serves one caller at a time, as ONNX Runtime's session does.

    The graph runs as exported (dynamic shapes) until one input shape comes FIX_AFTER calls in a row (a stream, a
    server's fixed canvas, a benchmark's warm-up); that shape then gets a compile of its own with the shape fixed,
    which OpenVINO runs faster (no shape inference per call), for up to `static_shapes` shapes: each holds a full
    compiled copy of the model, and a compile costs 0.3-1.7 s once. Images of mixed sizes (an evaluation) rarely
    repeat a canvas in a row, and fixing every canvas seen twice doubled a 100-image parity run's time. A shape
    OpenVINO cannot fix stays on the dynamic compile."""

    on_gpu = False
    computes_in_torch = False

    def __init__(self, path: Path, contract: GraphContract, threads: int | None = None,
                 runtime: str = "openvino", static_shapes: int = STATIC_SHAPES) -> None:
        if runtime not in OPENVINO_PRECISION:
            raise UserError(f"OpenVINO runtime must be one of {', '.join(OPENVINO_PRECISION)}, got {runtime!r}")
        self.kind, self.path, self.threads, self.static_shapes = runtime, path, threads, static_shapes
        self.compiled = compile_onnx(path, precision=OPENVINO_PRECISION[runtime], threads=threads)
        self.names = [o.get_any_name() for o in self.compiled.outputs]
        check_graph_io(path, [i.get_any_name() for i in self.compiled.inputs], self.names, contract)
        self.request = self.compiled.create_infer_request()
        self.last: Shapes | None = None  # the previous call's shapes, and how many calls in a row had them
        self.streak = 0
        self.fixed: dict[Shapes, Any] = {}  # shape -> its own infer request, or None where fixing it failed

    def request_for(self, inputs: dict[str, np.ndarray]) -> Any:
        """The infer request for these inputs' shapes: their own compile, made on their FIX_AFTER-th call in a row
        while there is room, else the dynamic one."""
        shapes = tuple((name, tuple(v.shape)) for name, v in inputs.items())
        if shapes in self.fixed:
            return self.fixed[shapes] or self.request
        self.streak = self.streak + 1 if shapes == self.last else 1
        self.last = shapes
        if self.streak >= FIX_AFTER and len(self.fixed) < self.static_shapes:
            try:
                compiled = compile_onnx(self.path, precision=OPENVINO_PRECISION[self.kind], threads=self.threads,
                                        static=dict(shapes))
                self.fixed[shapes] = compiled.create_infer_request()
            except UserError:
                self.fixed[shapes] = None
            return self.fixed[shapes] or self.request
        return self.request

    def run(self, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        inputs = graph_inputs(images, image_sizes)
        request = self.request_for(inputs)
        request.infer(inputs)
        # the request's output buffers are reused by the next call: copy them out
        return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self.names)}


class PackageBackend:
    """An AOTInductor package (NAME.pt2), run in this process by torch's AOTInductor runtime: compiled code,
    no ONNX Runtime. It runs on the device it was compiled for (meta.json export.device)."""

    kind = "aoti"
    computes_in_torch = True

    def __init__(self, path: Path, contract: GraphContract, device: str) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise CannotRunHere(f"{path} was compiled for CUDA and there is no CUDA device here; export a CPU "
                                "package with --format aoti --device cpu")
        self.device = device
        self.run_package = load_package(path, contract.output_names, device=device)

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    def run(self, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return self.run_package(graph_inputs(images, image_sizes))


def check_profile(profile: dict[str, list[int]], shape: tuple[int, ...], *, source: str) -> None:
    """A one-line UserError when [B,3,H,W] lies outside the engine's optimization profile (min..max)."""
    lo, hi = profile["min"], profile["max"]
    if len(shape) != 4 or not all(a <= v <= b for a, v, b in zip(lo, shape, hi)):
        raise UserError(f"{source}: input {list(shape)} is outside the engine's profile {lo} .. {hi}; "
                        "rebuild it with a wider --min-shape/--max-shape")


class TensorRTBackend:
    """A serialized engine, run with TensorRT's runtime on torch CUDA tensors (no pycuda needed). Its shape
    range is the profile it was built with (NAME.engine.json), not the ONNX's exported range."""

    kind = "tensorrt"
    on_gpu = True
    computes_in_torch = False

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
        self.path = path
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"{backend.flavour} {backend.version} cannot deserialize {path} "
                            f"(built with {engine_meta['tensorrt']['version']} for another GPU?)")
        self.context = self.engine.create_execution_context()
        self.profile = engine_meta["profile"]
        self.outputs = [io["name"] for io in engine_meta["io"] if io["mode"] == "output"]
        self.dtypes = {io["name"]: io["dtype"] for io in engine_meta["io"]}
        self.stream = torch.cuda.Stream()

    def run(self, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        check_profile(self.profile, tuple(images.shape), source=str(self.path))
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32,
                       "int64": torch.int64, "bool": torch.bool}
        with torch.cuda.stream(self.stream):
            inputs = {name: torch.from_numpy(v).cuda(non_blocking=True)
                      for name, v in graph_inputs(images, image_sizes).items()}
            for name, x in inputs.items():
                if not self.context.set_input_shape(name, tuple(x.shape)):
                    raise UserError(f"{self.path}: TensorRT refused the {name} shape {list(x.shape)}")
                self.context.set_tensor_address(name, x.data_ptr())
            buffers = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=torch_dtype[self.dtypes[name]], device="cuda")
                self.context.set_tensor_address(name, buffers[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise UserError(f"{self.path}: TensorRT execution failed")
        self.stream.synchronize()
        return {name: t.cpu().numpy() for name, t in buffers.items()}
