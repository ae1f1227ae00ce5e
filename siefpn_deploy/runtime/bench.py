"""`siefpn-deploy bench`: latency and throughput of artifacts over batch sizes and input sizes.

Per artifact and setting: p50/p90/p99 latency of the model alone (one preprocessed canvas through the
backend) and end to end (raw images in, detections in image pixels out: preprocessing, the model,
box mapping and mask pasting), throughput, peak host memory and, on a GPU, peak device memory. On a
GPU, time is taken with CUDA events after warm-up, and a checkpoint is measured eager FP32, under FP16
autocast, and under FP16 autocast with its backbone and neck replayed as CUDA graphs. Also reported: the
GAU attention's memory at 800x1333 and which SDPA kernel ran.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.cpu import torch_threads
from ..core.errors import CannotRunHere
from ..core.openvino import Runtimes, runtimes_for
from ..core.reporting import machine, machine_line, markdown_table, write_report
from ..core.sidecar import outside_range
from ..core.timing import Latency, measure, peak_rss_mib, reset_peak_rss
from ..data.image import to_tensor
from ..data.preprocess import Canvas
from ..model.inference import EagerBackend
from .detector import Detector


def cuda_timer(fn: Callable[[], object], *, warmup: int, iters: int) -> Latency:
    """CUDA events around each call, after warm-up: device time without host-side clock noise."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        runs.append(start.elapsed_time(end) / 1e3)
    return Latency(tuple(runs))


@dataclass
class Setting:
    artifact: str
    variant: str  # e.g. "onnxruntime fp32", "pytorch fp16-autocast"
    batch: int
    size: int
    model: Latency
    end_to_end: Latency
    peak_rss_mib: float
    peak_cuda_mib: float | None

    def row(self) -> dict[str, Any]:
        ms = lambda lat, q: 1e3 * lat.percentile(q)
        return {
            "artifact": self.artifact, "variant": self.variant, "batch": self.batch, "size": self.size,
            "model_p50_ms": ms(self.model, 50), "model_p90_ms": ms(self.model, 90), "model_p99_ms": ms(self.model, 99),
            "e2e_p50_ms": ms(self.end_to_end, 50), "e2e_p90_ms": ms(self.end_to_end, 90),
            "e2e_p99_ms": ms(self.end_to_end, 99),
            "model_images_per_s": self.batch / statistics.median(self.model.runs),
            "e2e_images_per_s": self.batch / statistics.median(self.end_to_end.runs),
            "peak_rss_mib": self.peak_rss_mib, "peak_cuda_mib": self.peak_cuda_mib,
        }


