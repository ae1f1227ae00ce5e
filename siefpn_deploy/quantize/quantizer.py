"""`siefpn-deploy quantize`: an exported FP32 model -> NAME.fp16.onnx (ModelOpt AutoCast),
NAME.int8.onnx (ModelOpt ONNX PTQ, explicit Q/DQ for TensorRT), NAME.int8-cpu.onnx (ONNX Runtime static
quantization, laid out for its x86 integer kernels) or NAME.int8-ov.onnx (NNCF, laid out for OpenVINO's CPU
plugin), INT8 calibrated on train-split images.

Both keep the graph's I/O contract (float32 images in, the same outputs), so the same runtime code,
the same meta.json fields and the same TensorRT build path serve every precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import io
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..core.contract import GraphContract
from ..core.errors import CannotRunHere, UserError
from ..core.sidecar import data_path, land, meta_path, read_meta, request_key
from ..core.staging import staging_dir
from ..data.preprocess import Preprocess
from .calibration import BatchReader, CalibrationSet, check_batch, choose, list_images, load_or_build
from .nncf_ov import quantize_for_openvino_in_subprocess
from .options import TARGETS, QuantizeOptions
from .ort_cpu import quantize_for_cpu_in_subprocess
from .precision import QDQ_OPS
from .range_check import DATA_MAX, exact, fp16_unsafe_nodes

TOOLS = {"fp16": "modelopt.onnx.autocast", "tensorrt": "modelopt.onnx.quantization",
         "ort-cpu": "onnxruntime.quantization.quantize_static", "openvino": "nncf.quantize"}
CHILD_QUANTIZERS = {"ort-cpu": quantize_for_cpu_in_subprocess, "openvino": quantize_for_openvino_in_subprocess}
NNCF_MISSING = "NNCF is not installed: pip install 'siefpn-deploy[openvino]'"
T = TypeVar("T")


def load_onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends: a truncated or foreign file
        raise UserError(f"cannot read ONNX model {path}: {type(e).__name__}: {str(e).strip()[:200]}") from None


def precision_of(model: Any) -> str:
    """What the graph itself says: int8 when it has Q/DQ, fp16 when it casts to float16, else fp32."""
    import onnx

    ops = {n.op_type for n in model.graph.node}
    if ops & set(QDQ_OPS):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in model.graph.node):
        return "fp16"
    return "fp32"


def calibration_source(options: QuantizeOptions, meta: dict[str, Any]) -> Path:
    """--calib-data, else the train split recorded at export; never the evaluation split."""
    datasets = meta.get("datasets", {})
    source = options.calib_data or (Path(datasets["train_images"]) if datasets.get("train_images") else None)
    if source is None:
        raise UserError(f"{options.onnx}'s meta.json records no train split; give --calib-data DIR|instances.json")
    evaluation = {Path(p).resolve() for p in (datasets.get("test_images"), datasets.get("test_annotations")) if p}
    if source.resolve() in evaluation:
        raise UserError(f"--calib-data {source} is the evaluation split; calibrate on training images, or the "
                        "evaluation AP is measured on the data the ranges were fitted to")
    return source


def calibration_canvas(options: QuantizeOptions, meta: dict[str, Any]) -> tuple[int, int]:
    shapes, div = meta["shapes"], meta["preprocess"]["divisibility"]
    h, w = options.calib_size or (shapes["height"]["max"], shapes["width"]["max"])
    for name, value in (("height", h), ("width", w)):
        lo, hi = shapes[name]["min"], shapes[name]["max"]
        if value % div or not lo <= value <= hi:
            raise UserError(f"--calib-size {name} {value} must be a multiple of {div} inside the exported range "
                            f"[{lo}, {hi}]")
    return h, w


def quietly(call: Callable[..., T], **kwargs: Any) -> T:
    """One ModelOpt call with its progress output dropped: it re-attaches an INFO handler that writes to
    sys.stdout on every call, so stdout is captured around that call alone. Its errors still raise."""
    with contextlib.redirect_stdout(io.StringIO()):
        return call(**kwargs)


def _fp16(source: Path, target: Path, calib: CalibrationSet, excludes: list[str], log=print) -> list[str]:
    """AutoCast with the range check streamed (range_check.py); returns the nodes that check kept in FP32."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    unsafe = fp16_unsafe_nodes(source, calib.tensors, calib.image_sizes)
    log(f"[quantize] fp16 range check: {len(unsafe)} nodes see |x| > {DATA_MAX:g} and stay FP32")
    # AutoCast's warnings here are all expected: ops without FP16 kernels in this opset (Range, Not, And)
    # stay FP32, and tiny FP16 initializers are flushed to FP16's smallest subnormal
    model = quietly(convert_to_mixed_precision, onnx_path=str(source), low_precision_type="fp16",
                    nodes_to_exclude=excludes + exact(unsafe), data_max=np.inf, keep_io_types=True, providers=["cpu"])
    # AutoCast writes intermediate shapes with one shared "unk" dim for unrelated sizes, which ONNX Runtime
    # takes as equal (and fails on); the shapes are only hints, so drop them and let runtimes infer
    del model.graph.value_info[:]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                del attr.g.value_info[:]
    onnx.save(model, str(target))
    return unsafe


