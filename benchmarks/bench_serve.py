"""Serving overhead: `siefpn-deploy serve` (a local tritonserver, dynamic batching) against the same artifact
in-process, on the CPU, in one run.

    siefpn-deploy demo                               # once: export/demo.onnx, the demo's RetinaNet
    python benchmarks/bench_serve.py                 # concurrency 1 4 8 16, HTTP
    python benchmarks/bench_serve.py --artifact export/demo.onnx --requests 160 --grpc

Served: --requests requests of one encoded image each (the synthetic val images in turn) at each client
concurrency; throughput (images/s), p50/p99 request latency and the mean batch Triton executed (its statistics).
In-process: `Detector.predict` on the same encoded images, decoded in the loop as the server decodes them, in
batches of the same sizes; throughput only. Target (issue 15): at concurrency 8, served throughput >= 0.85x
in-process batch-8 throughput. The client runs on the same machine and its cores, as a load balancer's would not.
Prints a markdown table and writes it, with date, machine and commit, to --report (and a PNG beside it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import invocation

from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.data.image import decode_image, find_images
from siefpn_deploy.runtime import Detector
from siefpn_deploy.serve.client import DetectorClient, run_load
from siefpn_deploy.serve.launch import free_loopback_ports, serve_process
from siefpn_deploy.serve.options import ServeOptions

TARGET = 0.85  # served / in-process throughput at concurrency 8


def in_process(detector: Detector, payloads: list[bytes], batch: int, images: int) -> float:
    """Images/s of decode + Detector.predict over `images` images in batches of `batch` (one warm-up batch)."""
    detector.predict([decode_image(b) for b in payloads[:batch]], batch_size=batch)
    start = time.perf_counter()
    for i in range(0, images, batch):
        chunk = [payloads[(i + j) % len(payloads)] for j in range(min(batch, images - i))]
        detector.predict([decode_image(b) for b in chunk], batch_size=batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", default="export/demo.onnx")
    p.add_argument("--images", default="datasets/synth/val")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--requests", type=int, default=160, help="requests per concurrency (one image each)")
    p.add_argument("--max-batch", type=int, default=ServeOptions.max_batch)
    p.add_argument("--max-queue-delay-us", type=int, default=ServeOptions.max_queue_delay_us)
    p.add_argument("--grpc", action="store_true", help="gRPC instead of HTTP")
    p.add_argument("--report", default="benchmarks/results/serve_cpu.md")
    args = p.parse_args()
    artifact = Path(args.artifact)
    if not artifact.is_file():
        sys.exit(f"error: --artifact {artifact} not found (run `siefpn-deploy demo` first, or name an artifact)")
    payloads = [f.read_bytes() for f in find_images(args.images)]

    detector = Detector.from_path(artifact, device="cpu")
    kind = detector.kind
    local = {b: in_process(detector, payloads, b, args.requests) for b in args.concurrency}
    print("in-process img/s by batch:", {b: round(v, 1) for b, v in local.items()}, flush=True)
    del detector  # the server gets the cores to itself

    http, grpc, metrics = free_loopback_ports(3)
    options = ServeOptions(host="127.0.0.1", http_port=http, grpc_port=grpc, metrics_port=metrics,
                           max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us, exit_timeout_s=5)
    url = f"127.0.0.1:{grpc if args.grpc else http}"
    rows, served = [], {}
    with tempfile.TemporaryDirectory() as work, serve_process(artifact, options, log=Path(work) / "serve.out"), \
            DetectorClient(url, grpc=args.grpc) as client:
        run_load(url, payloads, requests=2 * args.max_batch, concurrency=args.max_batch, grpc=args.grpc)  # warm
        for c in args.concurrency:
            before = client.batch_stats()
            result = run_load(url, payloads, requests=args.requests, concurrency=c, grpc=args.grpc)
            after = client.batch_stats()
            runs = {s: after.get(s, 0) - before.get(s, 0) for s in after}
            mean_batch = sum(s * n for s, n in runs.items()) / max(1, sum(runs.values()))
            served[c] = result.throughput
            rows.append([c, f"{result.throughput:.1f}", f"{result.p_ms(50):.0f}", f"{result.p_ms(99):.0f}",
                         f"{mean_batch:.1f}", len(result.errors), f"{local[c]:.1f}", f"{result.throughput / local[c]:.2f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["concurrency", "served img/s", "p50 ms", "p99 ms", "mean executed batch", "errors",
              "in-process img/s (batch = concurrency)", "served / in-process"]
    ratio = served.get(8, 0) / local[8] if 8 in local else float("nan")
    verdict = "met" if ratio >= TARGET else "missed"
    notes = (f"Artifact: {artifact} ({kind}); {len(payloads)} images from {args.images}, sent "
             f"encoded, {args.requests} requests per row, one image per request, over {'gRPC' if args.grpc else 'HTTP'}; "
             f"server: --max-batch {args.max_batch}, --max-queue-delay-us {args.max_queue_delay_us}, 1 instance. "
             f"In-process: decode + Detector.predict in batches of the row's concurrency. Target: served >= {TARGET}x "
             f"in-process at concurrency 8: {ratio:.2f}x, {verdict}. Client and server share this machine's cores.")
    command = invocation()

    def plot(figure) -> None:
        ax = figure.add_subplot()
        cs = list(served)
        ax.plot(cs, [served[c] for c in cs], "o-", label="served (Triton, dynamic batching)")
        ax.plot(cs, [local[c] for c in cs], "s--", label="in-process Detector.predict (batch = concurrency)")
        ax.set_xlabel("client concurrency")
        ax.set_ylabel("images / s")
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.legend()
        ax.grid(alpha=0.3)

    write_benchmark_report(args.report, title="Serving throughput: Triton (siefpn-deploy serve) vs in-process (CPU)",
                           data={"header": header, "rows": rows, "ratio_at_8": ratio}, command=command,
                           body=markdown_table(header, rows) + "\n\n" + notes, plot=plot)


if __name__ == "__main__":
    main()
