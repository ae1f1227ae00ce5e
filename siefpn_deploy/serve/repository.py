"""`siefpn-deploy triton-repo`: a standard Triton Inference Server model repository for deployed artifacts.

    model_repository/
      README.md                      how to serve it (tritonserver --model-repository ...)
      <name>/config.pbtxt            from the graph contract: platform, I/O names, dtypes and dims, batching
      <name>/1/model.onnx | model.plan
      <name>/meta.json               the artifact's meta.json (engine.json for a plan): preprocessing, classes

One model per artifact. `config.pbtxt` is derived from the artifact's meta (the one contract, `core.contract`),
never written by hand, and parsed into Triton's own `ModelConfig` protobuf (tritonclient ships it) before
anything is written. Each model folder is staged and renamed into place, so a failed run leaves the
repository as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.contract import IMAGE_SIZES, INPUT, GraphContract
from ..core.errors import UserError
from ..core.fileio import write_json
from ..core.sidecar import ENGINE_SUFFIX, read_meta, resolve_artifact
from ..runtime.detector import engine_model_meta
from . import protocol
from .options import MAX_IMAGE_PIXELS, MAX_QUEUE_DELAY_US
from .protocol import ORIGINAL_SIZE

PLATFORMS = {".onnx": "onnxruntime_onnx", ENGINE_SUFFIX: "tensorrt_plan"}
MODEL_FILES = {".onnx": "model.onnx", ENGINE_SUFFIX: "model.plan"}  # Triton's default model file names
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                 "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "bytes": "TYPE_STRING"}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}


@dataclass(frozen=True)
class RepositoryOptions:
    output: Path = Path("model_repository")
    max_batch: int | None = None  # default: the artifact's largest batch (an engine's: its profile's)
    instances: int = 1  # instances per GPU (KIND_GPU) or in all (KIND_CPU)
    instance_kind: str = "gpu"
    delay_us: int = MAX_QUEUE_DELAY_US  # dynamic batching's max_queue_delay_microseconds
    ensemble: bool = False  # also NAME_preprocess, NAME_postprocess and NAME_ensemble (encoded images in)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # the ensemble's preprocessing refuses larger images


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]  # without the batch dimension; -1 where it varies


@dataclass(frozen=True)
class ModelIO:
    """What the config states of one artifact: its I/O, its batch range and the meta to copy beside it."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batch: tuple[int, int]
    meta: dict[str, Any]


def artifact_io(path: Path) -> ModelIO:
    """The I/O of an ONNX export (from its meta.json) or a TensorRT engine (from its engine.json and profile)."""
    if path.suffix == ENGINE_SUFFIX:
        from ..tensorrt.plan import read_engine_meta

        engine = read_engine_meta(path)
        lo, hi = engine["profile"]["min"], engine["profile"]["max"]
        io = {t["name"]: t for t in engine["io"]}
        varying = tuple(-1 if a != b else a for a, b in zip(lo[1:], hi[1:]))
        contract = GraphContract.from_meta(engine["model"], source=str(path))
        return ModelIO(inputs=(Tensor(INPUT, io[INPUT]["dtype"], varying), Tensor(IMAGE_SIZES, io[IMAGE_SIZES]["dtype"], (2,))),
                       outputs=tuple(Tensor(o.name, io[o.name]["dtype"], tuple(o.shape[1:])) for o in contract.outputs()),
                       batch=(lo[0], hi[0]), meta=engine)
    if path.suffix != ".onnx":
        raise UserError(f"--artifacts: Triton serves .onnx (onnxruntime_onnx) and {ENGINE_SUFFIX} (tensorrt_plan); "
                        f"got {path} (serve a .pt2 or a checkpoint with `siefpn-deploy serve`)")
    meta = read_meta(path)
    contract = GraphContract.from_meta(meta, source=str(path))
    shapes = meta["shapes"]
    side = lambda r: r["min"] if r["min"] == r["max"] else -1
    images = Tensor(INPUT, "float32", (3, side(shapes["height"]), side(shapes["width"])))
    return ModelIO(inputs=(images, Tensor(IMAGE_SIZES, "int32", (2,))),
                   outputs=tuple(Tensor(o.name, o.dtype, tuple(o.shape[1:])) for o in contract.outputs()),
                   batch=(shapes["batch"]["min"], shapes["batch"]["max"]), meta=meta)


