"""`siefpn-deploy export`: a trained detector -> NAME.onnx + NAME.meta.json, verified in ONNX Runtime.

torch.onnx's dynamo exporter traces the deploy wrapper with symbolic batch, H = 32*h and W = 32*w,
so nothing shape-dependent (anchors, GAU attention sizes, upsample targets, RoI levels) is frozen.
The example input and symbolic dims are in shapes.py.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import Config
from ..core.contract import INPUT_NAMES
from ..core.errors import UserError
from ..core.sidecar import check_meta_free, data_path, land, meta_path, request_key
from ..core.staging import staging_dir
from ..model.checkpoint import load_trained_detector
from ..model.meta import contract_for, model_meta
from .aoti import compile_package, compile_settings
from .deploy import PostprocessSettings, build_deploy_model
from .nms import ONNX_TRANSLATIONS, STRATEGIES
from .onnx_passes import name_nodes_by_module, type_loop_bodies
from .options import MAX_TOPK, ExportOptions
from .shapes import dynamic_shapes, example_shape
from .verify import Verification, verify_onnx, verify_package

PROTOBUF_LIMIT = (1 << 31) - (1 << 26)  # weights above ~1.9 GB go to NAME.onnx.data
AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16}  # ExportOptions.precision -> the package's autocast


def check_output(output: Path) -> None:
    """Fail before the (slow) trace when the output cannot be written."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {output.parent} (--output): {e.strerror or e}") from None
    check_meta_free(output)


def trace(deploy: nn.Module, options: ExportOptions) -> tuple[Any, tuple[int, ...]]:
    """torch.onnx's dynamo exporter -> ModelProto (optimised; slimmed with --simplify)."""
    shape = example_shape(options)
    example = torch.rand(shape) * options.input_scale
    sizes = torch.tensor([shape[2:]] * shape[0], dtype=torch.int32)  # [B,2]: values, never traced as constants
    try:
        program = torch.onnx.export(
            deploy, (example, sizes), dynamo=True, input_names=list(INPUT_NAMES), output_names=list(deploy.output_names),
            dynamic_shapes=dynamic_shapes(options), custom_translation_table=ONNX_TRANSLATIONS,
            opset_version=options.opset, verbose=False,
        )
    except Exception as e:  # the exporter's own messages are pages long; keep its first line
        raise UserError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from e
    model = program.model_proto
    name_nodes_by_module(model)
    type_loop_bodies(model)
    if options.simplify:
        import onnxslim

        model = onnxslim.slim(model)
    return model, shape


@dataclass
class ExportResult:
    path: Path
    meta: dict[str, Any]
    verification: Verification | None


@dataclass
class Prepared:
    """What both formats start from: the trained detector, its deploy wrapper and the meta.json so far."""

    detector: nn.Module
    deploy: nn.Module
    settings: PostprocessSettings
    meta: dict[str, Any]


def export_request(cfg: Config, options: ExportOptions) -> str:
    """What an export answers, as its meta.json records it (export.request): the options but the output path,
    and the config (thresholds, sizes, classes). The weights are meta's source.weights_sha256."""
    package = {"compile": compile_settings(torch.device(options.device).type)} if options.format == "aoti" else {}
    return request_key({**dataclasses.asdict(options), "output": None, **package}, cfg.dump())


def published(staged: Path, output: Path, meta: dict[str, Any], verification: Verification | None, *,
              log=print) -> ExportResult:
    """The staged artifact moved into place, then its NAME.meta.json (`core.sidecar.land`: the order, and why)."""
    written = land(staged, output, meta)
    log(f"[export] wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) and {meta_path(output).name}")
    return ExportResult(path=output, meta=written, verification=verification)


def save_onnx(model: Any, path: Path, *, external_data: bool) -> None:
    """NAME.onnx (+ NAME.onnx.data beside it); a full disk or a quota is a one-line error."""
    import onnx

    try:
        onnx.save_model(model, path, save_as_external_data=external_data,
                        location=data_path(path).name if external_data else None)
    except OSError as e:
        raise UserError(f"cannot write {path.name} into {path.parent}: {e.strerror or e}") from None


