"""What `export` is asked to do. Light on imports, so the CLI reads its defaults without loading the exporter."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.contract import MAX_TOPK, ShapeRange
from ..core.errors import UserError
from ..core.sidecar import PACKAGE_SUFFIX

if TYPE_CHECKING:
    from ..core.config import Config

FORMATS = ("onnx", "aoti")  # NAME.onnx, or an AOTInductor package NAME.pt2
NMS_LOWERINGS = {"onnx": ("onnx", "tensor"), "aoti": ("kernel", "loop")}  # per format: export.nms.STRATEGIES, by name
ROI_ALIGN_LOWERINGS = ("onnx", "gather", "bag")  # export.roi_align; by default the one that goes with --nms
# "onnx" is torchvision's roi_align op: the ONNX RoiAlign op in a graph, torchvision's kernel in a package;
# "bag" is for packages only, and a CPU package's default at a fixed sampling ratio (`resolved`)
ROI_ALIGN_FOR_NMS = {"onnx": "onnx", "tensor": "gather", "loop": "onnx", "kernel": "onnx"}
PACKAGE_DEVICES = ("cpu", "cuda")
PACKAGE_PRECISIONS = ("fp32", "fp16")  # fp16: the network under CUDA autocast, inside the package
DEFAULT_BATCH = ShapeRange(1, 8)
EXPORT_DIR = Path("export")  # where an export goes when no output is given
DEFAULT_NMS = {"onnx": "onnx", "aoti": "kernel"}  # per format, when no NMS lowering is given
BOX_CANDIDATES = 1000  # R-CNN box head: best per-class candidates entering NMS (<= MAX_TOPK)
ROI_SAMPLES = 2  # the gather RoIAlign's bound on adaptive samples per bin and axis


def default_output_name(config_file: str | Path, nms: str, format: str = "onnx", precision: str = "fp32") -> str:
    """<config name>.onnx; the tensor-NMS variant and the AOTInductor packages get their own names, so all of them
    (and their meta.json) can sit side by side."""
    path = Path(config_file)
    # a training run's OUTPUT_DIR/config.yaml is named after its folder
    stem = path.parent.name if path.stem == "config" and path.parent.name else path.stem
    if format == "aoti":
        return f"{stem}_aoti.pt2" if precision == "fp32" else f"{stem}_aoti_{precision}.pt2"
    return f"{stem}.onnx" if nms == "onnx" else f"{stem}_{nms}nms.onnx"


@dataclass(frozen=True)
class ExportOptions:
    """None fields are resolved against the config by `resolved`: the output export/<config name>.onnx (or
    _aoti.pt2), H and W from 2 x the divisibility to the test resize's long side, the config's divisibility,
    and the format's NMS lowering (DEFAULT_NMS)."""

    output: Path | None = None
    format: str = "onnx"
    batch: ShapeRange = DEFAULT_BATCH
    height: ShapeRange | None = None
    width: ShapeRange | None = None
    divisibility: int | None = None  # INPUT.SIZE_DIVISIBILITY: every level is exactly 2x the next
    nms: str | None = None
    input_scale: float = 255.0
    opset: int | None = None
    box_candidates: int = BOX_CANDIDATES
    max_det_masks: int | None = None  # Mask R-CNN: the mask head on the best N of the K rows (None: all K)
    simplify: bool = False
    roi_align: str | None = None  # None: "onnx" with --nms onnx, "gather" (plugin-free) with --nms tensor
    roi_samples: int = ROI_SAMPLES  # the gather lowering's bound on adaptive RoIAlign samples per bin and axis
    device: str = "cpu"  # the AOTInductor package's device
    precision: str = "fp32"  # the AOTInductor package's arithmetic: fp32, or fp16 (CUDA autocast)

    def resolved(self, cfg: Config, config_file: str | Path) -> ExportOptions:
        from ..model.meta import default_size_range

        nms = self.nms or DEFAULT_NMS.get(self.format, "onnx")
        size = default_size_range(cfg)
        output = self.output or EXPORT_DIR / default_output_name(config_file, nms, self.format, self.precision)
        roi_align = self.roi_align
        if (roi_align is None and self.format == "aoti" and self.device == "cpu" and cfg.MODEL.ROI_POOLER_SAMPLING_RATIO
                and cfg.MODEL.META_ARCHITECTURE != "retinanet"):  # RetinaNet has no RoIAlign
            roi_align = "bag"  # exact at a fixed ratio, and on every thread where torchvision's CPU kernel uses one
        return dataclasses.replace(self, output=Path(output), nms=nms, roi_align=roi_align, height=self.height or size,
                                   width=self.width or size,
                                   divisibility=self.divisibility or cfg.INPUT.SIZE_DIVISIBILITY)

    @property
    def roi_align_lowering(self) -> str:
        return self.roi_align or ROI_ALIGN_FOR_NMS[self.nms]

    def validate(self) -> None:
        if self.output is None or self.nms is None or self.height is None or self.width is None or not self.divisibility:
            raise ValueError("validate() takes resolved options (ExportOptions.resolved)")
        if self.format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        suffix = PACKAGE_SUFFIX if self.format == "aoti" else ".onnx"
        if Path(self.output).suffix != suffix:
            raise UserError(f"--output must end in {suffix} for --format {self.format}, got {self.output}")
        if self.nms not in NMS_LOWERINGS[self.format]:
            raise UserError(f"--nms must be one of {', '.join(NMS_LOWERINGS[self.format])} for --format {self.format}, "
                            f"got {self.nms!r}")
        if self.device not in PACKAGE_DEVICES or (self.device != "cpu" and self.format != "aoti"):
            raise UserError(f"--device is the AOTInductor package's (cpu or cuda; --format aoti), got {self.device!r}")
        if self.precision not in PACKAGE_PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PACKAGE_PRECISIONS)}, got {self.precision!r}")
        if self.precision != "fp32" and (self.format != "aoti" or self.device != "cuda"):
            raise UserError(f"--precision {self.precision} is for CUDA packages (--format aoti --device cuda); for "
                            "ONNX use `siefpn-deploy quantize --precision fp16`")
        if self.format == "aoti" and (self.simplify or self.opset is not None):
            raise UserError("--simplify and --opset are ONNX options; a --format aoti package has neither")
        if self.roi_align is not None and self.roi_align not in ROI_ALIGN_LOWERINGS:
            raise UserError(f"--roi-align must be one of {', '.join(ROI_ALIGN_LOWERINGS)}, got {self.roi_align!r}")
        if self.roi_align == "bag" and self.format != "aoti":
            raise UserError("--roi-align bag is for --format aoti packages: ONNX has no EmbeddingBag op (use gather)")
        if not 1 <= self.roi_samples <= 16:
            raise UserError(f"--roi-samples must be in 1..16, got {self.roi_samples}")
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
        if self.max_det_masks is not None and self.max_det_masks < 1:
            raise UserError(f"--max-det-masks must be at least 1, got {self.max_det_masks}")
        if not 1 <= self.box_candidates <= MAX_TOPK:
            raise UserError(f"--box-candidates must be in 1..{MAX_TOPK} (TensorRT's TopK limit), got {self.box_candidates}")
        if self.input_scale not in (1.0, 255.0):
            raise UserError(f"--input-range must be 255 or 1, got {self.input_scale:g}")
        if self.opset is not None:
            import onnx.defs

            newest = onnx.defs.onnx_opset_version()
            if not 18 <= self.opset <= newest:
                raise UserError(f"--opset must be in 18..{newest} (the dynamo exporter starts at 18), got {self.opset}")
