"""Detection matching between two runs of the same model (PyTorch vs an exported artifact), over per-image
detections keyed by the contract's output names (`contract.image_rows`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.contract import BOXES, LABELS, MASKS, SCORES
from ..model.predictor import Detections


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N,4] x [M,4] xyxy -> [N,M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def match_detections(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], *, min_iou: float) -> list[tuple[int, int]]:
    """Greedy in reference score order: each reference detection takes the unmatched same-label
    detection of highest IoU >= min_iou. Returns (ref index, got index) pairs."""
    if len(ref[BOXES]) == 0 or len(got[BOXES]) == 0:
        return []
    iou = box_iou(ref[BOXES], got[BOXES])
    iou[ref[LABELS][:, None] != got[LABELS][None, :]] = -1
    pairs, taken = [], np.zeros(len(got[BOXES]), dtype=bool)
    for i in np.argsort(-ref[SCORES], kind="stable"):
        row = np.where(taken, -1, iou[i])
        j = int(np.argmax(row))
        if row[j] >= min_iou:
            pairs.append((int(i), j))
            taken[j] = True
    return pairs


def as_rows(dets: Detections, *, min_score: float = -np.inf) -> dict[str, np.ndarray]:
    """One image's detections scoring at least `min_score`, keyed by the contract's output names."""
    keep = dets.scores >= min_score
    return {BOXES: dets.boxes[keep], SCORES: dets.scores[keep], LABELS: dets.labels[keep]}


def image_agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], *, min_iou: float) -> float:
    """How far one image's two sets of detections agree, in 0..1: the detections `match_detections` pairs, over
    all of both sides (2 * pairs / (reference + other)), so a missed and an extra detection cost alike; 1.0 when
    both are empty."""
    total = len(ref[BOXES]) + len(got[BOXES])
    return 2 * len(match_detections(ref, got, min_iou=min_iou)) / total if total else 1.0


@dataclass
class Agreement:
    """How one artifact's detections agree with the reference's, over many images."""

    reference: int = 0
    matched: int = 0
    unmatched_borderline: int = 0  # scores within `margin` of the threshold or of the K-th score
    unmatched: int = 0
    max_box_abs: float = 0.0
    max_box_rel: float = 0.0
    max_score_abs: float = 0.0
    max_mask_abs: float = 0.0
    box_errors: list = field(default_factory=list, repr=False)
    box_rel_errors: list = field(default_factory=list, repr=False)
    score_errors: list = field(default_factory=list, repr=False)
    score_rel_errors: list = field(default_factory=list, repr=False)
    non_finite: int = 0  # NaN/inf in the compared detections' boxes and scores

    def add(self, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], *, min_iou: float, score_thresh: float,
            max_det: int, margin: float = 1e-3) -> None:
        self.non_finite += int((~np.isfinite(got[BOXES])).sum() + (~np.isfinite(got[SCORES])).sum())
        pairs = match_detections(ref, got, min_iou=min_iou)
        self.reference += len(ref[BOXES])
        self.matched += len(pairs)
        for dets, side in ((ref, 0), (got, 1)):
            done = {p[side] for p in pairs}
            floor = dets[SCORES].min() if len(dets[SCORES]) >= max_det else -np.inf
            for k in range(len(dets[SCORES])):
                if k in done:
                    continue
                s = dets[SCORES][k]
                if s < score_thresh + margin or s <= floor + margin:
                    self.unmatched_borderline += 1
                else:
                    self.unmatched += 1
        if pairs:
            r, g = (np.array(x) for x in zip(*pairs))
            box_abs = np.abs(ref[BOXES][r] - got[BOXES][g])
            score_abs = np.abs(ref[SCORES][r] - got[SCORES][g])
            box_rel = box_abs / np.maximum(np.abs(ref[BOXES][r]), 1.0)
            self.box_errors.append(box_abs.ravel())
            self.box_rel_errors.append(box_rel.ravel())
            self.score_errors.append(score_abs)
            self.score_rel_errors.append(score_abs / np.maximum(ref[SCORES][r], 1e-6))
            self.max_box_abs = max(self.max_box_abs, float(box_abs.max()))
            self.max_box_rel = max(self.max_box_rel, float(box_rel.max()))
            self.max_score_abs = max(self.max_score_abs, float(score_abs.max()))
            if MASKS in ref and MASKS in got:
                self.max_mask_abs = max(self.max_mask_abs, float(np.abs(ref[MASKS][r] - got[MASKS][g]).max()))

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    def statistics(self) -> dict[str, float | int]:
        """Matched fraction; max, mean and median abs/rel errors of matched boxes and scores; non-finite count."""
        out: dict[str, float | int] = {"reference": self.reference, "matched": self.matched,
                                       "matched_fraction": self.matched_fraction, "unmatched": self.unmatched,
                                       "unmatched_borderline": self.unmatched_borderline, "non_finite": self.non_finite}
        for name, chunks in (("box_abs", self.box_errors), ("box_rel", self.box_rel_errors),
                             ("score_abs", self.score_errors), ("score_rel", self.score_rel_errors)):
            values = np.concatenate(chunks) if chunks else np.zeros(0)
            out[f"{name}_max"] = float(values.max()) if len(values) else 0.0
            out[f"{name}_mean"] = float(values.mean()) if len(values) else 0.0
            out[f"{name}_median"] = float(np.median(values)) if len(values) else 0.0
        return out

    def summary(self) -> str:
        return (f"matched {self.matched}/{self.reference} detections ({self.unmatched} unmatched, "
                f"{self.unmatched_borderline} borderline at the score cut), max box error {self.max_box_abs:.2e} px "
                f"(rel {self.max_box_rel:.1e}), max score error {self.max_score_abs:.1e}"
                + (f", max mask error {self.max_mask_abs:.1e}" if self.max_mask_abs else ""))
