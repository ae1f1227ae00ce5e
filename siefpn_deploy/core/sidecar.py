"""`NAME.meta.json`: everything a runtime needs to use `NAME.onnx` (or the AOTInductor package `NAME.pt2`)
without the training code.

`read_meta` refuses a missing, malformed or mismatched sidecar or one of another contract major version
(`contract.SCHEMA_VERSION`), and `check_input_shape` refuses shapes outside the exported ranges. The TensorRT
engine's NAME.engine.json is read through the same `read_sidecar`.

What a reader can rely on: meta.json records the sha256 of the file it describes (and, under "data_sha256", of
NAME.onnx.data when the graph keeps its weights there), and `read_meta` hashes the files and refuses, in one
line that says to re-export, a model without its meta.json, a meta.json without its model, and any pair whose
hashes differ. So a model and its meta.json are good only together, and `land` needs no lock and no particular
state of the old pair: it hashes the staged files, renames them into place (the data file first, then the
graph), and writes meta.json last, atomically. Whatever moment a crash picks, the folder holds the old pair
(nothing moved yet), the new pair (all done), or a mix (new model, old meta.json; new data, old graph; a
model with no meta.json yet) that every reader, and the stages' reuse check (pipeline/reuse.py), refuses
and a rerun replaces. Removing the old meta.json before the move would add a state, not remove one: the hash
check already refuses the new model beside the old meta.json. A rename of a folder holding both would be one
atomic step, but would change the layout every runtime, the C++ one included, reads. (The C++ runtime reads a
package's contract from inside the package, and compares a meta.json beside it by content.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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
DATA_SUFFIX = ".data"  # NAME.onnx.data: the weights of a graph over protobuf's 2 GB, named inside NAME.onnx
FILE_KEYS = ("format", "onnx", "package", "sha256", "data_sha256")  # what describes the files, not the model


BEST_NAME = "best"  # `optimize --output DIR` writes DIR/best.<ext>: a folder given as an artifact means that file


def resolve_artifact(path: str | Path) -> Path:
    """An artifact path as given, or for a folder the one best.onnx / best.pt2 / best.plan that `optimize` wrote
    into it."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = sorted(p for p in path.glob(f"{BEST_NAME}.*") if p.suffix in (*ARTIFACT_SUFFIXES, ENGINE_SUFFIX))
    if len(found) != 1:
        raise UserError(f"{path} is a folder with {len(found)} {BEST_NAME}.onnx/.pt2/.plan files; give an artifact "
                        f"file, or a folder `siefpn-deploy optimize --output {path}` wrote")
    return found[0]


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


def data_path(artifact: str | Path) -> Path:
    """NAME.onnx -> NAME.onnx.data, the external data file it may refer to."""
    return Path(artifact).with_name(Path(artifact).name + DATA_SUFFIX)


def _record(artifact: Path, meta: dict[str, Any], files: Path) -> dict[str, Any]:
    """meta.json for `artifact`: its name and the sha256 of `files` (the artifact itself, or its staged copy, and
    the staged copy's external data file if it has one), then `meta` less any other file's description."""
    record = {"format": META_FORMAT, artifact_key(artifact): artifact.name, "sha256": sha256_of(files),
              **{k: v for k, v in meta.items() if k not in FILE_KEYS}}
    if data_path(files).is_file():
        record["data_sha256"] = sha256_of(data_path(files))
    return record


def write_meta(onnx_path: str | Path, meta: dict[str, Any]) -> Path:
    """NAME.meta.json for the artifact already at `onnx_path` (a new artifact comes into place through `land`)."""
    return write_json(meta_path(onnx_path), _record(Path(onnx_path), meta, Path(onnx_path)))


def land(staged: Path, output: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Move `staged` (with `staged`.data, if any) onto `output` in the same folder, then write output's meta.json
    (the order and why: the module's docstring); returns the meta.json written."""
    record = _record(output, meta, staged)  # hashed before the move: meta.json describes what was staged
    try:
        if data_path(staged).is_file():
            os.replace(data_path(staged), data_path(output))
        os.replace(staged, output)
    except OSError as e:
        raise UserError(f"cannot move {output.name} into {output.parent}: {e.strerror or e}") from None
    write_json(meta_path(output), record)
    if "data_sha256" not in record:  # a data file left by an earlier, larger export: the new graph names none
        data_path(output).unlink(missing_ok=True)
    return record


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
    remedy = "re-export it with `siefpn-deploy export`"
    meta = read_sidecar(onnx_path, meta_path(onnx_path), kind="ONNX model", fmt=META_FORMAT, sha_key="sha256",
                        remedy=remedy, required=REQUIRED, check_hash=check_hash)
    if "data_sha256" in meta:  # the graph's weights are in NAME.onnx.data: the pair is good only with them
        data = data_path(onnx_path)
        if not data.is_file():
            raise UserError(f"{onnx_path}'s weights file {data.name} is missing: {remedy}")
        if check_hash and sha256_of(data) != meta["data_sha256"]:
            raise UserError(f"{data} does not match {meta_path(onnx_path).name} (sha256 differs): {remedy}")
    return meta


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
