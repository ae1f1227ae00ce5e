"""Both ONNX lowerings of the batched NMS op, and its AOTInductor form, keep exactly what torchvision's
batched_nms keeps."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.export import Dim
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
from torchvision.ops import batched_nms

from siefpn_deploy.export.nms import ONNX_TRANSLATIONS, KernelNMS, LoopNMS, OnnxNMS, TensorNMS

IOU = 0.5
K = 20


class NMSOnly(nn.Module):
    def __init__(self, nms: nn.Module) -> None:
        super().__init__()
        self.nms = nms

    def forward(self, boxes, scores, groups, valid):
        return self.nms(boxes, scores, groups, valid)


class CompiledPackage:
    """An AOTInductor package behind ONNX Runtime's `run(None, feeds)`, so every case below runs on it too."""

    def __init__(self, path) -> None:
        self.run_package = torch._inductor.aoti_load_package(str(path))

    def run(self, _, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [t.numpy() for t in self.run_package(*(torch.from_numpy(v) for v in feeds.values()))]


@pytest.fixture(scope="module", params=[OnnxNMS, TensorNMS, LoopNMS, KernelNMS],
                ids=["onnx", "tensor", "aoti-loop", "aoti-kernel"])
def session(request, tmp_path_factory):
    """One exported NMS graph per lowering (an AOTInductor package for LoopNMS and KernelNMS), dynamic in batch
    and N."""
    module = NMSOnly(request.param(iou_threshold=IOU, max_keep=K, num_groups=80)).eval()
    example = random_case(torch.Generator().manual_seed(0), 2, 64, 5)
    n, b = Dim("n", min=1, max=4096), Dim("b", min=1, max=8)
    dims = {"boxes": {0: b, 1: n}, "scores": {0: b, 1: n}, "groups": {0: b, 1: n}, "valid": {0: b, 1: n}}
    folder = tmp_path_factory.mktemp("nms")
    if request.param in (LoopNMS, KernelNMS):
        program = torch.export.export(module, example, dynamic_shapes=dims)
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "nms.pt2"))
        return CompiledPackage(path)
    program = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dims,
                                input_names=list(dims), output_names=["keep", "keep_valid"],
                                custom_translation_table=ONNX_TRANSLATIONS)
    path = folder / f"{request.param.lowering}.onnx"
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def random_case(g: torch.Generator, b: int, n: int, classes: int, *, size: float = 100.0):
    xy = torch.rand(b, n, 2, generator=g) * size
    wh = torch.rand(b, n, 2, generator=g) * size / 3
    boxes = torch.cat([xy, xy + wh], dim=-1)
    scores = torch.rand(b, n, generator=g)
    groups = torch.randint(0, classes, (b, n), generator=g)
    valid = torch.rand(b, n, generator=g) > 0.2
    return boxes, scores, groups, valid


def expected(boxes, scores, groups, valid, k: int = K) -> list[list[int]]:
    out = []
    for b in range(len(boxes)):
        idx = torch.nonzero(valid[b]).flatten()
        keep = batched_nms(boxes[b, idx], scores[b, idx], groups[b, idx], IOU)
        out.append(idx[keep][:k].tolist())
    return out


def run(session, case) -> list[list[int]]:
    feeds = dict(zip(["boxes", "scores", "groups", "valid"], (t.numpy() for t in case)))
    keep, ok = session.run(None, feeds)
    assert all(np.all(row[: row.sum()]) for row in ok), "valid slots must come first"
    return [row[m].tolist() for row, m in zip(keep, ok)]


def assert_same(session, case):
    want = expected(*case)
    assert run(session, case) == want
    for eager in (OnnxNMS, LoopNMS, KernelNMS):  # the op's own eager body, and the aten forms run eagerly
        keep, ok = NMSOnly(eager(iou_threshold=IOU, max_keep=K, num_groups=80))(*case)
        assert [row[m].tolist() for row, m in zip(keep, ok)] == want


@pytest.mark.parametrize("seed", range(6))
def test_random_cases(session, seed):
    g = torch.Generator().manual_seed(seed)
    n = [5, 40, 300, 1000, 17, 2000][seed]
    assert_same(session, random_case(g, 2, n, [1, 3, 80, 6, 2, 80][seed]))


def test_ties_are_broken_by_index(session):
    g = torch.Generator().manual_seed(1)
    boxes, scores, groups, valid = random_case(g, 2, 300, 4)
    scores = torch.round(scores * 4) / 4  # five distinct values: ties everywhere
    boxes[:, 100:150] = boxes[:, 50:100]  # exact duplicates, equal scores
    scores[:, 100:150] = scores[:, 50:100]
    assert_same(session, (boxes, scores, groups, valid))


