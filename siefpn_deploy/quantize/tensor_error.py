"""How far a tensor is from its reference, summed over images: the numbers the INT8 sensitivity ranking
(`sensitivity.py`) and `debug compare` report.

    max abs   max |y - x|
    mean abs  mean |y - x|
    cosine    sum(x y) / sqrt(sum x^2 sum y^2)                    (1: the same direction)
    NSR       sum((y - x)^2) / sum(x^2)                           (noise-to-signal ratio)
    SQNR dB   -10 log10 NSR                                       (inf: no error at all)

x is the reference (FP32), y the other (FP16, INT8). Sums run over every element of every image given, so a
large image weighs more than a small one, as its pixels do. Non-finite values are compared as values: the same
inf, or NaN on both sides, is no error; a finite value on one side only (an FP16 overflow, say) makes the error
infinite, and `mismatched` counts those elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def sqnr_db(nsr: float) -> float:
    """SQNR in dB of a noise-to-signal ratio: inf for no noise, -inf for noise over no signal."""
    if nsr == 0:
        return math.inf
    return -10 * math.log10(nsr) if math.isfinite(nsr) else -math.inf


@dataclass
class TensorError:
    elements: int = 0  # finite on both sides
    mismatched: int = 0  # finite on one side only
    largest: float = 0.0  # max |y - x| over those
    total: float = 0.0  # sum |y - x| over those
    noise: float = 0.0  # sum (y - x)^2
    signal: float = 0.0  # sum x^2
    other_power: float = 0.0  # sum y^2
    dot: float = 0.0  # sum x y

    def add(self, reference: np.ndarray, other: np.ndarray) -> None:
        """One image's tensor: `reference` and `other` of one shape, any float dtypes."""
        x, y = reference.astype(np.float64).ravel(), other.astype(np.float64).ravel()
        with np.errstate(invalid="ignore"):  # inf - inf
            diff = y - x
        if not np.isfinite(diff).all():  # some value is not finite on one side at least: the rare, slow path
            finite = np.isfinite(x) & np.isfinite(y)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            self.mismatched += int((~finite & ~same).sum())
            x, y, diff = x[finite], y[finite], diff[finite]
        self.elements += x.size
        if x.size:
            self.largest = max(self.largest, float(np.abs(diff).max()))
        self.total += float(np.abs(diff).sum())
        # einsum, not BLAS: OpenBLAS's threads spin against the runtime's on a busy CPU (30x slower measured)
        self.noise += float(np.einsum("i,i->", diff, diff))
        self.signal += float(np.einsum("i,i->", x, x))
        self.other_power += float(np.einsum("i,i->", y, y))
        self.dot += float(np.einsum("i,i->", x, y))

    @property
    def max_abs(self) -> float:
        return math.inf if self.mismatched else self.largest

    @property
    def mean_abs(self) -> float:
        if self.mismatched:
            return math.inf
        return self.total / self.elements if self.elements else 0.0

    @property
    def cosine(self) -> float:
        """Over the elements finite on both sides; 1 for two all-zero tensors, 0 for one."""
        norms = math.sqrt(self.signal * self.other_power)
        if norms == 0:
            return 1.0 if self.signal == self.other_power else 0.0
        return self.dot / norms

    @property
    def nsr(self) -> float:
        if self.mismatched or (self.noise > 0 and self.signal == 0):
            return math.inf
        return self.noise / self.signal if self.noise > 0 else 0.0

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.nsr)
