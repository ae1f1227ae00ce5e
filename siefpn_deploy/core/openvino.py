"""The one OpenVINO compile step: the runtime backend and the benchmarks compile a .onnx here. openvino is an
optional extra (`pip install 'siefpn-deploy[openvino]'`), imported on first use.

Two choices are made for every caller:
- FP32 arithmetic (`INFERENCE_PRECISION_HINT f32`). On CPUs with AVX512-BF16 or AMX, OpenVINO's CPU plugin
  otherwise runs an FP32 model in bfloat16 (its default on this project's CI machine), which is faster but
  is another precision: parity and bench would compare bf16 against FP32 without saying so.
- The compiled model is cached on disk (`CACHE_DIR`, in the user cache folder), so a second process that
  opens the same file skips compilation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CannotRunHere, UserError
from .fileio import user_cache_dir
from .sidecar import read_meta

RUNTIMES = ("onnxruntime", "openvino")  # what runs a .onnx (`--runtime`)
MISSING = "OpenVINO is not installed: pip install 'siefpn-deploy[openvino]'"


def own_runtime(meta: dict[str, Any]) -> str:
    """The runtime a .onnx is laid out for: OpenVINO for NNCF's INT8 (`quantize --target openvino`), else
    ONNX Runtime (either runs any of the project's graphs)."""
    return "openvino" if (meta.get("quantization") or {}).get("target") == "openvino" else "onnxruntime"


def runtimes_for(path: Path, runtimes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The runtimes an artifact runs in: for a .onnx each of `runtimes`, or with None its own; anything else
    has one runtime of its own (passed as onnxruntime, which `Detector.from_path` takes for a non-.onnx)."""
    if Path(path).suffix != ".onnx":
        return ("onnxruntime",)
    return runtimes or (own_runtime(read_meta(path)),)


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise CannotRunHere(MISSING) from None
    return openvino


def compile_onnx(path: str | Path, *, threads: int | None = None, cache_dir: Path | None = None) -> Any:
    """`path` read and compiled for OpenVINO's CPU plugin in FP32; a file OpenVINO refuses is a one-line
    UserError naming it."""
    ov = require_openvino()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32",
                              "CACHE_DIR": str(cache_dir or user_cache_dir() / "openvino")}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError/GeneralFailure with multi-line text
        raise UserError(f"OpenVINO cannot load {path}: {str(e).strip().splitlines()[0]}") from None