def _tensor_block(t: Tensor, batched: bool, batch: int) -> str:
    dims = t.dims if batched else (batch, *t.dims)
    # a per-image scalar (num_dets [B]) has no dims of its own: Triton takes dims [1] reshaped to []
    reshape = " reshape: { shape: [ ] }" if batched and not dims else ""
    dims = dims or (1,)
    return (f'  {{ name: "{t.name}" data_type: {TRITON_DTYPES[t.dtype]} dims: [ {", ".join(map(str, dims))} ]'
            f"{reshape} }}")


def model_config(name: str, platform: str | None, io: ModelIO, options: RepositoryOptions, *,
                 parameters: dict[str, str] | None = None, scheduling: str | None = None) -> str:
    """config.pbtxt text. A dynamic-batch artifact gets max_batch_size and dynamic batching; a static batch of
    B is served unbatched (max_batch_size 0) with B in every dim, which is what Triton requires. platform None is
    a Python-backend model (with `parameters`); an ensemble gets its `scheduling` instead of instances."""
    lo, hi = io.batch
    if lo > 1 and lo != hi:
        raise UserError(f"{name} takes batches {lo}..{hi}, but Triton batches from 1: re-export it with "
                        "--dynamic-batch (1..N) or a static --batch")
    batched = lo == 1  # else a static batch of B > 1, served unbatched
    max_batch = options.max_batch or hi
    if options.max_batch is not None and not lo <= options.max_batch <= hi:
        raise UserError(f"--max-batch {options.max_batch} is outside {name}'s batch range [{lo}, {hi}]")
    kind = f'platform: "{platform}"' if platform else 'backend: "python"'
    lines = [f'name: "{name}"', kind, f"max_batch_size: {max_batch if batched else 0}"]
    lines += ["input ["] + [",\n".join(_tensor_block(t, batched, hi) for t in io.inputs)] + ["]"]
    lines += ["output ["] + [",\n".join(_tensor_block(t, batched, hi) for t in io.outputs)] + ["]"]
    if scheduling is not None:
        return "\n".join([*lines, scheduling]) + "\n"
    lines += [f"instance_group [ {{ count: {options.instances} kind: {INSTANCE_KINDS[options.instance_kind]} }} ]"]
    if batched and max_batch > 1:
        lines += [f"dynamic_batching {{ max_queue_delay_microseconds: {options.delay_us} }}"]
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in (parameters or {}).items()]
    return "\n".join(lines) + "\n"


