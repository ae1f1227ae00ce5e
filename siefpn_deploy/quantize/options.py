"""What `quantize` is asked to do. Light on imports, so the CLI reads its defaults without loading ModelOpt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .precision import DEFAULT_EXCLUDES


@dataclass(frozen=True)
class QuantizeOptions:
    onnx: Path
    precision: str  # "fp16" or "int8"
    output: Path | None = None
    calib_data: Path | None = None  # a folder or an instances JSON; default: the model's train split
    calib_image_dir: Path | None = None
    num_calib: int | None = None  # default 512 for int8, 16 for fp16's range check
    calib_method: str = "entropy"
    calib_batch: int = 8
    calib_size: tuple[int, int] | None = None  # the calibration canvas; default: the largest exported size
    calib_cache: Path | None = None  # preprocessed images are cached here (the CLI's default: calib/)
    exclude: list[str] = field(default_factory=list)
    default_excludes: bool = True

    @property
    def count(self) -> int:
        return self.num_calib if self.num_calib is not None else (512 if self.precision == "int8" else 16)

    def excludes(self) -> list[str]:
        return (list(DEFAULT_EXCLUDES.values()) if self.default_excludes else []) + list(self.exclude)

    def output_path(self) -> Path:
        if self.output is not None:
            return self.output
        name = self.onnx.name.removesuffix(".onnx")
        return self.onnx.with_name(f"{name}.{self.precision}.onnx")
