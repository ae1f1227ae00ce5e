"""`NAME.meta.json`: everything a runtime needs to use `NAME.onnx` (or the AOTInductor package `NAME.pt2`)
without the training code.

Written atomically beside the ONNX; `read_meta` refuses a missing, malformed or mismatched sidecar
(the sha256 must be the ONNX's) or one of another contract major version (`contract.SCHEMA_VERSION`), and
`check_input_shape` refuses shapes outside the exported ranges. The TensorRT engine's NAME.engine.json
is read through the same `read_sidecar`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from .contract import check_schema
from .errors import UserError
from .fileio import read_json, write_json

META_FORMAT = "siefpn-deploy/onnx-meta"
ENGINE_SUFFIX = ".plan"  # the one TensorRT engine suffix; its sidecar is NAME.engine.json
PACKAGE_SUFFIX = ".pt2"  # the AOTInductor package; its sidecar is NAME.meta.json, as for NAME.onnx
ENGINE_META_SUFFIX = ".engine.json"  # NAME.plan -> NAME.engine.json
PACKAGE_META_KEY = "siefpn_deploy.meta"  # the package's own metadata entry holding meta.json's text
# (engines/cpp/CMakeLists.txt reads the four constants above from this file: keep them plain string literals)
REQUIRED = ("inputs", "outputs", "shapes", "preprocess", "postprocess", "classes", "opset")


ARTIFACT_SUFFIXES = (".onnx", PACKAGE_SUFFIX)  # the exported graphs: ONNX, and the AOTInductor package


def meta_path(artifact: str | Path) -> Path:
    """export/NAME.onnx (or NAME.pt2) -> export/NAME.meta.json (NAME may hold dots: NAME.int8.onnx ->
    NAME.int8.meta.json)."""
    p = Path(artifact)
    name = next((p.name.removesuffix(s) for s in ARTIFACT_SUFFIXES if p.name.endswith(s)), p.name)
    return p.with_name(name + ".meta.json")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def request_key(*parts: Any) -> str:
    """A short hash of what a stage was asked to do (options dataclasses, a config's text), recorded in the
    artifact's sidecar so a later run can tell whether the artifact on disk answers the same request."""
    plain = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) and not isinstance(p, type) else p for p in parts]
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def artifact_key(artifact: str | Path) -> str:
    """The meta.json key that names the file it describes: "onnx" for NAME.onnx, "package" for NAME.pt2."""
    return "package" if Path(artifact).name.endswith(PACKAGE_SUFFIX) else "onnx"


def write_meta(onnx_path: str | Path, meta: dict[str, Any]) -> Path:
    meta = {"format": META_FORMAT, artifact_key(onnx_path): Path(onnx_path).name, "sha256": sha256_of(onnx_path), **meta}
    return write_json(meta_path(onnx_path), meta)


def check_meta_free(artifact: str | Path) -> None:
    """Refuse, in one line, an output whose NAME.meta.json already describes another file (NAME.onnx and
    NAME.pt2 would share it)."""
    sidecar = meta_path(artifact)
    if not sidecar.is_file():
        return
    try:
        existing = read_json(sidecar, sidecar.name)
    except UserError:
        return  # unreadable: the export replaces it
    other = [existing.get(k) for k in ("onnx", "package") if isinstance(existing, dict) and existing.get(k)]
    if other and other[0] != Path(artifact).name:
        raise UserError(f"{sidecar} describes {other[0]}; writing {Path(artifact).name} would replace it: choose "
                        "another --output name")


def read_sidecar(artifact: str | Path, sidecar: Path, *, kind: str, fmt: str, sha_key: str, remedy: str,
                 required: tuple[str, ...] = (), check_hash: bool = True) -> dict[str, Any]:
    """A JSON sidecar that must exist, be of format `fmt`, hold `required` and, when check_hash, carry
    the artifact's sha256 under `sha_key`; else a one-line UserError naming both files."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise UserError(f"{kind} not found: {artifact}")
    if not sidecar.is_file():
        raise UserError(f"{artifact} has no {sidecar.name} beside it; {remedy}")
    meta = read_json(sidecar, sidecar.name)
    check_schema(meta, source=str(sidecar))
    missing = [k for k in (*required, sha_key) if k not in meta] if isinstance(meta, dict) else list(required)
    if missing or meta.get("format") != fmt:
        raise UserError(f"{sidecar} is not a siefpn-deploy {sidecar.name.split('.', 1)[-1]} "
                        f"(missing {', '.join(missing) or 'format'})")
    if check_hash and sha256_of(artifact) != meta[sha_key]:
        raise UserError(f"{artifact} does not match {sidecar.name} (sha256 differs): {remedy}")
    return meta


def read_meta(onnx_path: str | Path, *, check_hash: bool = True) -> dict[str, Any]:
    return read_sidecar(onnx_path, meta_path(onnx_path), kind="ONNX model", fmt=META_FORMAT, sha_key="sha256",
                        remedy="re-export it with `siefpn-deploy export`", required=REQUIRED, check_hash=check_hash)


def outside_range(meta: dict[str, Any], shape: tuple[int, ...]) -> list[tuple[str, int, int, int]]:
    """(dimension, value, min, max) for each of the batch, height and width of [B,3,H,W] that lies
    outside the exported ranges."""
    shapes = meta["shapes"]
    return [(name, value, shapes[name]["min"], shapes[name]["max"])
            for name, value in zip(("batch", "height", "width"), (shape[0], shape[2], shape[3]))
            if not shapes[name]["min"] <= value <= shapes[name]["max"]]


def check_input_shape(meta: dict[str, Any], shape: tuple[int, ...], *, source: str) -> None:
    """A one-line UserError when an input shape [B,3,H,W] is outside the exported ranges."""
    if len(shape) != 4 or shape[1] != 3:
        raise UserError(f"{source}: input must be [B,3,H,W], got {list(shape)}")
    for name, value, lo, hi in outside_range(meta, shape)[:1]:
        raise UserError(f"{source}: {name} {value} is outside the exported range [{lo}, {hi}]")
    div = meta["preprocess"]["divisibility"]
    if shape[2] % div or shape[3] % div:
        raise UserError(f"{source}: height and width must be multiples of {div}, got {shape[2]}x{shape[3]}")