def synthetic_images(batch: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic synthetic-scene images (HWC uint8, size x size) so postprocessing sees real content."""
    from ..data import synth

    return [synth.render(np.random.default_rng([seed, i]), size, size)[0] for i in range(batch)]


def synthetic_batch(detector: Detector, batch: int, size: int) -> tuple[Detector, list[np.ndarray], Canvas]:
    """(the detector with its test resize set to fill size x size, `batch` synthetic scenes, their canvas)."""
    images = synthetic_images(batch, size)
    detector = detector.at_size(size)
    return detector, images, detector.prepare([to_tensor(im) for im in images])


def bench_detector(detector: Detector, *, label: str, variant: str, batch: int, size: int, warmup: int,
                   iters: int) -> Setting:
    detector, images, canvas = synthetic_batch(detector, batch, size)  # what the model computes on: size x size
    # CUDA events for work queued on torch's CUDA stream (PyTorch on a GPU, TensorRT); ONNX Runtime's run()
    # returns when its work is done, so the host clock times it, on any provider
    on_gpu = detector.backend.on_gpu and detector.kind in ("pytorch", "tensorrt")
    timer = cuda_timer if on_gpu else measure
    reset_peak_rss()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    # each artifact timed as it is deployed: PyTorch on one thread where another runtime computes on the CPU
    with torch.inference_mode(), torch_threads(detector.torch_threads):
        model = timer(lambda: detector.run_canvas(canvas), warmup=warmup, iters=iters)
        e2e = timer(lambda: detector.predict(images), warmup=warmup, iters=iters)
    return Setting(label, variant, batch, size, model, e2e, peak_rss_mib(),
                   torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None)


def variants(path: Path, device: str, config: str | None, runtime: str = "onnxruntime") -> list[tuple[str, Detector]]:
    """(variant name, detector) for one artifact in one runtime (`runtime` applies to a .onnx). A checkpoint on
    a GPU is also run under FP16 autocast, eagerly and with its backbone and neck replayed as CUDA graphs: the
    PyTorch baselines a deployed engine has to beat."""
    detector = Detector.from_path(path, device=device, config=config, runtime=runtime)
    out = [(f"{detector.kind} {detector.precision}", detector)]
    if isinstance(detector.backend, EagerBackend) and detector.backend.on_gpu:
        base = detector.backend
        for graphs in (False, True):
            backend = EagerBackend(base.detector, base.contract, base.device, autocast_dtype=torch.float16,
                                   cuda_graphs=graphs)
            out.append((f"pytorch {backend.variant}", Detector(backend, detector.meta, detector.path)))
    return out


def cpp_settings(path: Path, detector: Detector, *, batches: list[int], size: int, warmup: int, iters: int
                 ) -> list[Setting]:
    """The same package and synthetic scenes through the C++ runtime (siefpn-infer --bench), timed in C++."""
    import tempfile

    from PIL import Image

    from .cpp import cpp_bench

    with tempfile.TemporaryDirectory() as tmp:
        for i, image in enumerate(synthetic_images(max(batches), size)):
            Image.fromarray(image).save(Path(tmp) / f"{i:04d}.png")  # lossless: C++ decodes the same pixels
        found = cpp_bench(path, batches=batches, size=size, warmup=warmup, iters=iters,
                          threads=torch.get_num_threads(), source=Path(tmp))
    return [Setting(path.name, f"c++ {detector.kind} {detector.precision}", r["batch"], size, r["model"], r["e2e"],
                    r["peak_rss_mib"], None) for r in found]


def run_bench(artifacts: list[Path], *, batches: list[int], sizes: list[int], warmup: int, iters: int, device: str,
              config: str | None = None, cpp: bool = False, runtimes: Runtimes = None,
              log=print) -> dict[str, Any]:
    """Every artifact's variants over batches and sizes (a .onnx once per runtime in `runtimes`, or in its own
    with None); with `cpp`, each .pt2 also through the C++ runtime. One artifact is loaded at a time."""
    rows, skipped = [], []
    for path in artifacts:
        for runtime in runtimes_for(path, runtimes):
            try:
                found = variants(path, device, config, runtime)
            except CannotRunHere as e:
                skipped.append({"artifact": str(path), "reason": str(e)})
                log(f"[bench] {path}: not run: {e}")
                continue
            for variant, detector in found:
                rows += time_variant(path, variant, detector, batches=batches, sizes=sizes, warmup=warmup,
                                     iters=iters, cpp=cpp, skipped=skipped, log=log)
    return {"rows": rows, "skipped": skipped, "warmup": warmup, "iters": iters, "device": device,
            "machine": machine()}


def time_variant(path: Path, variant: str, detector: Detector, *, batches: list[int], sizes: list[int], warmup: int,
                 iters: int, cpp: bool, skipped: list[dict[str, Any]], log) -> list[dict[str, Any]]:
    """One variant's rows over sizes and batches within its exported range (the rest go to `skipped`); a .pt2
    also through the C++ runtime when `cpp`."""
    rows = []
    for size in sizes:
        for batch in batches:
            if outside_range(detector.meta, (batch, 3, size, size)):
                skipped.append({"artifact": str(path), "variant": variant, "batch": batch, "size": size,
                                "reason": "outside the artifact's exported shape range"})
                continue
            setting = bench_detector(detector, label=path.name, variant=variant, batch=batch, size=size,
                                     warmup=warmup, iters=iters)
            rows.append(setting.row())
            log_row(rows[-1], log)
        if cpp and detector.kind == "aoti":
            runnable = [b for b in batches if not outside_range(detector.meta, (b, 3, size, size))]
            try:
                for setting in cpp_settings(path, detector, batches=runnable, size=size, warmup=warmup,
                                            iters=iters) if runnable else []:
                    rows.append(setting.row())
                    log_row(rows[-1], log)
            except CannotRunHere as e:
                skipped.append({"artifact": str(path), "reason": f"c++: {e}"})
                log(f"[bench] {path}: c++ not run: {e}")
    return rows


def log_row(r: dict[str, Any], log) -> None:
    log(f"[bench] {r['artifact']} {r['variant']} b{r['batch']} {r['size']}px: model p50 {r['model_p50_ms']:.1f} ms, "
        f"end-to-end p50 {r['e2e_p50_ms']:.1f} ms, {r['e2e_images_per_s']:.1f} img/s")


def write_bench_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """bench.json, bench.md (titled with the date and machine) and bench.png, by the one report writer."""
    return write_report(folder, "bench", data=report, markdown=f"# Benchmark ({machine_line(report['machine'])})\n\n"
                        f"{markdown(report)}", plot=lambda fig: plot(report, fig))


def gau_memory(channels: int = 256, size: tuple[int, int] = (800, 1333), divisibility: int = 32,
               strides: tuple[int, ...] = (8, 16, 32), device: str = "cpu") -> dict[str, Any]:
    """{"size", "channels", "levels"}: a level per GAU call (the coarser merged level it attends over) at
    `size` padded to the divisibility, with the attention matrix a naive implementation materialises, and
    what GAU.non_local through
    F.scaled_dot_product_attention (batch 1) takes here: on the CPU the largest single allocation (FP32),
    on CUDA the peak device memory above its input, in FP32 and under FP16 autocast; and which
    attention kernel ran."""
    from ..model.gau import GAU

    h, w = (-(-v // divisibility) * divisibility for v in size)
    on_gpu = device == "cuda"
    gau = GAU(channels=channels).to(device).eval()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    dtypes = [torch.float32, torch.float16] if on_gpu else [torch.float32]
    out = []
    for stride in strides:
        hh, ww = h // stride, w // stride
        x = torch.randn(1, channels, hh, ww, device=device)
        for dtype in dtypes:
            autocast = torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32) if on_gpu \
                else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                gau.non_local(x)  # warm-up: kernel selection and workspace outside the measurement
                if on_gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                with torch.profiler.profile(activities=activities, profile_memory=not on_gpu) as prof:
                    gau.non_local(x)
                    if on_gpu:
                        torch.cuda.synchronize()
            names = {e.key for e in prof.key_averages()}
            kernels = sorted(n for n in names if any(t in n.lower() for t in ("attention", "flash", "fmha", "attn"))
                             and n != "aten::scaled_dot_product_attention")  # the dispatcher, not a kernel
            peak = ((torch.cuda.max_memory_allocated() - base) if on_gpu
                    else max((e.cpu_memory_usage for e in prof.key_averages()), default=0))
            item = hh * ww * (hh // 2) * (ww // 2)
            out.append({"level_stride": stride, "grid": [hh, ww], "queries": hh * ww, "keys": (hh // 2) * (ww // 2),
                        "device": device, "dtype": str(dtype).removeprefix("torch."),
                        "naive_attention_mib": item * (4 if dtype == torch.float32 else 2) / 2**20,
                        "peak_mib": peak / 2**20, "sdpa_kernels": kernels})
    return {"size": list(size), "channels": channels, "levels": out}


def gau_markdown(gau: dict[str, Any]) -> str:
    """gau_memory(...)'s report -> a titled markdown table."""
    on_gpu = any(g["device"] == "cuda" for g in gau["levels"])
    measured = "peak GPU memory above the input MiB" if on_gpu else "largest op allocation MiB"
    table = markdown_table(
        ["GAU input stride", "grid", "queries x keys", "dtype", "naive attention matrix MiB", measured,
         "attention kernel"],
        [[g["level_stride"], f"{g['grid'][0]}x{g['grid'][1]}", f"{g['queries']} x {g['keys']}", g["dtype"],
          f"{g['naive_attention_mib']:.0f}", f"{g['peak_mib']:.1f}", ", ".join(g["sdpa_kernels"]) or "-"]
         for g in gau["levels"]])
    return f"GAU attention at {gau['size'][0]}x{gau['size'][1]} (C={gau['channels']}, batch 1):\n\n{table}"


