"""The one OpenVINO compile step: the runtime backend and the benchmarks compile a .onnx here. openvino is an
optional extra (`pip install 'siefpn-deploy[openvino]'`), imported on first use.

Two runtimes compile a .onnx here, each with its arithmetic named (`INFERENCE_PRECISION_HINT`), never left to
the plugin's default:
- `openvino`: FP32 (`f32`). On CPUs with AVX512-BF16 or AMX, OpenVINO's CPU plugin otherwise runs an FP32 model
  in bfloat16 (its default on this project's CI machine), which is faster but is another precision: parity and
  bench would compare bf16 against FP32 without saying so.
- `openvino-bf16`: the same graph computed in bfloat16 (`bf16`): FP32's exponent range, 8 mantissa bits. Its
  parity rows are held to their own budget (`parity.check.budget_name`): a bf16 row is "openvino-bf16 fp32",
  an FP32 graph computed in bf16, or "openvino-bf16 int8", NNCF's INT8 with its non-quantized remainder in
  bf16. It is offered only where bf16 is native, and refused with a one-line CannotRunHere elsewhere, on
  three checks in turn:
  1. `core.cpu.native_bf16()`: the CPU's AVX512-BF16 or AMX units, or what SIEFPN_CPU_BF16 says. =0 turns
     the runtime off, also on a CPU that has the units (the suite's FP32 leg, or a user who wants no bf16 row).
  2. OpenVINO's own view: "BF16" among the CPU plugin's OPTIMIZATION_CAPABILITIES. SIEFPN_CPU_BF16=1 on a CPU
     without the units stops here: OpenVINO does not emulate bf16, it silently compiles FP32 under the bf16 hint
     (seen with OpenVINO 2026.4 on an AMD EPYC without AVX-512), and a row named bf16 that computed FP32 would
     be a false figure. The override can take bf16 away; it cannot add it.
  3. The compiled model's own INFERENCE_PRECISION_HINT must read bf16, for the same reason.
A backend compiles the graph as exported (dynamic batch and size) first, and a canvas shape that comes FIX_AFTER
calls in a row gets a compile of its own with that shape fixed (`static`): OpenVINO's CPU plugin then skips its per-call shape
inference and picks kernels for the shape (the demo's NNCF INT8 RetinaNet at 320: 11.6 -> 9.8 ms a call,
benchmarks/results/openvino_shapes_cpu.md).
The compiled model is cached on disk (`CACHE_DIR`, in the user cache folder; bf16 in a folder of its own, so
that an FP32 compile can never load a bf16 blob or the other way round), so a second process that opens the
same file skips compilation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cpu import BF16_ENV, bf16_units, native_bf16
from .errors import CannotRunHere, UserError
from .fileio import user_cache_dir
from .sidecar import read_meta

RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")  # what runs a .onnx (`--runtime`)
OPENVINO_PRECISION = {"openvino": "f32", "openvino-bf16": "bf16"}  # an OpenVINO runtime's INFERENCE_PRECISION_HINT
STATIC_SHAPES = 4  # shapes an OpenVINO backend compiles fixed, each a full compiled copy of the model
FIX_AFTER = 3  # calls in a row with one shape before a backend compiles it fixed
MISSING = "OpenVINO is not installed: pip install 'siefpn-deploy[openvino]'"


def own_runtime(meta: dict[str, Any]) -> str:
    """The runtime a .onnx is meant for: the one meta.json names (`runtime`: `optimize` writes the runtime that
    won), else OpenVINO for NNCF's INT8 (`quantize --target openvino`), else ONNX Runtime (either runs any of the
    project's graphs)."""
    if meta.get("runtime") in RUNTIMES:
        return meta["runtime"]
    return "openvino" if (meta.get("quantization") or {}).get("target") == "openvino" else "onnxruntime"


# What runs each .onnx: the same runtimes for every file, one tuple per file (`optimize`'s candidates), or None
# (each in its own)
Runtimes = tuple[str, ...] | Mapping[Path, tuple[str, ...]] | None


def runtimes_for(path: Path, runtimes: Runtimes) -> tuple[str, ...]:
    """The runtimes an artifact runs in: for a .onnx each of `runtimes` (or of its own entry when `runtimes` maps
    files), or with none given its own; anything else has one runtime of its own (passed as onnxruntime, which
    `Detector.from_path` takes for a non-.onnx)."""
    if Path(path).suffix != ".onnx":
        return ("onnxruntime",)
    given = runtimes.get(Path(path)) if isinstance(runtimes, Mapping) else runtimes
    return given or (own_runtime(read_meta(path)),)


def runtime_order(runtimes: Runtimes) -> tuple[str, ...]:
    """The order a report lists one file's runtimes in: as given, or RUNTIMES'."""
    return RUNTIMES if runtimes is None or isinstance(runtimes, Mapping) else runtimes


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise CannotRunHere(MISSING) from None
    return openvino


def bf16_refusal(core: Any | None = None) -> str | None:
    """Why openvino-bf16 cannot run here, in one line, or None: check 1 of the module docstring, and with `core`
    (an `openvino.Core`) check 2."""
    if not native_bf16():
        return (f"openvino-bf16 is turned off here by {BF16_ENV}=0" if bf16_units() else
                "openvino-bf16 needs a CPU that computes bf16 natively (AVX512-BF16 or AMX); this one has neither")
    if core is not None and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        forced = "" if bf16_units() else f" ({BF16_ENV}=1 cannot add bf16 units)"
        return ("openvino-bf16: OpenVINO's CPU plugin does not compute bf16 on this CPU (no BF16 in its "
                f"OPTIMIZATION_CAPABILITIES){forced}; it would run FP32 under that name")
    return None


def compile_onnx(path: str | Path, *, precision: str = "f32", threads: int | None = None,
                 cache_dir: Path | None = None, static: Mapping[str, tuple[int, ...]] | None = None) -> Any:
    """`path` read and compiled for OpenVINO's CPU plugin in `precision` (f32, or bf16 where it is native: else a
    one-line CannotRunHere); a file OpenVINO refuses is a one-line UserError naming it. `static` maps every input
    name to one shape: the model is compiled for those shapes only (`runtime.backends.OpenVINOBackend`)."""
    if precision not in OPENVINO_PRECISION.values():
        raise UserError(f"OpenVINO precision must be one of {', '.join(OPENVINO_PRECISION.values())}, got {precision!r}")
    if precision == "bf16" and (refusal := bf16_refusal()):  # before importing OpenVINO: SIEFPN_CPU_BF16=0 needs none
        raise CannotRunHere(refusal)
    ov = require_openvino()
    core = ov.Core()
    if precision == "bf16" and (refusal := bf16_refusal(core)):
        raise CannotRunHere(refusal)
    cache = cache_dir or user_cache_dir() / "openvino"
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision,
                              "CACHE_DIR": str(cache if precision == "f32" else cache / precision)}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        model = core.read_model(str(path))
        if static:
            model.reshape({name: list(shape) for name, shape in static.items()})
        compiled = core.compile_model(model, "CPU", config)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError/GeneralFailure with multi-line text
        raise UserError(f"OpenVINO cannot load {path}: {str(e).strip().splitlines()[0]}") from None
    computed = compiled.get_property("INFERENCE_PRECISION_HINT")
    if precision == "bf16" and computed != ov.Type.bf16:  # check 3: the plugin fell back without saying so
        raise CannotRunHere(f"openvino-bf16: OpenVINO compiled {path} in {computed.get_type_name()}, not bf16, on this "
                            "CPU")
    return compiled
