"""NMS in the deploy graph: one op with two interchangeable ONNX lowerings, selected by `--nms`, and a
plain-PyTorch form for the AOTInductor package.

    batched_nms(boxes [B,N,4], scores [B,N], groups [B,N] int64, valid [B,N] bool)
        -> keep [B,K] int64 (indices into N), keep_valid [B,K] bool

returns the first K = max_keep boxes that `torchvision.ops.batched_nms` keeps among the valid
candidates, in its order (score descending, ties by index), padded with invalid slots.

In PyTorch the op runs torchvision's NMS kernel. In ONNX the strategy module lowers it:
- `OnnxNMS`: the standard `NonMaxSuppression` op (ONNX Runtime, full TensorRT). Its output has a
  data-dependent length, so it is scattered back into a fixed [B,N] mask inside the graph.
- `TensorNMS`: exact greedy NMS in plain tensor ops for runtimes with no NMS layer (the TensorRT-RTX
  builder): K unrolled steps of "take the best alive box, suppress what it overlaps". Greedy NMS
  is inherently sequential (it picks the lexicographically first maximal independent set), so K
  steps is the least an exact method needs; each step is O(N) work and memory.

Both lowerings sort with ONNX TopK, which orders equal scores by index as batched_nms's stable sort
does, and suppress on `IoU > threshold` within a group with torchvision's arithmetic.

For `export --format aoti`: a compiled package cannot call the op's Python body, so
- `KernelNMS` (the default) calls torchvision's NMS kernel on the valid rows, once per image (once per batch
  where the batch is symbolic), each (image, group) pair moved to a region of the plane of its own
  (`kernel_batched_nms` says why that is exact);
- `LoopNMS` runs the same greedy steps as `TensorNMS` as a `torch.while_loop` in aten ops, which torch.export
  captures and AOTInductor compiles; it stops after K kept boxes or when nothing is alive. Each step costs
  about 0.1 ms on a CPU, so an RPN's 1000 steps cost about 100 ms: it is kept as the package form that needs
  no torchvision operator.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnxscript import BOOL, FLOAT, INT64, script
from onnxscript import opset18 as op
from torch import Tensor, nn
from torchvision.ops import nms


@torch.library.custom_op("siefpn::batched_nms", mutates_args=())
def batched_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float, max_keep: int,
    num_groups: int, lowering: str,
) -> tuple[Tensor, Tensor]:
    keep = torch.zeros(scores.shape[0], max_keep, dtype=torch.int64, device=scores.device)
    keep_valid = torch.zeros(scores.shape[0], max_keep, dtype=torch.bool, device=scores.device)
    for b in range(scores.shape[0]):
        kept = [torch.zeros(0, dtype=torch.int64, device=scores.device)]
        # per group, like batched_nms's own large-input path (its offset trick rounds coordinates)
        for g in torch.unique(groups[b][valid[b]]):
            idx = torch.nonzero(valid[b] & (groups[b] == g)).flatten()
            kept.append(idx[nms(boxes[b, idx], scores[b, idx], iou_threshold)])
        idx = torch.sort(torch.cat(kept)).values  # ascending index, then a stable score sort
        idx = idx[torch.sort(scores[b, idx], descending=True, stable=True).indices][:max_keep]
        keep[b, : len(idx)] = idx
        keep_valid[b, : len(idx)] = True
    return keep, keep_valid


@batched_nms.register_fake
def _(boxes, scores, groups, valid, iou_threshold, max_keep, num_groups, lowering):
    shape = (scores.shape[0], max_keep)
    return scores.new_empty(shape, dtype=torch.int64), scores.new_empty(shape, dtype=torch.bool)


class BatchedNMS(nn.Module):
    """The strategy base: thresholds and sizes; subclasses choose the ONNX lowering."""

    lowering = ""

    def __init__(self, *, iou_threshold: float, max_keep: int, num_groups: int) -> None:
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.max_keep = int(max_keep)
        self.num_groups = int(num_groups)

    def forward(self, boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        return batched_nms(boxes, scores, groups, valid, self.iou_threshold, self.max_keep, self.num_groups,
                           self.lowering)


class OnnxNMS(BatchedNMS):
    lowering = "onnx"


class TensorNMS(BatchedNMS):
    lowering = "tensor"


class LoopNMS(BatchedNMS):
    """The greedy NMS of `TensorNMS` in aten ops (a torch.while_loop), for torch.export and AOTInductor."""

    lowering = "loop"

    def forward(self, boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        return greedy_batched_nms(boxes, scores, groups, valid, self.iou_threshold, self.max_keep)


class KernelNMS(BatchedNMS):
    """torchvision's NMS kernel for torch.export and AOTInductor: one call per image, or per image and group where
    an image has many rows (one per batch where the batch is symbolic)."""

    lowering = "kernel"

    def forward(self, boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        return kernel_batched_nms(boxes, scores, groups, valid, self.iou_threshold, self.max_keep, self.num_groups)


STRATEGIES: dict[str, type[BatchedNMS]] = {  # options.NMS_LOWERINGS
    cls.lowering: cls for cls in (OnnxNMS, TensorNMS, LoopNMS, KernelNMS)}


def greedy_batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float,
                       max_keep: int) -> tuple[Tensor, Tensor]:
    """`batched_nms`'s contract in aten ops: boxes [B,N,4], scores [B,N], groups [B,N], valid [B,N] -> keep [B,K]
    int64, keep_valid [B,K] bool. Each step keeps every image's best alive box and suppresses what it overlaps
    (IoU > threshold, same group) in torchvision's arithmetic; at most K steps. In float32 always: a package
    compiled under FP16 autocast hands it half-precision scores, where LOWEST does not fit."""
    boxes, scores = boxes.float(), scores.float()
    n = scores.shape[1]
    keys = torch.where(valid, scores, LOWEST)
    # separate copies, not two views of `boxes`: the loop's captured inputs must not alias
    lo, hi = boxes[..., :2].clone(), boxes[..., 2:].clone()  # [B,N,2]
    areas = (hi - lo).prod(-1)  # [B,N]
    position = torch.arange(n, device=scores.device)[None]  # [1,N]

    def alive_left(step: Tensor, alive: Tensor, kept: Tensor) -> Tensor:
        return (step < max_keep) & alive.any()

    def step_once(step: Tensor, alive: Tensor, kept: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        masked = torch.where(alive, keys, LOWEST)
        i = masked.argmax(dim=1, keepdim=True)  # [B,1]: the first maximum, so ties go to the lower index
        ok = masked.gather(1, i) > LOWEST  # false once an image has nothing alive
        wh = (torch.minimum(hi.gather(1, i[..., None].expand(-1, -1, 2)), hi)
              - torch.maximum(lo.gather(1, i[..., None].expand(-1, -1, 2)), lo)).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (areas.gather(1, i) + areas - inter)
        hit = position == i  # i itself leaves the alive set even when its IoU with itself is NaN (zero area)
        suppressed = ((iou > iou_threshold) & (groups == groups.gather(1, i))) | hit
        return step + 1, alive & ~suppressed, kept | (hit & ok)

    start = (torch.zeros((), dtype=torch.int64, device=scores.device), valid.clone(), torch.zeros_like(valid))
    _, _, kept = torch._higher_order_ops.while_loop(alive_left, step_once, start)
    return _ranked(kept, keys, max_keep)


def kernel_batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float,
                       max_keep: int, num_groups: int) -> tuple[Tensor, Tensor]:
    """`batched_nms`'s contract with torchvision's NMS kernel (`torchvision::nms`, which torch.export captures
    with a data-dependent output length and AOTInductor calls as an external kernel): one call per image where
    the batch size is a number, one for the whole batch where it is symbolic, each on the valid rows only.
    Where batch and rows are numbers, an image has more than GROUP_CALL_ROWS rows and there are at most
    GROUP_CALL_GROUPS groups (an RPN's levels), one call per image and group, as `torchvision.ops.batched_nms`
    calls it past the same size: the kernel's cost is about the boxes it keeps times the rows it is given, so an
    RPN's levels called one at a time cost a fraction of one call over all of them.

    Every (image, group) pair is moved to a region of the plane of its own, `span` apart, so no box overlaps a
    box of another pair and one greedy pass keeps, per pair, exactly what a pass over that pair alone keeps (the
    kernel's sort is stable, so ties go to the lower index in both). The shift is made in float64, where adding
    it to a float32 coordinate is exact, so the kernel's IoUs are those of the unshifted boxes, computed in
    float64 where the eager op computes float32: the two can disagree only on an IoU within about 1e-7 of the
    threshold. All K kept boxes of a pair are the first K of a full pass, so running it to the end changes
    nothing."""
    b, n = scores.shape
    keys = torch.where(valid, scores.float(), LOWEST)
    coords = torch.where(valid[..., None], boxes.double(), 0.0)  # [B,N,4]
    if isinstance(b, int) and isinstance(n, int) and n > GROUP_CALL_ROWS and num_groups <= GROUP_CALL_GROUPS:
        kept = torch.stack([
            torch.stack([_kernel_kept(coords[i], keys[i], valid[i] & (groups[i] == g), iou_threshold)
                         for g in range(num_groups)]).any(dim=0) for i in range(b)])
        return _ranked(kept, keys, max_keep)  # one group per call: no shift
    span = coords.amax() - coords.amin() + 1  # wider than any box and any gap between boxes
    if isinstance(b, int):  # a static batch (eager, and the packages optimize compiles): one call per image
        shifted = coords + (groups.double() * span)[..., None]
        kept = torch.stack([_kernel_kept(shifted[i], keys[i], valid[i], iou_threshold) for i in range(b)])
    else:  # a symbolic batch cannot be looped over: one call, each image's pairs in regions of their own
        region = torch.arange(b, device=scores.device)[:, None] * (groups.amax() + 1) + groups  # [B,N]
        shifted = coords + (region.double() * span)[..., None]
        kept = _kernel_kept(shifted.reshape(-1, 4), keys.reshape(-1), valid.reshape(-1), iou_threshold).view(b, n)
    return _ranked(kept, keys, max_keep)


def _kernel_kept(boxes: Tensor, keys: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """boxes [M,4] float64 (shifted), keys [M], valid [M] -> kept [M] bool: the kernel on the valid rows only.
    Its loop is quadratic in the rows it is given, and an invalid row (a zero-area box, whose IoU is NaN) would
    be kept and compared with every row after it; so would every row of the other images in one call.

    Two zero-area rows keyed LOWEST go with them: every pass keeps both (an IoU with them is 0 or NaN) and puts
    them last, so the kernel returns at least 2 indices, as torchvision's shape function for it promises (a
    package asserts that at run time)."""
    m = valid.shape[0]
    boxes = torch.cat([boxes, boxes.new_zeros(2, 4)])
    keys = torch.cat([keys, keys.new_full((2,), LOWEST)])
    # the valid rows in index order (so the kernel's stable sort breaks ties as before), then the two extra ones
    rows = torch.cat([valid.nonzero().squeeze(1), torch.arange(m, m + 2, device=valid.device)])
    keep = torch.ops.torchvision.nms(boxes[rows], keys[rows].double(), iou_threshold)
    return torch.zeros(m + 2, dtype=torch.bool, device=valid.device).index_fill(0, rows[keep], True)[:m]


def _ranked(kept: Tensor, keys: Tensor, max_keep: int) -> tuple[Tensor, Tensor]:
    """The kept boxes [B,N] by score, ties by index (a stable sort: torch.topk does not promise an order among
    ties), as keep [B,K] and keep_valid [B,K], padded with invalid slots."""
    pad = keys.new_full((keys.shape[0], max_keep), LOWEST)
    ranked = torch.sort(torch.cat([torch.where(kept, keys, LOWEST), pad], dim=1), dim=1, descending=True, stable=True)
    top, keep = ranked.values[:, :max_keep], ranked.indices[:, :max_keep]
    ok = top > LOWEST
    return torch.where(ok, keep, torch.zeros_like(keep)), ok


# above this many rows per image, one kernel call per group (torchvision's batched_nms: boxes.numel() > 4000),
# where the groups are few: an RPN's levels, not a dataset's 80 classes (80 calls per image on mostly empty groups)
GROUP_CALL_ROWS = 1000
GROUP_CALL_GROUPS = 8
LOWEST = float(np.finfo(np.float32).min)  # the invalid key: finite, so no inf arithmetic in any runtime
# what the ONNX lowerings test keys against: a real score is above it, and LOWEST below it however a runtime that
# computes in bf16 rounds it (OpenVINO's bf16 makes it -inf in one op and keeps it in the next: compared with
# LOWEST itself, a pad slot passed as valid and indexed past the rows)
VALID_FLOOR = LOWEST / 2

# --- ONNX lowerings (opset 18) ------------------------------------------------------------------
# Both end the same way: a kept mask [B,N], then TopK(K) over the kept scores, which orders equal
# scores by index (the ONNX TopK contract), as batched_nms's stable sort does. K <= 3840 (TensorRT's
# TopK limit); N is unbounded because neither lowering sorts all N.

def _masked_keys(op, scores, valid):
    return op.Where(valid, scores, op.CastLike(op.Constant(value_float=LOWEST), scores))


def _kept_to_keep(op, kept, keys, max_keep: int):
    lowest = op.CastLike(op.Constant(value_float=LOWEST), keys)
    # K invalid pad slots keep TopK's K <= N for every N; a pad slot that comes out points at index 0
    pad = op.Expand(lowest, op.Concat(op.Shape(keys, start=0, end=1), op.Constant(value_ints=[max_keep]), axis=0))
    top, keep = op.TopK(op.Concat(op.Where(kept, keys, lowest), pad, axis=1), op.Constant(value_ints=[max_keep]),
                        axis=1)
    ok = op.Greater(top, op.CastLike(op.Constant(value_float=VALID_FLOOR), keys))
    return op.Where(ok, keep, op.CastLike(op.Constant(value_int=0), keep)), ok


def _lower_onnx(op, boxes, scores, groups, valid, iou_threshold, max_keep, num_groups):
    keys = _masked_keys(op, scores, valid)
    group_ids = op.Reshape(op.Range(op.Constant(value_int=0), op.Constant(value_int=num_groups),
                                    op.Constant(value_int=1)), op.Constant(value_ints=[1, -1, 1]))
    in_group = op.Equal(op.Unsqueeze(groups, op.Constant(value_ints=[1])), group_ids)  # [B,G,N]
    lowest = op.CastLike(op.Constant(value_float=LOWEST), keys)
    group_scores = op.Where(in_group, op.Unsqueeze(keys, op.Constant(value_ints=[1])), lowest)
    selected = op.NonMaxSuppression(
        boxes, group_scores, op.Constant(value_ints=[max_keep]), op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[VALID_FLOOR]),
    )  # [M,3] (batch, group, box); LOWEST (invalid, or another group's) is not > VALID_FLOOR
    index = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # [M,2]
    ones = op.Expand(op.Constant(value=onnx.helper.make_tensor("t", onnx.TensorProto.BOOL, [1], [True])),
                     op.Shape(index, start=0, end=1))
    kept = op.ScatterND(op.Not(op.Equal(keys, keys)), index, ones)  # all False [B,N], then the selected
    return _kept_to_keep(op, kept, keys, max_keep)


@script()
def _greedy_kept(keys: FLOAT, boxes: FLOAT, groups: INT64, valid: BOOL, iou_threshold: float, max_keep: int) -> BOOL:
    """kept [B,N] after `max_keep` greedy steps; keys [B,N] hold LOWEST for invalid boxes."""
    planes = op.Transpose(boxes, perm=[0, 2, 1])  # [B,4,N]
    lo = op.Slice(planes, [0], [2], [1])  # [B,2,N]: x1, y1
    hi = op.Slice(planes, [2], [4], [1])  # [B,2,N]: x2, y2
    extent = op.Sub(hi, lo)
    areas = op.Mul(op.Gather(extent, 0, axis=1), op.Gather(extent, 1, axis=1))  # [B,N]
    position = op.Unsqueeze(op.Range(0, op.Squeeze(op.Shape(keys, start=1, end=2)), 1), [0])  # [1,N]
    lowest = op.CastLike(op.Constant(value_float=LOWEST), keys)
    threshold = op.CastLike(op.Constant(value_float=iou_threshold), keys)
    alive = valid
    kept = op.Not(valid) & valid
    steps = op.Constant(value_int=max_keep)
    for _ in range(steps):
        # Everything the body reads is loop-carried, none of it captured from the outer graph: graph
        # rewriters that sort nodes without looking into subgraphs (ModelOpt AutoCast's) keep it valid.
        keys, lowest, threshold, position = op.Identity(keys), op.Identity(lowest), op.Identity(threshold), op.Identity(position)
        lo, hi, areas, groups = op.Identity(lo), op.Identity(hi), op.Identity(areas), op.Identity(groups)
        # the best alive box: ArgMax takes the first maximum, so ties go to the lower index
        masked = op.Where(alive, keys, lowest)
        i = op.ArgMax(masked, axis=1, keepdims=1)  # [B,1]
        ok = op.Greater(op.GatherElements(masked, i, axis=1), lowest)  # false once nothing is alive
        # IoU of box i with every box, in torchvision's kernel arithmetic
        i2 = op.Expand(op.Unsqueeze(i, [1]), [1, 2, 1])
        wh = op.Relu(op.Min(op.GatherElements(hi, i2, axis=2), hi) - op.Max(op.GatherElements(lo, i2, axis=2), lo))
        inter = op.Gather(wh, 0, axis=1) * op.Gather(wh, 1, axis=1)
        iou = inter / (op.GatherElements(areas, i, axis=1) + areas - inter)
        same = op.Equal(groups, op.GatherElements(groups, i, axis=1))
        # i itself leaves the alive set even when its IoU with itself is NaN (a zero-area box)
        hit = op.Equal(position, i)
        alive = alive & op.Not((op.Greater(iou, threshold) & same) | hit)
        kept = kept | (hit & ok)
        # stop once nothing is alive; this also gives the Loop an explicit condition input,
        # which TensorRT's ONNX parser requires
        done = op.Not(op.ReduceMax(op.Cast(alive, to=1), keepdims=0) > 0.0)
        if done:
            break
    return kept


def _lower_tensor(op, boxes, scores, groups, valid, iou_threshold, max_keep, num_groups):
    keys = _masked_keys(op, scores, valid)
    kept = _greedy_kept(keys, boxes, groups, valid, iou_threshold=iou_threshold, max_keep=max_keep)
    return _kept_to_keep(op, kept, keys, max_keep)


def batched_nms_onnx(boxes, scores, groups, valid, iou_threshold: float, max_keep: int, num_groups: int,
                     lowering: str):
    lower = _lower_onnx if lowering == OnnxNMS.lowering else _lower_tensor
    return lower(op, boxes, scores, groups, valid, iou_threshold, max_keep, num_groups)


ONNX_TRANSLATIONS = {torch.ops.siefpn.batched_nms.default: batched_nms_onnx}
