"""GAU: attention upsampling, one module shared by every level.

A non-local block (embedded Gaussian) on the merged coarser level M, then a bilinear upsample to the
finer lateral's size. The attention is scaled-dot-product attention with scale 1.0, so it runs through
`F.scaled_dot_product_attention` (fused, memory-efficient kernels where the backend has them; a
plain MatMul/Softmax/MatMul in ONNX).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GAU(nn.Module):
    def __init__(self, *, channels: int) -> None:
        super().__init__()
        inter = channels // 2
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.out = nn.Conv2d(inter, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        # zero BN affine: the block starts as the identity, z = M
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def non_local(self, m: torch.Tensor) -> torch.Tensor:
        b, _c, h, w = m.shape
        # contiguous: SDPA's fused kernels (CPU flash, CUDA flash/memory-efficient) need a unit-stride last
        # dim; a transposed view falls back to the math path, which materialises the HW x HW/4 matrix
        # (277 MiB at 800x1333, stride 8, vs 8 MiB)
        q = self.theta(m).flatten(2).transpose(1, 2).contiguous()  # [B, HW, C/2]
        k = self.pool(self.phi(m)).flatten(2).transpose(1, 2).contiguous()  # [B, HW/4, C/2]
        v = self.pool(self.g(m)).flatten(2).transpose(1, 2).contiguous()  # [B, HW/4, C/2]
        # softmax over phi positions of theta^T phi, no 1/sqrt(d): scale=1.0
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0]
        y = y.transpose(1, 2).reshape(b, -1, h, w)  # [B, C/2, H, W]
        return self.bn(self.out(y)) + m

    def forward(self, m: torch.Tensor, size: list[int] | torch.Size) -> torch.Tensor:
        """Upsample to `size` (the finer lateral's H, W), not by a fixed 2x: exact for every input size."""
        return F.interpolate(self.non_local(m), size=size, mode="bilinear", align_corners=False)
