"""The PyTorch runtime's GPU paths: CUDA vs CPU detections, FP16 autocast, CUDA-graph replay of the
backbone and neck, CUDA-event benchmarking and the GAU memory probe. Skipped where there is no GPU
(CI and the development machine); run on a lent GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siefpn_deploy.core.errors import UserError
from siefpn_deploy.evaluation.agreement import match_detections
from siefpn_deploy.model.inference import EagerBackend
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import gau_memory, run_bench, synthetic_batch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (this machine has none)")


def canvas_for(detector: Detector, size: int, batch: int = 2):
    return synthetic_batch(detector, batch, size)[2]


def matched(a: dict, b: dict) -> tuple[float, float]:
    """(fraction of a's detections matched in b at IoU >= 0.9, same class; worst score error among them)."""
    total, hit, worst = 0, 0, 0.0
    for i, n in enumerate(a["num_dets"]):
        pairs = match_detections({k: v[i, : int(n)] for k, v in a.items() if k != "num_dets"},
                                 {k: v[i, : int(b["num_dets"][i])] for k, v in b.items() if k != "num_dets"},
                                 min_iou=0.9)
        total += int(n)
        hit += len(pairs)
        worst = max([worst, *(abs(float(a["scores"][i, p]) - float(b["scores"][i, q])) for p, q in pairs)])
    return (hit / total if total else 1.0), worst


def test_fp16_and_cuda_graphs_need_a_gpu(seeded):
    cpu = Detector.from_path(seeded.weights("retinanet"), device="cpu")
    with pytest.raises(UserError, match="CUDA device"):
        EagerBackend(cpu.backend.detector, cpu.contract, torch.device("cpu"), cuda_graphs=True)


def test_gau_memory_probe_names_the_attention_kernel_on_cpu():
    levels = gau_memory(channels=32, size=(256, 256), device="cpu")["levels"]
    assert [lv["level_stride"] for lv in levels] == [8, 16, 32]
    assert levels[0]["grid"] == [32, 32] and levels[0]["queries"] == 1024 and levels[0]["keys"] == 256
    assert all(lv["sdpa_kernels"] and lv["peak_mib"] > 0 for lv in levels)


@needs_cuda
@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn"])
def test_cuda_fp32_fp16_and_graphs_agree_with_the_cpu(arch, seeded):
    cpu = Detector.from_path(seeded.weights(arch), device="cpu")
    gpu = Detector.from_path(seeded.weights(arch), device="cuda")
    canvas = canvas_for(cpu, 128)
    want = cpu.run_canvas(canvas)
    assert want["num_dets"].sum() > 0
    fraction, worst = matched(want, gpu.run_canvas(canvas))
    assert fraction >= 0.98 and worst <= 1e-3

    base = gpu.backend
    eager16 = Detector.from_checkpoint(seeded.weights(arch), config=None, device="cuda",
                                       autocast_dtype=torch.float16)
    assert eager16.backend.variant == "fp16-autocast"
    graphed = EagerBackend(base.detector, base.contract, base.device, autocast_dtype=torch.float16, cuda_graphs=True)
    graphed16 = Detector(graphed, gpu.meta, gpu.path)
    assert graphed.variant == "fp16-autocast+cuda-graphs"
    fp16 = eager16.run_canvas(canvas)
    fraction, worst = matched(want, fp16)
    assert fraction >= 0.9 and worst <= 2e-2
    for _ in range(2):  # the second call replays the captured graph
        replayed = graphed16.run_canvas(canvas)
        fraction, worst = matched(fp16, replayed)
        assert fraction >= 0.98 and worst <= 1e-3
    graphed16.run_canvas(canvas_for(cpu, 160, batch=1))
    assert len(graphed.backbone.graphs) == 2  # one capture per input shape


@needs_cuda
def test_bench_on_cuda_times_every_pytorch_variant(seeded):
    report = run_bench([seeded.weights("retinanet")], batches=[1], sizes=[128], warmup=1, iters=3, device="cuda")
    variants = [r["variant"] for r in report["rows"]]
    assert variants == ["pytorch fp32", "pytorch fp16-autocast", "pytorch fp16-autocast+cuda-graphs"]
    assert all(r["peak_cuda_mib"] > 0 and 0 < r["model_p50_ms"] <= r["model_p99_ms"] for r in report["rows"])


@needs_cuda
def test_gau_memory_on_cuda_stays_below_the_attention_matrix():
    levels = gau_memory(channels=256, size=(800, 1333), device="cuda")["levels"]
    finest = [lv for lv in levels if lv["level_stride"] == 8]
    assert {lv["dtype"] for lv in finest} == {"float32", "float16"}
    for lv in finest:
        assert lv["sdpa_kernels"], lv
        assert lv["peak_mib"] < lv["naive_attention_mib"], lv  # a fused kernel, not the materialised matrix
    assert np.isfinite([lv["peak_mib"] for lv in levels]).all()