def prepare(cfg: Config, options: ExportOptions, *, config_name: str, log=print) -> Prepared:
    options.validate()
    if options.divisibility != cfg.INPUT.SIZE_DIVISIBILITY:
        raise UserError(f"the export's divisibility {options.divisibility} differs from the config's "
                        f"INPUT.SIZE_DIVISIBILITY {cfg.INPUT.SIZE_DIVISIBILITY}")
    if not 1 <= cfg.MODEL.DETECTIONS_PER_IMAGE <= MAX_TOPK:
        raise UserError(f"--max-det must be in 1..{MAX_TOPK} (TensorRT's TopK limit), got {cfg.MODEL.DETECTIONS_PER_IMAGE}")
    if options.max_det_masks is not None and not cfg.MODEL.has_masks:
        raise UserError(f"--max-det-masks is for Mask R-CNN; this config is a {cfg.MODEL.META_ARCHITECTURE}")
    if options.max_det_masks is not None and options.max_det_masks > cfg.MODEL.DETECTIONS_PER_IMAGE:
        raise UserError(f"--max-det-masks {options.max_det_masks} is more than K, the detections per image "
                        f"({cfg.MODEL.DETECTIONS_PER_IMAGE}, MODEL.DETECTIONS_PER_IMAGE / --max-det)")
    check_output(Path(options.output))
    detector, classes = load_trained_detector(cfg, config_name=config_name)
    settings = PostprocessSettings(nms=STRATEGIES[options.nms], box_candidates=options.box_candidates,
                                   roi_align=options.roi_align_lowering, roi_samples=options.roi_samples,
                                   mask_detections=options.max_det_masks,
                                   # a package picks a compiled row bucket at run time; ONNX keeps one static shape
                                   masks_on_detections=options.format == "aoti")
    contract = contract_for(cfg, input_scale=options.input_scale, mask_detections=options.max_det_masks)
    deploy = build_deploy_model(detector, settings=settings, preprocess=contract.preprocess,
                                autocast_dtype=AUTOCAST_DTYPES[options.precision])
    meta = model_meta(cfg, detector, classes, batch=options.batch, height=options.height, width=options.width,
                      input_scale=options.input_scale, nms=options.nms, box_candidates=options.box_candidates,
                      mask_detections=options.max_det_masks)
    meta["precision"] = options.precision
    if cfg.MODEL.META_ARCHITECTURE != "retinanet":
        meta["postprocess"]["roi_align"] = {
            "lowering": settings.roi_align, "type": cfg.MODEL.ROI_POOLER_TYPE,
            "sampling_ratio": cfg.MODEL.ROI_POOLER_SAMPLING_RATIO,
            # the gather lowering is exact for RoIs whose bins are at most this many feature pixels a side
            "adaptive_bound": settings.roi_samples if settings.roi_align in ("gather", "bag") else None}
    b, h, w = options.batch, options.height, options.width
    log(f"[export] tracing {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.NECK}, {cfg.MODEL.BACKBONE}): batch {b.min}..{b.max}, "
        f"H {h.min}..{h.max}, W {w.min}..{w.max}, nms={options.nms}; this takes a minute or two")
    return Prepared(detector=detector, deploy=deploy, settings=settings, meta=meta)


def export_model(cfg: Config, options: ExportOptions, *, config_name: str, verify_images: list[torch.Tensor] | None,
                 log=print) -> ExportResult:
    """`export --format onnx|aoti`; options' None fields are resolved against the config."""
    write = export_package if options.format == "aoti" else export_onnx
    return write(cfg, options, config_name=config_name, verify_images=verify_images, log=log)


def export_onnx(cfg: Config, options: ExportOptions, *, config_name: str, verify_images: list[torch.Tensor] | None,
                log=print) -> ExportResult:
    """Trace, save to a private staging folder, verify there (unless verify_images is None), then move
    NAME.onnx (+ NAME.onnx.data when over 2 GB) and NAME.meta.json into place. A failed export or
    verification leaves an existing NAME.onnx untouched; a killed one leaves a staging folder that the next
    export stage into the same folder removes (pipeline/export.py)."""
    import onnx

    options = options.resolved(cfg, config_name)
    job = prepare(cfg, options, config_name=config_name, log=log)
    output, meta = Path(options.output), job.meta
    t0 = time.perf_counter()
    model, shape = trace(job.deploy, options)
    export_seconds = time.perf_counter() - t0
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    meta["opset"] = opset
    meta["versions"]["onnx"] = onnx.__version__
    large = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT
    meta["export"] = {"seconds": round(export_seconds, 2), "external_data": large, "simplified": options.simplify,
                      "example_shape": list(shape), "request": export_request(cfg, options)}
    log(f"[export] traced in {export_seconds:.1f} s ({len(model.graph.node)} nodes, opset {opset})")

    # The staging folder holds the final file names: external data refers to its file by name.
    with staging_dir(output) as stage:
        staged = stage / output.name
        save_onnx(model, staged, external_data=large)
        verification = None
        if verify_images is not None:
            verification = verify_onnx(staged, meta, job.detector, verify_images, log=log)
            meta["verification"] = verification.as_dict()
        return published(staged, output, meta, verification, log=log)


def export_package(cfg: Config, options: ExportOptions, *, config_name: str, verify_images: list[torch.Tensor] | None,
                   log=print) -> ExportResult:
    """torch.export of the same deploy wrapper, compiled by AOTInductor into NAME.pt2 (staged, verified, then
    moved into place with NAME.meta.json, as for ONNX). The package's own metadata carries the contract."""
    options = options.resolved(cfg, config_name)
    job = prepare(cfg, options, config_name=config_name, log=log)
    output, meta = Path(options.output), job.meta
    meta["opset"] = None  # not an ONNX graph
    meta["versions"]["torch_inductor"] = torch.__version__
    with staging_dir(output) as stage:
        staged = stage / output.name
        meta["export"] = {**compile_package(job.deploy, options, staged, meta, log=log),
                          "request": export_request(cfg, options)}
        verification = None
        if verify_images is not None:
            verification = verify_package(staged, meta, job.detector, verify_images, device=options.device,
                                          autocast_dtype=AUTOCAST_DTYPES[options.precision], log=log)
            meta["verification"] = verification.as_dict()
        return published(staged, output, meta, verification, log=log)