def _int8(source: Path, target: Path, reader: BatchReader, method: str, excludes: list[str]) -> None:
    from modelopt.onnx.quantization import quantize

    quietly(quantize, onnx_path=str(source), quantize_mode="int8", calibration_data_reader=reader,
            calibration_method=method, calibration_eps=["cpu"], nodes_to_exclude=excludes,
            high_precision_dtype="fp32", output_path=str(target), log_level="WARNING")


def _convert(options: QuantizeOptions, calib: CalibrationSet, excludes: list[str], staged: Path, log
             ) -> tuple[list[str], int]:
    """AutoCast or PTQ of options.onnx into `staged`, a file in the run's staging folder: (nodes the FP16 range
    check kept in FP32, Q/DQ node count)."""
    # ModelOpt writes intermediate models beside its input: give it a private copy in a folder of its own
    scratch = staged.parent / "source"
    scratch.mkdir()
    private = scratch / options.onnx.name
    for path in (options.onnx, data_path(options.onnx)):
        if path.is_file():
            shutil.copyfile(path, scratch / path.name)
    range_kept: list[str] = []
    if options.precision == "fp16":
        range_kept = _fp16(private, staged, calib, excludes, log=log)
    elif options.target in CHILD_QUANTIZERS:
        CHILD_QUANTIZERS[options.target](private, staged, calib, method=options.method, batch=options.calib_batch,
                                         excludes=excludes)
    else:
        reader = BatchReader(calib.tensors, calib.image_sizes, batch=options.calib_batch,
                             desc=f"calibrate ({options.method})")
        _int8(private, staged, reader, options.method, excludes)
    qdq = sum(n.op_type in QDQ_OPS for n in load_onnx(staged).graph.node)
    if options.precision == "int8" and qdq == 0:
        raise UserError(f"the quantizer inserted no Q/DQ nodes into {options.onnx}; check --exclude")
    return range_kept, qdq


def quantize_request(options: QuantizeOptions) -> str:
    """What a quantization answers, as its meta.json records it (quantization.request): the options but where
    the output and the calibration cache go. The source model is quantization.source_sha256."""
    return request_key({**dataclasses.asdict(options), "output": None, "calib_cache": None})


