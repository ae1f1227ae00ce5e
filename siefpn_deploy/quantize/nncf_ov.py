"""`quantize --precision int8 --target openvino`: NNCF's post-training quantization (`nncf.quantize`, its ONNX
back end) into NAME.int8-ov.onnx, a QDQ ONNX graph laid out as OpenVINO's CPU plugin fuses it: symmetric int8
activations and per-channel weights on the convolutions and matrix products, inserted on the inputs of each
quantized op (so an excluded consumer of a Conv's output reads it in FP32, with no rewiring).

The exclusions are the same node-name regexes as every other INT8 path, passed as NNCF's IgnoredScope patterns
(NNCF matches them with `re.match`, as ModelOpt does). It runs in a child process (child.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .calibration import BatchReader, CalibrationSet
from .child import child_main, run_child

TOOL = "nncf.quantize"


class Batches:
    """The reader as NNCF's data source: each iteration is one calibration pass, from the first batch."""

    def __init__(self, reader: BatchReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader.starts)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.reader.rewind()
        return iter(self.reader.get_next, None)


def quantize_for_openvino_in_subprocess(source: Path, target: Path, calib: CalibrationSet, *, method: str, batch: int,
                                        excludes: list[str]) -> None:
    run_child(__name__, "NNCF's post-training quantization", source, target, calib, method=method, batch=batch,
              excludes=excludes)


def quantize_for_openvino(source: Path, target: Path, reader: BatchReader, *, excludes: list[str]) -> None:
    import nncf
    import onnx

    nncf.set_log_level(logging.WARNING)  # this child's own logging: NNCF logs a line per skipped node at INFO
    batches = Batches(reader)
    model = nncf.quantize(onnx.load(str(source)), nncf.Dataset(batches), subset_size=len(batches),
                          target_device=nncf.TargetDevice.CPU,
                          # validate=False: a pattern may match nothing in a graph (no GAU, say), as elsewhere
                          ignored_scope=nncf.IgnoredScope(patterns=excludes, validate=False))
    onnx.save(model, str(target))


def main(argv: list[str]) -> int:
    return child_main(argv, lambda job, reader: quantize_for_openvino(Path(job["source"]), Path(job["target"]), reader,
                                                                      excludes=job["excludes"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