def parse_config(text: str, *, source: str) -> Any:
    """config.pbtxt text -> Triton's ModelConfig message (tritonclient's generated protobuf), or a one-line
    UserError naming `source` and what Triton's schema rejects."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{source} is not a valid Triton ModelConfig: {e}") from None


def model_name(path: Path) -> str:
    """export/demo.int8.onnx -> demo_int8_onnx; engines/demo.fp16.plan -> demo_fp16_plan (Triton model names)."""
    return path.name.replace(".", "_").replace("-", "_")


def write_repository(artifacts: list[Path], options: RepositoryOptions, *, log=print) -> list[Path]:
    if options.instance_kind not in INSTANCE_KINDS:
        raise UserError(f"--instance-kind must be gpu or cpu, got {options.instance_kind!r}")
    if options.instances < 1 or options.delay_us < 0:
        raise UserError("--instances must be >= 1 and --dynamic-batching-delay-us >= 0")
    artifacts = [resolve_artifact(p) for p in artifacts]  # a folder `optimize` wrote: its best.*
    for path in artifacts:
        chosen = read_meta(path).get("runtime") if path.suffix == ".onnx" and path.is_file() else None
        if chosen and chosen != "onnxruntime":
            log(f"[triton-repo] {path} was chosen for {chosen}; Triton's onnxruntime_onnx backend runs it here")
    names = [model_name(p) for p in artifacts]
    if len(set(names)) != len(names):
        raise UserError(f"--artifacts name the same model twice: {min(n for n in names if names.count(n) > 1)}")
    prepared: list[ModelFolder] = []
    for path, name in zip(artifacts, names):  # everything is read and checked before anything is written
        if not path.is_file():
            raise UserError(f"--artifacts: not found: {path}")
        if path.suffix == ENGINE_SUFFIX and options.instance_kind == "cpu":
            raise UserError(f"{path} is a TensorRT engine: it runs on KIND_GPU instances only (--instance-kind gpu)")
        io = artifact_io(path)
        text = model_config(name, PLATFORMS[path.suffix], io, options)
        parse_config(text, source=f"{name}/config.pbtxt")
        prepared.append(ModelFolder(name, text, {f"1/{MODEL_FILES[path.suffix]}": path}, io.meta,
                                    f"{PLATFORMS[path.suffix]}, {instances(options)}"))
        if options.ensemble:
            prepared += ensemble_folders(name, path, io, options)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for folder in prepared:
        write_model_folder(output, folder)
        written.append(output / folder.name)
        log(f"[triton-repo] {folder.name}: {folder.summary}")
    (output / "README.md").write_text(REPOSITORY_README.format(models="\n".join(f"- `{f.name}`" for f in prepared)))
    return written


@dataclass(frozen=True)
class ModelFolder:
    """One model of the repository: its config.pbtxt, files to copy (relative path -> source) and meta.json."""

    name: str
    config: str
    files: dict[str, Path]
    meta: dict[str, Any]
    summary: str  # what the log line says of it: platform or backend, and its instances


def instances(options: RepositoryOptions) -> str:
    return f"{options.instances} x {INSTANCE_KINDS[options.instance_kind]}"


def write_model_folder(output: Path, folder: ModelFolder) -> None:
    """Staged in a temporary folder and renamed into place, replacing an older one whole."""
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=output))
    try:
        (stage / "1").mkdir()
        for rel, src in folder.files.items():
            shutil.copy2(src, stage / rel)
        (stage / "config.pbtxt").write_text(folder.config)
        write_json(stage / "meta.json", folder.meta)
        final = output / folder.name
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=output))
            os.replace(final, old / folder.name)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _field(f: protocol.Field) -> Tensor:
    return Tensor(f.name, "bytes" if f.dtype is np.bytes_ else np.dtype(f.dtype).name, f.shape)


def _maps(kind: str, pairs: list[tuple[str, str]]) -> str:
    return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in pairs)


def ensemble_folders(name: str, path: Path, io: ModelIO, options: RepositoryOptions) -> list[ModelFolder]:
    """NAME_preprocess and NAME_postprocess (Python backend, serve/triton_model.py running serve/ensemble.py) and
    NAME_ensemble, which chains them around NAME: encoded images in, serve's outputs (protocol.py) out."""
    lo, hi = io.batch
    if lo != 1:
        raise UserError(f"--ensemble: {name} takes batches {lo}..{hi}; the ensemble batches from 1 (re-export it "
                        "with --dynamic-batch)")
    meta = engine_model_meta(io.meta) if path.suffix == ENGINE_SUFFIX else io.meta  # the runnable range, for prepare
    contract = GraphContract.from_meta(meta, source=str(path))
    served = [_field(f) for f in protocol.outputs(contract)]
    pre_out = (io.inputs[0], io.inputs[1], Tensor(ORIGINAL_SIZE, "int32", (2,)))
    pre_io = ModelIO(inputs=(_field(protocol.inputs()[0]),), outputs=pre_out, batch=io.batch, meta=meta)
    post_io = ModelIO(inputs=(*io.outputs, io.inputs[1], pre_out[2]), outputs=tuple(served), batch=io.batch, meta=meta)
    cpu = RepositoryOptions(output=options.output, max_batch=options.max_batch, instances=options.instances,
                            instance_kind="cpu", delay_us=options.delay_us)  # pre- and post-processing run on CPUs
    model_py = {"1/model.py": Path(__file__).with_name("triton_model.py")}
    pre = model_config(f"{name}_preprocess", None, pre_io, cpu, parameters={
        "step": "preprocess", "max_image_pixels": str(options.max_image_pixels)})
    post = model_config(f"{name}_postprocess", None, post_io, cpu, parameters={"step": "postprocess"})
    graph = [(t.name, f"graph_{t.name}") for t in io.outputs]
    steps = [
        (f"{name}_preprocess", [(protocol.IMAGE, protocol.IMAGE)], [(t.name, t.name) for t in pre_out]),
        (name, [(t.name, t.name) for t in io.inputs], graph),
        (f"{name}_postprocess", [(g[0], g[1]) for g in graph] + [(t.name, t.name) for t in pre_out[1:]],
         [(t.name, t.name) for t in served]),
    ]
    ens_io = ModelIO(inputs=pre_io.inputs, outputs=tuple(served), batch=io.batch, meta=meta)
    ensemble = model_config(f"{name}_ensemble", "ensemble", ens_io, options, scheduling="ensemble_scheduling { step [\n"
                            + ",\n".join(f'  {{ model_name: "{m}" model_version: -1 {_maps("input_map", i)} '
                                         f'{_maps("output_map", o)} }}' for m, i, o in steps) + "\n] }")
    python = f"python backend, {instances(cpu)}"
    folders = [ModelFolder(f"{name}_preprocess", pre, model_py, meta, python),
               ModelFolder(f"{name}_postprocess", post, model_py, meta, python),
               ModelFolder(f"{name}_ensemble", ensemble, {}, meta, "ensemble")]
    for f in folders:
        parse_config(f.config, source=f"{f.name}/config.pbtxt")
    return folders


