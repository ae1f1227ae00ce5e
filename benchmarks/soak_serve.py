"""A soak of `siefpn-deploy serve`: thousands of requests, some of them hostile, against one server on loopback;
then SIGTERM. Bounded in count (--requests) and time (each request's --timeout).

    python benchmarks/soak_serve.py                          # 5000 requests, concurrency 16, 5% hostile
    python benchmarks/soak_serve.py --requests 500 --arch mask_rcnn  # masks too: the server's mask encoding

The model is the briefly trained synthetic RetinaNet (benchmarks/common.py), exported to ONNX and served with the defaults of `serve` except the ports. Every good answer is
compared with the in-process Detector on that image alone (boxes to 1e-3 px, scores to 1e-5, masks equal). The
hostile rows are refused in their own row (error output) or, where the image is valid, answered like the
in-process Detector. The server's memory is its process tree's resident set (serve, tritonserver, the
Python-backend stub), sampled every 0.1 s; shared memory between them counts once per process.
"""

from __future__ import annotations

import io
import random
import signal
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import numpy as np
from common import invocation, shapes, synthetic_benchmark_arguments, synthetic_model
from PIL import Image

from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import Latency
from siefpn_deploy.data.image import decode_image, find_images
from siefpn_deploy.pipeline import ExportOptions
from siefpn_deploy.runtime import Detector
from siefpn_deploy.serve.client import RequestError, ThreadClients
from siefpn_deploy.serve.launch import free_loopback_ports, serve_process
from siefpn_deploy.serve.options import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ServeOptions
from siefpn_deploy.serve.processes import process_tree, session_members

LEFT_GRACE_S = 5.0  # how long after `serve` exits its processes may take to be gone


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height over a few bytes of data: a bomb a header check must stop."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1024))) + chunk(b"IEND", b"")


