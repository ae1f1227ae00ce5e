"""What this CPU is, for the choices that depend on it (training arithmetic) and for the benchmark reports
(CPU figures differ between hosts of the same size: the same 2-core preset trained about 1.5x faster in
bf16 where the CPU had AMX than where it had AVX512-BF16 only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

# SIEFPN_CPU_BF16=1 or 0 overrides what `native_bf16` detects: the test suite runs both ways, so that no test
# passes only on a CPU of one kind, and a user can keep SOLVER.AMP auto in FP32 on a bf16 CPU.
BF16_ENV = "SIEFPN_CPU_BF16"


def bf16_units() -> str | None:
    """"AMX" or "AVX512-BF16" where the CPU computes bfloat16 natively (AMX first: it is the faster one),
    otherwise None (bfloat16 is emulated there, and slower than FP32)."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else None


def native_bf16() -> bool:
    """Whether SOLVER.AMP auto trains in bf16 on this CPU: the detected bf16 units, unless BF16_ENV says."""
    forced = os.environ.get(BF16_ENV, "")
    if forced not in ("", "0", "1"):
        raise UserError(f"{BF16_ENV} must be 1 (bf16) or 0 (FP32), got {forced!r}")
    return bf16_units() is not None if forced == "" else forced == "1"


def cpu_model() -> str | None:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `count` for the block, then put back; None leaves it as it is.

    The count is process-wide, so this belongs to an application or a benchmark that runs one model at a time
    (`infer`, `serve`, `bench`), never inside a library call that others may run concurrently. Its use: where
    ONNX Runtime or OpenVINO computes the model on the CPU, PyTorch only pre- and postprocesses, and its OpenMP
    workers spin on the cores for milliseconds after each parallel op, in the runtime's time
    (`Predictor.torch_threads`)."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
