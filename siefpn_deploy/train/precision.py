"""Training arithmetic: bfloat16 autocast where the CPU computes bfloat16 natively, FP32 elsewhere.

SOLVER.AMP:
- auto: bf16 autocast on a CPU with AVX512-BF16 or AMX (about 1.9x FP32's training throughput with
  channels_last on the synthetic preset, 2 cores: benchmarks/results/train_default_cpu.md), FP32 on other CPUs
  (where bf16 is emulated and slower) and on CUDA (ask for bf16 there explicitly). SIEFPN_CPU_BF16=0 or 1
  overrides the CPU detection (core/cpu.py);
- bf16: bf16 autocast on any device;
- fp32: no autocast (YAML would read a bare `off` as false).

Autocast runs the convolutions and matrix products in bf16 and keeps the losses, the softmaxes and
the normalisations in FP32 (PyTorch's autocast op lists); the weights, gradients and optimizer stay FP32,
so no loss scaling is needed (bf16 has FP32's exponent range).
"""

from __future__ import annotations

import contextlib

import torch

from ..core.cpu import native_bf16


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype SOLVER.AMP asks for on `device`, or None for FP32."""
    if amp == "bf16" or (amp == "auto" and device.type == "cpu" and native_bf16()):
        return torch.bfloat16
    return None


def training_autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the training forward runs in."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
