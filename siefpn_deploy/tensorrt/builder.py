"""One strongly typed build path for TensorRT 10.x, 11.x and TensorRT-RTX.

Precision lives in the ONNX graph (FP16 casts from AutoCast, INT8 Q/DQ from ModelOpt), so the
network is created STRONGLY_TYPED (required on 10.x, the only mode on 11.x and RTX) and no
precision builder flag is ever set. The backend is imported lazily: whichever of `tensorrt` or
`tensorrt_rtx_bindings` is installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from ..core.contract import IMAGE_SIZES, INPUT, INPUT_NAMES
from ..core.errors import UserError

INSTALL_HINT = (
    "pip install 'siefpn-deploy[tensorrt-rtx]' (TensorRT-RTX: builds engines ahead of time, also on a CPU-only "
    "machine), or on a GPU machine full TensorRT from NVIDIA's index: "
    "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu12"
)


@dataclass(frozen=True)
class Backend:
    trt: ModuleType
    flavour: str  # "tensorrt" or "tensorrt-rtx"
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def has_timing_cache(self) -> bool:
        return self.flavour == "tensorrt"  # TensorRT-RTX keeps the API, but its timing-cache calls are no-ops


def load_backend() -> Backend:
    """Full TensorRT when installed, else TensorRT-RTX; a UserError that says how to install one."""
    errors = []
    for module, flavour in (("tensorrt", "tensorrt"), ("tensorrt_rtx_bindings", "tensorrt-rtx")):
        try:
            trt = __import__(module)
            return Backend(trt=trt, flavour=flavour, version=str(trt.__version__))
        except Exception as e:  # noqa: BLE001 - ImportError, or a stub wheel / missing libnvinfer raising on import
            errors.append(f"{module}: {type(e).__name__}")
    raise UserError(f"no TensorRT builder is installed ({'; '.join(errors)}); {INSTALL_HINT}")


@dataclass(frozen=True)
class Profile:
    """One optimization profile: min/opt/max [B,3,H,W] of `images` (`image_sizes` [B,2] takes its batch)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


class _Progress:
    """Builder phases as printed lines (an IProgressMonitor where the backend has one): the top phase
    and its direct children, each with its time."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.depth: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        depth = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
        self.depth[phase_name] = depth
        self.started[phase_name] = time.perf_counter()
        if depth <= 1:
            self.log(f"[build] {'  ' * depth}{phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        depth = self.depth.pop(phase_name, 0)
        seconds = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
        if depth <= 1:
            self.log(f"[build] {'  ' * depth}{phase_name}: done in {seconds:.1f} s")


def _monitor(backend: Backend, log: Callable[[str], None]) -> Any | None:
    base = getattr(backend.trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(_Progress, base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # pybind11 needs the C++ base initialised explicitly
            _Progress.__init__(self, log)

    return Monitor()


def _logger(backend: Backend, log: Callable[[str], None]) -> Any:
    """TensorRT's messages at WARNING and above, as `[TRT]` lines. With no usable CUDA driver (an
    ahead-of-time TensorRT-RTX build on a CPU-only machine) TensorRT still tries to open a CUDA stream
    for the timing cache and reports it as an error; the build is unaffected, so that one is a note."""
    trt = backend.trt

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.noted = False

        def log(self, severity: Any, msg: str) -> None:
            if "CUDA driver version is insufficient" in msg or "cudaError 35" in msg:
                if not self.noted:
                    log("[build] note: no usable CUDA driver here; building ahead of time without one")
                self.noted = True
            elif severity <= trt.ILogger.Severity.WARNING:
                log(f"[TRT] {msg}")

    return Logger()


@dataclass
class Parsed:
    """A strongly typed network parsed from ONNX, with the objects that must outlive it. A context manager:
    `close` (on leaving the `with`) destroys them in the order TensorRT requires, there and then."""

    path: Path
    builder: Any
    network: Any
    parser: Any
    logger: Any  # TensorRT keeps a raw pointer to it

    def close(self) -> None:
        """Parser, then network, then builder, then the logger they log to. Left to Python's collector, they
        would go in any order, at any later time, in any thread (pybind11's trampolines make cycles)."""
        self.parser = None
        self.network = None
        self.builder = None
        self.logger = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_onnx(backend: Backend, path: str | Path, log: Callable[[str], None] = print) -> Parsed:
    """`path` parsed into a strongly typed network. Every parser error is listed with its node name in
    one UserError."""
    trt = backend.trt
    logger = _logger(backend, log)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parsed = Parsed(Path(path), builder, network, trt.OnnxParser(network, logger), logger)
    del builder, network
    try:
        if not Path(path).is_file():
            raise UserError(f"ONNX model not found: {path}")
        if not parsed.parser.parse_from_file(str(path)):
            errors = []
            for i in range(parsed.parser.num_errors):
                e = parsed.parser.get_error(i)
                errors.append(f"node {e.node_name() or e.node()!s} ({e.node_operator() or '?'}): {e.desc()}")
            raise UserError(f"{backend.flavour} {backend.version} cannot parse {path}: {len(errors)} error(s): "
                            + " | ".join(errors or ["unknown parser error"]))
    except BaseException:
        parsed.close()
        raise
    return parsed


def build_serialized(
    backend: Backend, parsed: Parsed, *, profile: Profile, workspace_gib: float | None = None,
    timing_cache: str | Path | None = None, optimization_level: int | None = None,
    version_compatible: bool = False, log: Callable[[str], None] = print,
) -> bytes:
    """Build a parsed network; the serialized engine's bytes. The timing cache is read when present and
    written back after the build."""
    config = parsed.builder.create_builder_config()
    try:
        return _build(backend, parsed, config, profile=profile, workspace_gib=workspace_gib, timing_cache=timing_cache,
                      optimization_level=optimization_level, version_compatible=version_compatible, log=log)
    finally:
        # the config holds the progress monitor: it goes first, before the caller closes the network and builder
        config.progress_monitor = None
        del config


def _build(backend: Backend, parsed: Parsed, config: Any, *, profile: Profile, workspace_gib: float | None,
           timing_cache: str | Path | None, optimization_level: int | None, version_compatible: bool,
           log: Callable[[str], None]) -> bytes:
    trt = backend.trt
    path, builder, network = parsed.path, parsed.builder, parsed.network
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    optimization = builder.create_optimization_profile()
    names = [tensor.name for tensor in inputs]
    if names != list(INPUT_NAMES):
        raise UserError(f"{path} has inputs {names}; a siefpn-deploy graph has {list(INPUT_NAMES)} "
                        "(re-export it with this version)")
    optimization.set_shape(INPUT, profile.min, profile.opt, profile.max)
    # image_sizes [B,2] follows the batch of the images' profile
    optimization.set_shape(IMAGE_SIZES, (profile.min[0], 2), (profile.opt[0], 2), (profile.max[0], 2))
    config.add_optimization_profile(optimization)
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache = None
    if timing_cache is not None and not backend.has_timing_cache:
        log(f"[build] {backend.flavour} has no timing cache (its timing-cache calls are no-ops); not using {timing_cache}")
    elif timing_cache is not None:
        data = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _monitor(backend, log)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{backend.flavour} {backend.version} failed to build an engine from {path} "
                        f"(profile {profile.as_dict()}); rerun with a wider --max-shape or see the log above")
    if cache is not None:
        from ..core.fileio import atomic_write

        atomic_write(timing_cache, lambda tmp: tmp.write_bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))