def hostile_payloads(good: bytes, max_bytes: int) -> dict[str, bytes]:
    """What an attacker or a broken client sends, by kind."""
    rng = np.random.default_rng(0)
    return {
        "1x400 strip (degenerate)": png(Image.new("RGB", (1, 400))),
        "400x1 strip (degenerate)": png(Image.new("RGB", (400, 1))),
        "PNG claiming 100000x100000 (bomb, header)": png_claiming(100_000, 100_000),
        "PNG of 20000x20000, 1 bit (bomb, 2 KB file)": png(Image.new("1", (20_000, 20_000))),
        "PNG of 5000x5000 RGB (under the pixel cap)": png(Image.new("RGB", (5000, 5000), (90, 20, 200))),
        "random bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated image": good[: len(good) // 2],
        "EPS (PostScript)": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n/x { x } def x\nshowpage\n",
        "empty": b"",
        f"over --max-image-bytes ({max_bytes + 1} bytes)": good + bytes(max_bytes + 1 - len(good)),
    }


class Memory:
    """The peak resident set of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid, self.every_s, self.peak, self.peak_main = pid, every_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            main = self.rss(self.pid)
            self.peak_main = max(self.peak_main, main)
            self.peak = max(self.peak, main + sum(self.rss(p) for p in process_tree(self.pid)))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def same(a, b) -> bool:
    return (len(a) == len(b) and a.labels.tolist() == b.labels.tolist()
            and np.allclose(a.boxes, b.boxes, rtol=0, atol=1e-3) and np.allclose(a.scores, b.scores, rtol=0, atol=1e-5)
            and (a.masks is None or (a.masks.shape == b.masks.shape and bool((a.masks == b.masks).all()))))


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/serve_soak.md")
    # the soak tests the server, not the model: a few iterations give scores spread enough for detections and masks
    p.set_defaults(sizes=[320], work="output/bench_serve_soak", train_iters=6)
    p.add_argument("--arch", default="retinanet", choices=["retinanet", "faster_rcnn", "mask_rcnn"],
                   help="mask_rcnn also exercises the mask encoding (slower per request)")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--hostile", type=float, default=0.05, help="the fraction of hostile or odd requests")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds each request may take")
    args = p.parse_args()
    size = args.sizes[0]
    _, artifact = synthetic_model(args.arch, args, ExportOptions(**shapes(8, size)))
    good = [f.read_bytes() for f in find_images(Path(args.data) / "val")][:64]
    local = Detector.from_path(artifact.path, device="cpu")
    hostile = hostile_payloads(good[0], MAX_IMAGE_BYTES)
    expected = {i: local.predict(decode_image(b)) for i, b in enumerate(good)}
    valid_hostile = {k: local.predict(decode_image(b, max_pixels=MAX_IMAGE_PIXELS)) for k, b in hostile.items()
                     if k.startswith("PNG of 5000x5000")}
    del local

    rng = random.Random(0)
    kinds = list(hostile)
    plan = [("hostile", kinds[i % len(kinds)]) if rng.random() < args.hostile else ("good", rng.randrange(len(good)))
            for i in range(args.requests)]
    http, grpc, metrics = free_loopback_ports(3)
    options = ServeOptions(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_s=10)
    outcomes: Counter[tuple[str, str]] = Counter()
    seconds: list[float] = []
    wrong: list[str] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as work, serve_process(artifact.path, options, log=Path(work) / "serve.out") as proc:
        clients = ThreadClients(f"127.0.0.1:{http}", timeout_s=args.timeout)

        def one(n: int) -> None:
            what, which = plan[n]
            payload = good[which] if what == "good" else hostile[which]
            start = time.perf_counter()
            try:
                (dets,) = clients.get().detect([payload])
                took = time.perf_counter() - start
                want = expected[which] if what == "good" else valid_hostile.get(which)
                result = "answered, equal" if want is not None and same(dets, want) else "answered, NOT EQUAL"
            except RequestError as e:
                took, result = time.perf_counter() - start, f"refused: {str(e).split(': ', 1)[-1][:70]}"
            with lock:
                outcomes[(what if what == "good" else which, result)] += 1
                if what == "good":
                    seconds.append(took)
                    if result != "answered, equal":
                        wrong.append(f"request {n}: {result}")

        start = time.perf_counter()
        with Memory(proc.pid) as memory, ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            idle = Memory.rss(proc.pid) + sum(Memory.rss(q) for q in process_tree(proc.pid))
            list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
        clients.close()
        sid = proc.pid
        proc.send_signal(signal.SIGTERM)
        sent = time.perf_counter()
        rc = proc.wait(timeout=options.exit_timeout_s + 60)
        stop_s = time.perf_counter() - sent
        left = session_members(sid)
        deadline = time.monotonic() + LEFT_GRACE_S
        while left and time.monotonic() < deadline:  # a process may still be exiting on its own
            time.sleep(0.1)
            left = session_members(sid)

    latency = Latency(tuple(seconds))
    rows = [[kind, result, n] for (kind, result), n in sorted(outcomes.items())]
    header = ["request", "outcome", "count"]
    good_n = sum(n for (k, _), n in outcomes.items() if k == "good")
    summary = [["requests", args.requests], ["concurrency", args.concurrency],
               ["good requests answered equal to the in-process Detector", f"{good_n - len(wrong)} of {good_n}"],
               ["detections per good image, mean (in-process)",
                f"{sum(len(d) for d in expected.values()) / len(expected):.1f}"],
               ["good requests p50 / p99 (ms)", f"{latency.percentile(50) * 1e3:.0f} / {latency.percentile(99) * 1e3:.0f}"],
               ["throughput (requests/s)", f"{args.requests / wall:.1f}"],
               ["server RSS idle after start (MiB)", f"{idle / 2**20:.0f}"],
               ["server peak RSS, process tree (MiB)", f"{memory.peak / 2**20:.0f}"],
               ["serve process peak RSS (MiB)", f"{memory.peak_main / 2**20:.0f}"],
               ["exit code after SIGTERM", rc], ["seconds from SIGTERM to exit", f"{stop_s:.1f}"],
               [f"processes of the server left {LEFT_GRACE_S:.0f} s after exit", ", ".join(left) or "none"]]
    notes = (f"Model: {artifact.path.name} ({args.arch}, synthetic R18 trained {args.train_iters} iterations, ONNX "
             f"Runtime, dynamic batch 1..8, sizes up to {size}); good images: {len(good)} synthetic val images in "
             f"turn; hostile ({args.hostile:.0%} of requests): the kinds above in turn. Server: `serve` defaults "
             f"(--max-batch {options.max_batch}, 1 instance, --max-image-pixels {MAX_IMAGE_PIXELS}, "
             f"--max-image-bytes {MAX_IMAGE_BYTES}) on loopback; client and server share the machine's cores.")
    if wrong:
        notes += "\n\nUnequal or refused good requests (first 10): " + "; ".join(wrong[:10])
    command = invocation()
    write_benchmark_report(args.report, title="Serve soak: hostile and good requests, then SIGTERM (CPU)",
                           data={"summary": summary, "outcomes": rows, "wrong": wrong[:100]}, command=command,
                           body=markdown_table(["measure", "value"], summary) + "\n\n" + markdown_table(header, rows)
                           + "\n\n" + notes)
    sys.exit(1 if wrong or rc != 0 or left else 0)


if __name__ == "__main__":
    main()
