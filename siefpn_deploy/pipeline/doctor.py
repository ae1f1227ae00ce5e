"""`siefpn-deploy doctor`: what each optional piece gives on this machine, and for each missing one, why and
the command that adds it.

Every check imports its backend lazily and catches what a broken install raises (a wheel whose native library
is absent raises on import), so the report itself never fails; it only reads, it never builds or installs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError, one_line

ALL = 'pip install -e ".[all]"'  # the README's first command installs every extra


@dataclass(frozen=True)
class Piece:
    name: str
    ready: bool
    gives: str  # what it provides here, or why it does not
    fix: str = ""  # the command that adds it, where it is missing


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch() -> list[Piece]:
    import torch

    from ..core.cpu import bf16_units, cpu_model

    cpu = f"{cpu_model() or 'CPU'}, {torch.get_num_threads()} threads, bf16 units: {bf16_units() or 'none'}"
    rows = [Piece("PyTorch", True, f"torch {torch.__version__} on {cpu}")]
    if torch.cuda.is_available():
        rows.append(Piece("CUDA", True, f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}); export "
                          "--device cuda, --precision fp16, CUDA graphs, optimize --target cuda"))
    else:
        why = (f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda
               else f"torch {torch.__version__} is a CPU-only build")
        rows.append(Piece("CUDA", False, why, "a machine with an NVIDIA GPU and torch's CUDA wheel"))
    return rows


def _onnxruntime() -> Piece:
    try:
        import onnxruntime
    except ImportError as e:
        return Piece("ONNX Runtime", False, f"not importable ({one_line(e)})", ALL)
    import torch

    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in onnxruntime.get_available_providers())
    # onnxruntime-gpu lists its CUDA and TensorRT providers whether or not a GPU is there
    gpu = "" if torch.cuda.is_available() or providers == "CPU" else " (the GPU ones need a CUDA device: CPU here)"
    return Piece("ONNX Runtime", True, f"{onnxruntime.__version__}, providers {providers}{gpu}: .onnx at FP32, FP16 "
                 "and INT8")


def _openvino() -> Piece:
    from ..core.openvino import MISSING, bf16_refusal

    try:
        import openvino
    except ImportError:
        return Piece("OpenVINO", False, MISSING.split(":")[0], ALL)
    core = openvino.Core()
    refusal = bf16_refusal(core)
    nncf = _version("nncf")
    return Piece("OpenVINO", True, f"{openvino.get_version()} on {', '.join(core.available_devices)}; --runtime "
                 f"openvino, {'openvino-bf16' if refusal is None else 'no openvino-bf16 (' + refusal + ')'}; "
                 f"{'NNCF ' + nncf + ' (quantize --target openvino)' if nncf else 'no NNCF: ' + ALL}")


def _modelopt() -> Piece:
    version = _version("nvidia-modelopt")
    if version is None:
        return Piece("ModelOpt", False, "not installed: no quantize --precision fp16/int8 (Q/DQ)", ALL)
    return Piece("ModelOpt", True, f"{version}: quantize --precision fp16 (AutoCast) and int8 (Q/DQ)")


def _tensorrt() -> Piece:
    from ..tensorrt.builder import INSTALL_HINT, load_backend

    try:
        backend = load_backend()
    except UserError as e:
        return Piece("TensorRT / TensorRT-RTX", False, one_line(e).removesuffix(f"; {INSTALL_HINT}"), INSTALL_HINT)
    import torch

    runs = ("builds and runs engines" if torch.cuda.is_available() else
            "builds engines ahead of time; running one needs a CUDA device")
    return Piece("TensorRT / TensorRT-RTX", True, f"{backend.flavour} {backend.version}: {runs}")


def _cpp() -> Piece:
    from ..runtime.cpp import infer_binary

    try:
        return Piece("C++ runtime", True, f"{infer_binary()}: .pt2 packages (and .plan engines where it was built "
                     "with TensorRT) from C++ (siefpn-infer, bench --cpp)")
    except UserError as e:
        return Piece("C++ runtime", False, one_line(e).split(":")[0], "siefpn-deploy cpp build")


def _tritonserver() -> Piece:
    from ..serve.server import PYTRITON

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        return Piece("tritonserver", False, f"{PYTRITON} is not installed: no serve",
                     f"pip install --no-deps {PYTRITON} (its wheel pins numpy<2, so it is not in .[all])")
    binary = Path(spec.origin).parent / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        return Piece("tritonserver", False, f"{binary} is missing from the installed wheel",
                     f"pip install --force-reinstall --no-deps {PYTRITON}")
    return Piece("tritonserver", True, f"{_version('nvidia-pytriton')} ({binary}): serve, and triton-repo's ensemble")


def _stub_env() -> Piece:
    from ..serve.python_env import python_env_ready

    ready, env = python_env_ready()
    if not ready:
        return Piece("serve's stub environment", False, f"{env} is not built: serve builds it on first use, which "
                     "needs a package index", "siefpn-deploy serve --prepare-env (the demo does it too)")
    return Piece("serve's stub environment", True, f"{env}: serve starts with no package index")


def _optional(name: str, dist: str, gives: str) -> Callable[[], Piece]:
    def check() -> Piece:
        version = _version(dist)
        if version is None:
            return Piece(name, False, f"{dist} is not installed", ALL)
        return Piece(name, True, f"{version}: {gives}")
    return check


CHECKS: tuple[Callable[[], Piece | list[Piece]], ...] = (
    _torch, _onnxruntime, _openvino, _modelopt, _tensorrt, _cpp, _tritonserver, _stub_env,
    _optional("PyAV", "av", "video files, cameras and streams (infer --source)"),
    _optional("Polygraphy", "polygraphy", "layer-by-layer comparison (debug compare)"),
    _optional("matplotlib", "matplotlib", "the plots in parity, optimize and debug reports"),
)


def diagnose(checks=CHECKS) -> list[Piece]:
    rows: list[Piece] = []
    for check in checks:
        try:
            found = check()
        except Exception as e:  # noqa: BLE001 - a broken install is a row of the report, not a crash
            name = check.__name__.strip("_")
            found = Piece(name, False, f"its check failed: {one_line(e)}", f"{ALL} --force-reinstall")
        rows.extend(found if isinstance(found, list) else [found])
    return rows


def markdown(rows: list[Piece]) -> str:
    lines = ["| piece | here | what it gives here, or why not | to add it |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {'yes' if r.ready else 'no'} | {r.gives} | {r.fix} |" for r in rows]
    return "\n".join(lines) + "\n"
