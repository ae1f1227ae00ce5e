"""What this CPU is, for the choices that depend on it (training arithmetic) and for the benchmark reports
(CPU figures differ between hosts of the same size: the same 2-core preset trained about 1.5x faster in
bf16 where the CPU had AMX than where it had AVX512-BF16 only)."""

from __future__ import annotations

from pathlib import Path


def bf16_units() -> str | None:
    """"AMX" or "AVX512-BF16" where the CPU computes bfloat16 natively (AMX first: it is the faster one),
    otherwise None (bfloat16 is emulated there, and slower than FP32)."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else None


def cpu_model() -> str | None:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
