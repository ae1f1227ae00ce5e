"""What `quantize` is asked to do. Light on imports, so the CLI reads its defaults without loading ModelOpt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .precision import DEFAULT_EXCLUDES

# Where an INT8 model runs, which decides its Q/DQ layout:
# - tensorrt: ModelOpt's explicit Q/DQ, symmetric int8 activations and weights, which TensorRT builds;
# - ort-cpu: ONNX Runtime's static quantization, uint8 activations and per-channel int8 weights on Conv,
#   the layout ONNX Runtime fuses into integer convolutions on x86 CPUs (VNNI where present);
# - openvino: NNCF's post-training quantization, the layout OpenVINO's CPU plugin fuses (`--runtime openvino`).
TARGETS = ("tensorrt", "ort-cpu", "openvino")
# ORT's entropy pass histograms every tensor; NNCF offers min/max statistics only
DEFAULT_CALIB_METHOD = {"tensorrt": "entropy", "ort-cpu": "max", "openvino": "max"}
INT8_SUFFIX = {"tensorrt": "int8", "ort-cpu": "int8-cpu", "openvino": "int8-ov"}  # NAME.<suffix>.onnx
CALIB_CACHE = Path("calib")  # `quantize --calib-cache`'s default: preprocessed calibration images


@dataclass(frozen=True)
class QuantizeOptions:
    onnx: Path
    precision: str  # "fp16" or "int8"
    output: Path | None = None
    calib_data: Path | None = None  # a folder or an instances JSON; default: the model's train split
    calib_image_dir: Path | None = None
    num_calib: int | None = None  # default 512 for int8, 16 for fp16's range check
    calib_method: str | None = None  # entropy or max; default per target (DEFAULT_CALIB_METHOD)
    target: str = "tensorrt"  # int8 only: TARGETS
    calib_batch: int = 8
    calib_size: tuple[int, int] | None = None  # the calibration canvas; default: the largest exported size
    calib_cache: Path | None = None  # preprocessed images are cached here (the CLI's default: CALIB_CACHE)
    exclude: list[str] = field(default_factory=list)
    default_excludes: bool = True

    @property
    def method(self) -> str:
        return self.calib_method or DEFAULT_CALIB_METHOD.get(self.target, "entropy")

    @property
    def count(self) -> int:
        return self.num_calib if self.num_calib is not None else (512 if self.precision == "int8" else 16)

    def excludes(self) -> list[str]:
        return (list(DEFAULT_EXCLUDES.values()) if self.default_excludes else []) + list(self.exclude)

    def output_path(self) -> Path:
        if self.output is not None:
            return self.output
        name = self.onnx.name.removesuffix(".onnx")
        suffix = INT8_SUFFIX[self.target] if self.precision == "int8" else self.precision
        return self.onnx.with_name(f"{name}.{suffix}.onnx")


@dataclass(frozen=True)
class BudgetOptions:
    """`quantize --budget`: what `parity.budget.quantize_within_budget` holds an INT8 model to."""

    budget: float  # AP points (0..100) INT8 may lose against FP32 on the held-out images
    sensitivity_images: int = 200  # the last N train images by id: held out of calibration, scored
    max_excluded: int = 8  # layers kept out of INT8 before the loop gives up
    report_dir: Path = Path("reports/quantize")
