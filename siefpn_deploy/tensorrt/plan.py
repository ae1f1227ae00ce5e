"""`siefpn-deploy build`: NAME[.fp16|.int8].onnx -> NAME.plan + NAME.engine.json.

The sidecar holds the engine's I/O contract (names, shapes, dtypes), its optimization profile, the
TensorRT flavour and version, the source ONNX's sha256, the precision and the build time, plus the
source meta.json (preprocessing, classes, thresholds), so a runtime needs nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.contract import SCHEMA_VERSION
from ..core.errors import UserError
from ..core.fileio import atomic_write, write_json
from ..core.sidecar import ENGINE_META_SUFFIX, ENGINE_SUFFIX, outside_range, read_meta, read_sidecar, request_key
from .builder import Profile, build_serialized, load_backend, parse_onnx

ENGINE_FORMAT = "siefpn-deploy/engine-meta"


def engine_meta_path(engine: str | Path) -> Path:
    """engines/NAME.plan -> engines/NAME.engine.json."""
    p = Path(engine)
    return p.with_name(p.name.removesuffix(p.suffix) + ENGINE_META_SUFFIX)


def engine_name(onnx: Path) -> str:
    """NAME[.fp16|.int8].onnx -> NAME[.fp16|.int8].plan"""
    return onnx.name.removesuffix(".onnx") + ENGINE_SUFFIX


ENGINE_DIR = Path("engines")  # where an engine goes when no path is given: engines/NAME.plan
TIMING_CACHE = ENGINE_DIR / "timing.cache"  # shared by builds: later builds of similar layers skip their timing


@dataclass(frozen=True)
class BuildOptions:
    """engine None: ENGINE_DIR/NAME.plan; timing_cache None builds without one."""

    onnx: Path
    engine: Path | None = None
    min_shape: tuple[int, ...] | None = None
    opt_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    optimization_level: int | None = None
    version_compatible: bool = False

    def engine_path(self) -> Path:
        return self.engine or ENGINE_DIR / engine_name(self.onnx)


def build_request(options: BuildOptions) -> str:
    """What a build answers, as NAME.engine.json records it (build.request): the options but the paths."""
    return request_key({**dataclasses.asdict(options), "onnx": None, "engine": None, "timing_cache": None})


def parse_shape(text: str, flag: str) -> tuple[int, ...]:
    """'1,3,640,640' (or 1x3x640x640) -> (1, 3, 640, 640)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"{flag} must be B,3,H,W (e.g. 1,3,640,640), got {text!r}") from None
    if len(shape) != 4 or shape[1] != 3:
        raise UserError(f"{flag} must be B,3,H,W (e.g. 1,3,640,640), got {text!r}")
    return shape


def profile_for(meta: dict[str, Any], options: BuildOptions) -> Profile:
    """meta.json's exported ranges unless given; every shape must lie inside them, min <= opt <= max."""
    s = meta["shapes"]
    lo = (s["batch"]["min"], 3, s["height"]["min"], s["width"]["min"])
    hi = (s["batch"]["max"], 3, s["height"]["max"], s["width"]["max"])
    # tuned for batch 1 at the largest size: detection images are mostly resized to the top of the range
    opt_default = (s["batch"]["min"], 3, s["height"]["max"], s["width"]["max"])
    profile = Profile(min=options.min_shape or lo, opt=options.opt_shape or opt_default, max=options.max_shape or hi)
    div = meta["preprocess"]["divisibility"]
    for flag, shape in (("--min-shape", profile.min), ("--opt-shape", profile.opt), ("--max-shape", profile.max)):
        outside = (["channels"] if shape[1] != 3 else []) + [name for name, *_ in outside_range(meta, shape)]
        if outside:
            raise UserError(f"{flag} {','.join(map(str, shape))} is outside the exported range "
                            f"{','.join(map(str, lo))} .. {','.join(map(str, hi))} ({', '.join(outside)})")
        if shape[2] % div or shape[3] % div:
            raise UserError(f"{flag} {','.join(map(str, shape))}: H and W must be multiples of {div}")
    if not all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max)):
        raise UserError(f"the profile must have min <= opt <= max in every dimension, got {profile.as_dict()}")
    return profile


DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
          "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def _io(network) -> list[dict[str, Any]]:
    tensors = [(network.get_input(i), "input") for i in range(network.num_inputs)]
    tensors += [(network.get_output(i), "output") for i in range(network.num_outputs)]
    dtype = lambda t: DTYPES.get(str(t.dtype).rsplit(".", 1)[-1], str(t.dtype))
    return [{"name": t.name, "mode": mode, "dtype": dtype(t), "shape": list(t.shape)} for t, mode in tensors]


def build_engine(options: BuildOptions, *, log=print) -> tuple[Path, dict[str, Any]]:
    meta = read_meta(options.onnx)
    target = (meta.get("quantization") or {}).get("target")
    if target not in (None, "tensorrt"):
        raise UserError(f"{options.onnx} is INT8 laid out for {target}, not TensorRT (ORT's uint8 activations or "
                        "NNCF's layout): build the `quantize --target tensorrt` model")
    profile = profile_for(meta, options)
    backend = load_backend()
    engine = options.engine_path()
    if engine.suffix != ENGINE_SUFFIX:
        raise UserError(f"--engine must end in {ENGINE_SUFFIX}, got {engine}")
    log(f"[build] {options.onnx} ({meta.get('precision', 'fp32')}) with {backend.flavour} {backend.version}, "
        f"strongly typed; profile min {list(profile.min)} opt {list(profile.opt)} max {list(profile.max)}")
    t0 = time.perf_counter()
    with parse_onnx(backend, options.onnx, log) as parsed:
        data = build_serialized(backend, parsed, profile=profile, workspace_gib=options.workspace_gib,
                                timing_cache=options.timing_cache, optimization_level=options.optimization_level,
                                version_compatible=options.version_compatible, log=log)
        io = _io(parsed.network)
    seconds = time.perf_counter() - t0
    atomic_write(engine, lambda tmp: tmp.write_bytes(data))
    sidecar = {
        "format": ENGINE_FORMAT, "schema_version": SCHEMA_VERSION, "engine": engine.name,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "onnx": options.onnx.name, "onnx_sha256": meta["sha256"], "precision": meta.get("precision", "fp32"),
        "tensorrt": {"flavour": backend.flavour, "version": backend.version, "strongly_typed": True,
                     "version_compatible": options.version_compatible},
        "io": io, "profile": profile.as_dict(),
        "build": {"seconds": round(seconds, 1), "request": build_request(options), "workspace_gib": options.workspace_gib,
                  "optimization_level": options.optimization_level,
                  "timing_cache": str(options.timing_cache) if options.timing_cache and backend.has_timing_cache
                  else None},
        "model": {k: v for k, v in meta.items() if k not in ("format", "onnx", "sha256")},
    }
    write_json(engine_meta_path(engine), sidecar)
    log(f"[build] wrote {engine} ({len(data) / 2**20:.1f} MiB) and {engine_meta_path(engine).name} in {seconds:.1f} s")
    return engine, sidecar


def read_engine_meta(engine: str | Path) -> dict[str, Any]:
    """The sidecar of `engine`; refused when missing, foreign, of another contract version or not this
    engine's (sha256)."""
    return read_sidecar(engine, engine_meta_path(engine), kind="engine", fmt=ENGINE_FORMAT, sha_key="engine_sha256",
                        remedy="rebuild it with `siefpn-deploy build`", required=("io", "model", "tensorrt", "profile"))
