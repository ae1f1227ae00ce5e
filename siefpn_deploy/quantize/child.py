"""INT8 back ends that run in a child process (`python -m siefpn_deploy.quantize.<module> JOB`): ONNX Runtime's
static quantization (ort_cpu.py) and NNCF (nncf_ov.py).

Why a child: ModelOpt, which makes the TensorRT layout, patches ONNX Runtime's quantization classes
process-wide once it has run (modelopt/onnx/quantization/ort_patching.py), and NNCF configures its own
logging on import. A child keeps each tool's process state to itself. The child reads the calibration
tensors from the cache files the parent wrote, so nothing is preprocessed twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError, one_line
from .calibration import BatchReader, CalibrationSet


def run_child(module: str, tool: str, source: Path, target: Path, calib: CalibrationSet, *, method: str, batch: int,
              excludes: list[str]) -> None:
    """`module`'s main() on one job; a failure is one UserError naming `tool` and the model."""
    job = {"source": str(source), "target": str(target), "tensors": str(calib.path), "sizes": str(calib.sizes_path),
           "method": method, "batch": batch, "excludes": excludes}
    # stderr passes through: the child's progress bar, and its one-line error
    done = subprocess.run([sys.executable, "-P", "-m", module, json.dumps(job)], check=False)
    if done.returncode != 0:
        raise UserError(f"{tool} of {source.name} failed (exit {done.returncode}; its message is above)")


def child_main(argv: list[str], quantize: Callable[[dict[str, Any], BatchReader], object]) -> int:
    """The child's side: the job's calibration reader, `quantize(job, reader)`, and a one-line error on failure."""
    job = json.loads(argv[0])
    reader = BatchReader(np.load(job["tensors"], mmap_mode="r"), np.load(job["sizes"]), batch=job["batch"],
                         desc=f"calibrate ({job['method']})")
    try:
        quantize(job, reader)
    except (UserError, ValueError, RuntimeError) as e:  # the quantizers raise plain ValueErrors and RuntimeErrors
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
