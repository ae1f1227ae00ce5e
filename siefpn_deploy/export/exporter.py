"""`siefpn-deploy export`: a trained detector -> NAME.onnx + NAME.meta.json, verified in ONNX Runtime.

torch.onnx's dynamo exporter traces the deploy wrapper with symbolic batch, H = 32*h and W = 32*w,
so nothing shape-dependent (anchors, GAU attention sizes, upsample targets, RoI levels) is frozen.
The example batch is 2 when the batch is dynamic: a batch-1 example specialises the batch to 1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import Config
from ..core.errors import UserError
from ..core.sidecar import meta_path, sha256_of, write_meta
from ..model.checkpoint import load_checkpoint, load_model_weights
from ..model.detectors import build_detector
from .deploy import PostprocessSettings, build_deploy_model
from .nms import ONNX_TRANSLATIONS, STRATEGIES
from .onnx_passes import name_nodes_by_module, type_loop_bodies
from .verify import Verification, verify_onnx

PROTOBUF_LIMIT = (1 << 31) - (1 << 26)  # weights above ~1.9 GB go to NAME.onnx.data
EXAMPLE_BATCH = 2  # >= 2, or the dynamo exporter specialises the batch dimension to 1
MAX_TOPK = 3840  # TensorRT's TopK limit: bounds --max-det and --box-candidates


@dataclass(frozen=True)
class ShapeRange:
    min: int
    max: int

    @property
    def static(self) -> bool:
        return self.min == self.max


@dataclass(frozen=True)
class ExportOptions:
    output: Path
    batch: ShapeRange = ShapeRange(1, 8)
    height: ShapeRange = ShapeRange(64, 1344)
    width: ShapeRange = ShapeRange(64, 1344)
    divisibility: int = 32  # INPUT.SIZE_DIVISIBILITY: every level is exactly 2x the next
    nms: str = "onnx"
    input_scale: float = 255.0
    opset: int | None = None
    box_candidates: int = 1000
    simplify: bool = False
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.nms not in STRATEGIES:
            raise UserError(f"--nms must be one of {', '.join(STRATEGIES)}, got {self.nms!r}")
        if self.batch.min < 1 or self.batch.max < self.batch.min:
            raise UserError(f"batch range [{self.batch.min}, {self.batch.max}] is empty or below 1 (--batch / --dynamic-batch)")
        div = self.divisibility
        # GAU max-pools the stride-32 level 2x2, so that level needs at least 2 cells: 64 px at divisibility 32
        least = 2 * div
        for name, r in (("height", self.height), ("width", self.width)):
            if r.min % div or r.max % div:
                raise UserError(f"{name} {r.min}..{r.max} is not a multiple of {div} (INPUT.SIZE_DIVISIBILITY); "
                                f"use e.g. {max(least, r.min // div * div)} (--imgsz / --dynamic-size)")
            if r.min < least:
                raise UserError(f"{name} {r.min} is below the smallest input, {least} (--imgsz / --dynamic-size)")
            if r.max < r.min:
                raise UserError(f"{name} range [{r.min}, {r.max}] is empty (--dynamic-size MIN MAX)")
        if not 1 <= self.box_candidates <= MAX_TOPK:
            raise UserError(f"--box-candidates must be in 1..{MAX_TOPK} (TensorRT's TopK limit), got {self.box_candidates}")
        if self.input_scale not in (1.0, 255.0):
            raise UserError(f"--input-range must be 255 or 1, got {self.input_scale:g}")
        if self.opset is not None:
            import onnx.defs

            newest = onnx.defs.onnx_opset_version()
            if not 18 <= self.opset <= newest:
                raise UserError(f"--opset must be in 18..{newest} (the dynamo exporter starts at 18), got {self.opset}")


def default_size_range(cfg: Config) -> ShapeRange:
    """H and W from the smallest input (2 x divisibility) to the test resize's long side, padded."""
    div = cfg.INPUT.SIZE_DIVISIBILITY
    return ShapeRange(2 * div, -(-cfg.INPUT.MAX_SIZE_TEST // div) * div)


def default_output(config_file: str | Path, nms: str) -> Path:
    """export/<config name>.onnx; the tensor-NMS variant gets its own name so both can sit side by side."""
    path = Path(config_file)
    # a training run's OUTPUT_DIR/config.yaml is named after its folder
    stem = path.parent.name if path.stem == "config" and path.parent.name else path.stem
    return Path("export") / (f"{stem}.onnx" if nms == "onnx" else f"{stem}_{nms}nms.onnx")


def load_trained_detector(cfg: Config, *, config_name: str) -> tuple[nn.Module, dict[str, list]]:
    """The detector of cfg with MODEL.WEIGHTS loaded (eval mode, CPU) and its classes."""
    if not cfg.MODEL.WEIGHTS:
        raise UserError("no weights given: add MODEL.WEIGHTS path/to/model_final.pth")
    state = load_checkpoint(cfg.MODEL.WEIGHTS)
    classes = state.get("classes")
    if not classes:
        raise UserError(f"checkpoint {cfg.MODEL.WEIGHTS} records no classes; train it with `siefpn-deploy train`")
    model = build_detector(cfg, num_classes=len(classes["names"]))
    load_model_weights(model, state, cfg.MODEL.WEIGHTS, config_name)
    return model.eval(), {"names": list(classes["names"]), "category_ids": [int(c) for c in classes["category_ids"]]}


def _dynamic_shapes(options: ExportOptions) -> dict:
    from torch.export import Dim

    dims: dict[int, Any] = {}
    if not options.batch.static:
        dims[0] = Dim("batch", min=options.batch.min, max=options.batch.max)
    div = options.divisibility
    for axis, name, r in ((2, "height", options.height), (3, "width", options.width)):
        if not r.static:
            dims[axis] = div * Dim(f"{name}_{div}", min=r.min // div, max=r.max // div)
    return {"images": dims}


def example_shape(options: ExportOptions) -> tuple[int, int, int, int]:
    batch = options.batch.min if options.batch.static else max(EXAMPLE_BATCH, options.batch.min)
    # H != W where the ranges allow: a square example lets the tracer conflate the two dims unnoticed
    pick = lambda r, target: r.min if r.static else min(r.max, max(r.min, target))  # noqa: E731
    return (batch, 3, pick(options.height, 256), pick(options.width, 320))


def model_meta(cfg: Config, options: ExportOptions, detector: nn.Module, classes: dict) -> dict[str, Any]:
    """Everything a runtime needs about the model and its graph contract, minus the ONNX specifics
    (the PyTorch runtime backend describes a checkpoint with it too)."""
    import torchvision

    from .. import __version__

    k = cfg.MODEL.DETECTIONS_PER_IMAGE
    outputs = [
        {"name": "num_dets", "dtype": "int32", "shape": ["batch"]},
        {"name": "boxes", "dtype": "float32", "shape": ["batch", k, 4]},
        {"name": "scores", "dtype": "float32", "shape": ["batch", k]},
        {"name": "labels", "dtype": "int32", "shape": ["batch", k]},
    ]
    if cfg.MODEL.has_masks:
        res = 2 * detector.roi_heads.mask_roi_pool.output_size[0]  # the predictor's 2x deconvolution
        outputs.append({"name": "masks", "dtype": "float32", "shape": ["batch", k, res, res]})
    m, d = cfg.MODEL, cfg.DATASETS
    post: dict[str, Any] = {
        "score_thresh": m.SCORE_THRESH_TEST, "iou_thresh": m.NMS_THRESH_TEST, "max_det": k, "nms": options.nms,
    }
    if m.META_ARCHITECTURE == "retinanet":
        post["topk_candidates"] = detector.topk_candidates
    else:
        rpn = detector.rpn
        post["rpn"] = {"pre_nms_top_n": rpn._pre_nms_top_n["testing"], "post_nms_top_n": rpn._post_nms_top_n["testing"],
                       "iou_thresh": rpn.nms_thresh}
        post["box_candidates"] = options.box_candidates
    return {
        "architecture": m.META_ARCHITECTURE, "backbone": m.BACKBONE, "neck": m.NECK,
        "inputs": [{"name": "images", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
        "outputs": outputs,
        "shapes": {"batch": vars(options.batch), "height": vars(options.height), "width": vars(options.width),
                   "divisibility": options.divisibility},
        "preprocess": {"layout": "NCHW", "color": "RGB", "input_scale": options.input_scale,
                       "pixel_mean": list(m.PIXEL_MEAN), "pixel_std": list(m.PIXEL_STD),
                       "pad_value": [v * options.input_scale for v in m.PIXEL_MEAN],
                       "resize": {"min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST},
                       "normalized_in_graph": True},
        "postprocess": post,
        "classes": {**classes, "label_to_class": "labels are 1-based: class index = label - 1; -1 pads"},
        "precision": "fp32",
        "versions": {"siefpn_deploy": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
        "source": {"weights": str(m.WEIGHTS), "weights_sha256": sha256_of(m.WEIGHTS)},
        # where calibration finds training images by default, and which split it must never use
        "datasets": {"train_images": d.TRAIN_IMAGES, "train_annotations": d.TRAIN_ANNOTATIONS,
                     "test_images": d.TEST_IMAGES, "test_annotations": d.TEST_ANNOTATIONS},
        **options.extra_meta,
    }


def check_output(output: Path) -> None:
    """Fail before the (slow) trace when the output cannot be written."""
    if output.suffix != ".onnx":
        raise UserError(f"--output must end in .onnx, got {output}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {output.parent} (--output): {e.strerror or e}") from None


def trace(deploy: nn.Module, options: ExportOptions) -> tuple[Any, tuple[int, ...]]:
    """torch.onnx's dynamo exporter -> ModelProto (optimised; slimmed with --simplify)."""
    shape = example_shape(options)
    example = torch.rand(shape) * options.input_scale
    try:
        program = torch.onnx.export(
            deploy, (example,), dynamo=True, input_names=["images"], output_names=list(deploy.output_names),
            dynamic_shapes=_dynamic_shapes(options), custom_translation_table=ONNX_TRANSLATIONS,
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


def export_onnx(cfg: Config, options: ExportOptions, *, config_name: str, verify_images: list[torch.Tensor] | None,
                log=print) -> ExportResult:
    """Trace, save to a private staging folder, verify there (unless verify_images is None), then move
    NAME.onnx (+ NAME.onnx.data when over 2 GB) and NAME.meta.json into place. A failed export or
    verification leaves an existing NAME.onnx untouched."""
    import onnx

    options.validate()
    if not 1 <= cfg.MODEL.DETECTIONS_PER_IMAGE <= MAX_TOPK:
        raise UserError(f"--max-det must be in 1..{MAX_TOPK} (TensorRT's TopK limit), got {cfg.MODEL.DETECTIONS_PER_IMAGE}")
    output = Path(options.output)
    check_output(output)
    detector, classes = load_trained_detector(cfg, config_name=config_name)
    deploy = build_deploy_model(
        detector, settings=PostprocessSettings(nms=STRATEGIES[options.nms], box_candidates=options.box_candidates),
        input_scale=options.input_scale,
    )
    b, h, w = options.batch, options.height, options.width
    log(f"[export] tracing {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.NECK}, {cfg.MODEL.BACKBONE}): batch {b.min}..{b.max}, "
        f"H {h.min}..{h.max}, W {w.min}..{w.max}, nms={options.nms}; this takes a minute or two")
    t0 = time.perf_counter()
    model, shape = trace(deploy, options)
    export_seconds = time.perf_counter() - t0
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    meta = model_meta(cfg, options, detector, classes)
    meta["opset"] = opset
    meta["versions"]["onnx"] = onnx.__version__
    large = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT
    meta["export"] = {"seconds": round(export_seconds, 2), "external_data": large, "simplified": options.simplify,
                      "example_shape": list(shape)}
    log(f"[export] traced in {export_seconds:.1f} s ({len(model.graph.node)} nodes, opset {opset})")

    # The staging folder holds the final file names: external data refers to its file by name.
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = stage / output.name
        onnx.save_model(model, staged, save_as_external_data=large, location=output.name + ".data" if large else None)
        verification = None
        if verify_images is not None:
            verification = verify_onnx(staged, meta, detector, verify_images, log=log)
            meta["verification"] = verification.as_dict()
        if large:
            os.replace(stage / (output.name + ".data"), output.with_name(output.name + ".data"))
        os.replace(staged, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_meta(output, meta)
    log(f"[export] wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) and {meta_path(output).name}")
    return ExportResult(path=output, meta=meta, verification=verification)