def quantize_model(options: QuantizeOptions, *, log=print) -> tuple[Path, dict[str, Any]]:
    if options.precision not in ("fp16", "int8"):
        raise UserError(f"--precision must be fp16 or int8, got {options.precision!r}")
    if options.method not in ("entropy", "max"):
        raise UserError(f"--calib-method must be entropy or max, got {options.calib_method!r}")
    if options.target not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {options.target!r}")
    if options.target != "tensorrt" and options.precision != "int8":
        raise UserError(f"--target {options.target} is for --precision int8 (FP16 has one layout)")
    if options.target == "openvino" and options.method != "max":
        raise UserError(f"--calib-method {options.method} is not offered by NNCF (--target openvino); use max")
    if options.target == "openvino" and importlib.util.find_spec("nncf") is None:
        raise CannotRunHere(NNCF_MISSING)
    if options.count < 1 or options.calib_batch < 1:
        raise UserError("--num-calib and --calib-batch must be at least 1")
    meta = read_meta(options.onnx)
    model = load_onnx(options.onnx)
    found = precision_of(model)
    if meta.get("precision", "fp32") != "fp32" or found != "fp32":
        raise UserError(f"{options.onnx} is already quantized ({meta.get('precision') if found == 'fp32' else found}); "
                        "quantize the FP32 export instead")
    static = meta["shapes"]["batch"]["min"] == meta["shapes"]["batch"]["max"]  # a fixed batch dim takes no other
    if static and options.calib_batch != meta["shapes"]["batch"]["max"]:
        raise UserError(f"{options.onnx.name} has a static batch of {meta['shapes']['batch']['max']}: give "
                        f"--calib-batch {meta['shapes']['batch']['max']} (got {options.calib_batch})")
    output = options.output_path()
    if output.resolve() == options.onnx.resolve():
        raise UserError(f"--output {output} would overwrite the source model")

    source = calibration_source(options, meta)
    images = choose(list_images(source, options.calib_image_dir), options.count)
    if len(images) < options.count:
        log(f"[quantize] warning: {source} has only {len(images)} images; calibrating on all of them")
    if options.precision == "int8":
        check_batch(len(images), options.calib_batch)  # before the images are preprocessed and cached
    canvas = calibration_canvas(options, meta)
    contract = GraphContract.from_meta(meta, source=str(options.onnx))
    excludes = options.excludes()
    # everything this run writes beside the output is in one staging folder, removed at the end, or by the next
    # quantize stage when this one is killed (core/staging.py); without --calib-cache the preprocessed images
    # live there too
    with staging_dir(output) as stage:
        calib = load_or_build(images, preprocess=Preprocess(contract.preprocess), canvas=canvas,
                              onnx_sha256=meta["sha256"], cache_dir=options.calib_cache or stage / "calib", log=log)
        log(f"[quantize] {options.precision}: {len(images)} images from {source} at {canvas[0]}x{canvas[1]}, "
            f"{len(excludes)} exclusion patterns")
        t0 = time.perf_counter()
        staged = stage / output.name
        range_kept, qdq = _convert(options, calib, excludes, staged, log)
        quantization = {
            "tool": TOOLS[options.precision if options.precision == "fp16" else options.target],
            "target": options.target if options.precision == "int8" else None,
            "source_onnx": options.onnx.name, "source_sha256": meta["sha256"],
            "calibration": {"method": options.method if options.precision == "int8" else "autocast-range-check",
                            "images": len(images), "source": str(source), "canvas": list(canvas),
                            "cache": str(calib.path) if options.calib_cache else None, "batch": options.calib_batch},
            "excludes": excludes, "qdq_nodes": qdq, "seconds": round(time.perf_counter() - t0, 1),
            "fp16_range_kept": range_kept, "request": quantize_request(options),
        }
        new_meta = land(staged, output, quantized_meta(meta, options, quantization))
    log(f"[quantize] wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, {qdq} Q/DQ nodes) and "
        f"{meta_path(output).name} in {quantization['seconds']:.1f} s")
    return output, new_meta


def quantized_meta(meta: dict[str, Any], options: QuantizeOptions, quantization: dict[str, Any]) -> dict[str, Any]:
    """The quantized model's meta.json: the source's contract, its precision and how it was made (the source's
    file description and verification are not the new model's)."""
    new_meta = {k: v for k, v in meta.items() if k != "verification"}
    new_meta["precision"] = options.precision
    new_meta["quantization"] = quantization
    versions = new_meta.setdefault("versions", {})
    if options.target == "ort-cpu":
        import onnxruntime

        versions["onnxruntime_quantization"] = onnxruntime.__version__
    elif options.target == "openvino":
        versions["nncf"] = importlib.metadata.version("nncf")
    else:
        versions["modelopt"] = _modelopt_version()
    return new_meta


def _modelopt_version() -> str:
    import modelopt

    return str(modelopt.__version__)
