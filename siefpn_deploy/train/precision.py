"""Training arithmetic: bfloat16 autocast where the CPU computes bfloat16 natively, FP32 elsewhere.

SOLVER.AMP:
- auto: bf16 autocast on a CPU with AVX512-BF16 or AMX (a measured 1.6x on the synthetic preset's step on
  this project's 2-core CI machine, 1.8x with channels_last; DESIGN.md section 3), FP32 on other CPUs (where
  bf16 is emulated and slower) and on CUDA (the GPU figures are FP32; ask for bf16 there explicitly);
- bf16: bf16 autocast on any device;
- fp32: no autocast (YAML would read a bare `off` as false).

Autocast runs the convolutions and matrix products in bf16 and keeps the losses, the softmaxes and
the normalisations in FP32 (PyTorch's autocast op lists); the weights, gradients and optimizer stay FP32,
so no loss scaling is needed (bf16 has FP32's exponent range).
"""

from __future__ import annotations

import contextlib

import torch

from ..core.cpu import bf16_units


def cpu_has_native_bf16() -> bool:
    return bf16_units() is not None


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype SOLVER.AMP asks for on `device`, or None for FP32."""
    if amp == "bf16" or (amp == "auto" and device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def training_autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the training forward runs in."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