def markdown(report: dict[str, Any]) -> str:
    head = ["artifact", "variant", "batch", "size", "model p50/p90/p99 ms", "end-to-end p50/p90/p99 ms",
            "img/s (model)", "img/s (e2e)", "peak RSS MiB", "peak GPU MiB"]
    lines = [markdown_table(head, [[
        r["artifact"], r["variant"], r["batch"], r["size"],
        f"{r['model_p50_ms']:.1f} / {r['model_p90_ms']:.1f} / {r['model_p99_ms']:.1f}",
        f"{r['e2e_p50_ms']:.1f} / {r['e2e_p90_ms']:.1f} / {r['e2e_p99_ms']:.1f}",
        f"{r['model_images_per_s']:.1f}", f"{r['e2e_images_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}",
        "-" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:.0f}"] for r in report["rows"]])]
    for s in report["skipped"]:
        setting = f" ({s['variant']}, batch {s['batch']}, {s['size']}px)" if "batch" in s else ""
        lines.append(f"\nnot run: {s['artifact']}{setting}: {s['reason']}")
    if report.get("gau_memory"):
        lines += ["", gau_markdown(report["gau_memory"])]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], fig: Any) -> None:
    """End-to-end p50 latency against batch, one line per artifact variant and size, on a matplotlib Figure."""
    ax = fig.subplots()
    series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for r in report["rows"]:
        series.setdefault((r["artifact"], r["variant"], r["size"]), []).append((r["batch"], r["e2e_p50_ms"]))
    for (artifact, variant, size), points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{artifact} ({variant}) {size}px")
    ax.set_xlabel("batch")
    ax.set_ylabel("end-to-end p50 latency (ms)")
    ax.set_title("latency vs batch")
    ax.legend(fontsize=7)