def test_chains_of_overlaps(session):
    # box i overlaps i+1 by IoU ~0.6 but not i+2: greedy keeps every other box of the chain
    n = 60
    x = torch.arange(n, dtype=torch.float32) * 2.5
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)[None].repeat(2, 1, 1)
    scores = torch.linspace(1.0, 0.1, n)[None].repeat(2, 1)
    scores[1] = scores[1].flip(0)  # the other end of the chain wins in image 2
    groups = torch.zeros(2, n, dtype=torch.int64)
    groups[1, ::7] = 1
    valid = torch.ones(2, n, dtype=torch.bool)
    assert_same(session, (boxes, scores, groups, valid))


def test_many_classes_and_fewer_boxes_than_k(session):
    g = torch.Generator().manual_seed(3)
    assert_same(session, random_case(g, 3, 12, 80))
    boxes, scores, groups, valid = random_case(g, 1, 500, 80)
    boxes[..., 2:] = boxes[..., :2] + 30  # big boxes: heavy suppression inside each class
    assert_same(session, (boxes, scores, groups, valid))


def test_degenerate_boxes_and_nothing_valid(session):
    g = torch.Generator().manual_seed(4)
    boxes, scores, groups, valid = random_case(g, 2, 50, 3)
    boxes[:, ::5, 2] = boxes[:, ::5, 0]  # zero width: IoU is 0/0, nothing is suppressed by them
    valid[1] = False  # an image with no candidates at all
    assert_same(session, (boxes, scores, groups, valid))
    assert run(session, (boxes, scores, groups, valid))[1] == []


def test_a_static_batch_package_calls_the_kernel_once_per_image(tmp_path):
    """With a static batch (the packages optimize compiles) KernelNMS calls the kernel once per image on its valid
    rows, not once over the whole batch (the kernel's loop is quadratic in its rows); compiled so, it keeps what
    batched_nms keeps, an image with nothing valid included."""
    module = NMSOnly(KernelNMS(iou_threshold=IOU, max_keep=K, num_groups=80)).eval()
    n = Dim("n", min=1, max=4096)
    dims = {name: {1: n} for name in ("boxes", "scores", "groups", "valid")}
    program = torch.export.export(module, random_case(torch.Generator().manual_seed(5), 3, 64, 5), dynamic_shapes=dims)
    calls = [node for node in program.graph.nodes if node.target is torch.ops.torchvision.nms.default]
    assert len(calls) == 3
    # each on as many rows as the image has valid ones (a size known only at run time), not on all N
    assert all(free_unbacked_symbols(call.args[0].meta["val"].shape[0]) for call in calls)
    package = CompiledPackage(torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "b3.pt2")))
    for seed, count in ((6, 300), (7, 2000)):
        boxes, scores, groups, valid = random_case(torch.Generator().manual_seed(seed), 3, count, 80)
        valid[1] = False
        assert_same(package, (boxes, scores, groups, valid))


def test_many_rows_in_few_groups_get_one_kernel_call_per_image_and_group(tmp_path):
    """Past 1000 rows per image in at most 8 groups (an RPN's levels), with batch and rows static, KernelNMS calls
    the kernel per image and group, as torchvision's batched_nms does past that size (the kernel's cost grows
    with the rows it is given); compiled so, it keeps what batched_nms keeps. With 80 groups it stays one call
    per image."""
    case = random_case(torch.Generator().manual_seed(8), 2, 1500, 5)
    programs = {}
    for groups, calls in ((5, 2 * 5), (80, 2)):
        module = NMSOnly(KernelNMS(iou_threshold=IOU, max_keep=K, num_groups=groups)).eval()
        programs[groups] = torch.export.export(module, case)
        assert sum(node.target is torch.ops.torchvision.nms.default for node in programs[groups].graph.nodes) == calls
    package = CompiledPackage(torch._inductor.aoti_compile_and_package(programs[5], package_path=str(tmp_path / "g.pt2")))
    eager = NMSOnly(KernelNMS(iou_threshold=IOU, max_keep=K, num_groups=5))
    for seed in (9, 10):
        case = random_case(torch.Generator().manual_seed(seed), 2, 1500, 5)
        _, _, groups, valid = case
        valid[1, groups[1] == 2] = False  # a group with nothing valid in one image
        want = expected(*case)
        assert run(package, case) == want
        keep, ok = eager(*case)
        assert [row[m].tolist() for row, m in zip(keep, ok)] == want