REPOSITORY_README = """# Triton model repository (written by `siefpn-deploy triton-repo`)

{models}

Each model folder holds `config.pbtxt` (derived from the artifact's graph contract and checked against
Triton's ModelConfig schema), `1/model.onnx` or `1/model.plan`, and `meta.json`: the preprocessing a client
applies (resize, channel order, canvas, pixel range) and the classes (labels 1..C -> COCO category ids).

Serve it, unchanged, with Triton Inference Server (a TensorRT engine only on the GPU model and TensorRT
version it was built for):

    docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD:/models \\
        nvcr.io/nvidia/tritonserver:<release>-py3 tritonserver --model-repository=/models

Inputs: `images` float32 [B,3,H,W] (the preprocessed canvas) and `image_sizes` int32 [B,2]; outputs:
`num_dets`, `boxes`, `scores`, `labels` (and `masks`) as the contract defines them (siefpn_deploy/core/contract.py).

With `--ensemble`, NAME_ensemble takes encoded images instead (input `image`, BYTES [1]: a JPEG, PNG, ... file
per row) and returns what `siefpn-deploy serve` returns: boxes in original-image pixels, scores, labels,
category_ids, class_names, image_size and, for Mask R-CNN, masks as COCO RLE counts. NAME_preprocess and
NAME_postprocess are Python-backend models running siefpn-deploy's own preprocessing and postprocessing, so
Triton's Python environment needs it installed, e.g. a derived image:

    FROM nvcr.io/nvidia/tritonserver:<release>-py3
    RUN pip install siefpn-deploy torch torchvision --extra-index-url https://download.pytorch.org/whl/cpu

`siefpn-deploy client --url HOST:8000 --model NAME_ensemble --source images/` then sends images to it.
"""
