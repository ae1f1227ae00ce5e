"""`siefpn-deploy serve`: serve any artifact with a local Triton Inference Server (serve.server)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.cpu import torch_threads
from ..core.errors import UserError
from ..core.signals import disposition_kept
from .options import add_checkpoint_config, add_device, add_threads

HELP = "serve any artifact with a local Triton Inference Server (dynamic batching, HTTP, gRPC)"
DESCRIPTION = ("Serve a .onnx, .pt2, .plan or .pth with a real Triton Inference Server in this process: encoded "
               "images in, detections out, until SIGINT or SIGTERM.")
EPILOG = """\
examples:
  siefpn-deploy serve --artifact export/demo.onnx                  # HTTP :{http}, gRPC :{grpc}, metrics :{metrics}
  siefpn-deploy serve --artifact engines/demo.fp16.plan --max-batch 16 --max-queue-delay-us 5000 --instances 2
  curl localhost:{http}/v2/health/ready && curl localhost:{metrics}/metrics
  siefpn-deploy client --url localhost:{http} --source datasets/synth/val --concurrency 8
  siefpn-deploy serve --artifact export/demo.onnx --host 0.0.0.0 --api-key-file /run/secrets/key   # a container
  siefpn-deploy serve --prepare-env     # once, where a package index is reachable; then serve works offline

A real Triton Inference Server (tritonserver from the nvidia-pytriton wheel, no container) runs the model in
this process through its Python backend, with dynamic batching, HTTP and gRPC, health and readiness endpoints,
statistics and Prometheus metrics. Any artifact kind is served (.onnx, .pt2, .plan, or a .pth), and it takes
encoded images: input `image` (BYTES [1], a JPEG/PNG/WebP file per row); outputs num_dets, boxes (original
image pixels), scores, labels, category_ids, class_names, image_size, masks (Mask R-CNN: COCO RLE counts) and
error (why an image was refused; it fails only its own row). Rows run together only when they share a
canvas size, so a response never depends on the requests batched with it. SIGINT or SIGTERM stop it
gracefully: requests in flight finish, every process it started ends, then it exits 0. It listens on
127.0.0.1 unless --host says otherwise; --api-key-file closes inference to clients without the key.
Memory: see docs/serving.md for the worst case per batch and instance. Setup: the README's first command
(pip install -e ".[all]" && pip install --no-deps nvidia-pytriton==0.7.0, whose wheel pins numpy<2). Its stub
runs in a numpy<2 environment of its own (siefpn_deploy/serve/python_env.py), which the demo or --prepare-env
builds; `siefpn-deploy doctor` says whether it is ready. To hand a fleet the ONNX or engine itself, see `siefpn-deploy triton-repo`.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serve.options import API_KEY_ENV, API_KEY_HEADER
    from ..serve.options import ServeOptions as o

    parser.epilog = EPILOG.format(http=o.http_port, grpc=o.grpc_port, metrics=o.metrics_port)
    parser.add_argument("--artifact", type=Path, metavar="PATH",
                        help=".onnx, .pt2, .plan or a .pth checkpoint, or a folder `optimize` wrote (required "
                        "unless --prepare-env)")
    add_checkpoint_config(parser)
    add_device(parser)
    add_threads(parser)
    parser.add_argument("--host", default=o.host,
                        help="address the HTTP, gRPC and metrics endpoints listen on (default %(default)s, this "
                        "machine only); --host 0.0.0.0 in a container or to serve other machines")
    parser.add_argument("--http-port", type=int, default=o.http_port, metavar="P", help="default %(default)s")
    parser.add_argument("--grpc-port", type=int, default=o.grpc_port, metavar="P", help="default %(default)s")
    parser.add_argument("--metrics-port", type=int, default=o.metrics_port, metavar="P",
                        help="Prometheus metrics at /metrics (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=o.max_batch, metavar="N",
                        help="images the dynamic batcher merges into one batch (default %(default)s)")
    parser.add_argument("--max-queue-delay-us", type=int, default=o.max_queue_delay_us, metavar="D",
                        help="the longest a request waits for others to batch with, in microseconds "
                        "(default %(default)s)")
    parser.add_argument("--instances", type=int, default=o.instances, metavar="N",
                        help="model instances running batches at once, each with its own copy of the model "
                        "(default %(default)s)")
    parser.add_argument("--max-image-pixels", type=int, default=o.max_image_pixels, metavar="N",
                        help="larger images are refused from their header, before decoding (default %(default)s)")
    parser.add_argument("--max-image-bytes", type=int, default=o.max_image_bytes, metavar="N",
                        help="larger encoded images are refused before decoding (default %(default)s)")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help=f"require the key on this file's first line (or in ${API_KEY_ENV}) for inference, "
                        f"metadata and statistics: clients send it in the {API_KEY_HEADER} header "
                        "(`client --api-key-file`); without one, anyone who reaches the ports may infer")
    parser.add_argument("--open-stats", action="store_true",
                        help="with a key: leave statistics, metadata, model config and the metrics port open")
    parser.add_argument("--exit-timeout", type=int, default=o.exit_timeout_s, metavar="S",
                        help="on SIGINT/SIGTERM, how long in-flight requests may take (default %(default)s)")
    parser.add_argument("--model-name", metavar="NAME", help="the Triton model name (default: from the file name)")
    parser.add_argument("--python-env", type=Path, metavar="DIR", help="the Python-backend stub's environment "
                        "(default: built once under ~/.cache/siefpn-deploy)")
    parser.add_argument("--prepare-env", action="store_true",
                        help="build the stub's environment (the only step of serving that needs a package index) "
                        "and exit: run it once where an index is reachable, e.g. when a container image is built; "
                        "the demo does it too")
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="tritonserver's log (default: a file in the temp folder)")


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from ..runtime.detector import Detector
    from ..serve.options import ServeOptions, read_api_key
    from ..serve.python_env import ensure_python_env
    from ..serve.server import DetectorServer, check_options, require_pytriton

    if args.prepare_env:
        require_pytriton()
        print(f"[serve] the stub's environment is ready: {ensure_python_env(args.python_env)}")
        return 0
    if args.artifact is None:
        raise UserError("serve: --artifact is required (a .onnx, .pt2, .plan, .pth or an optimize folder)")
    options = ServeOptions(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
        max_image_pixels=args.max_image_pixels, max_image_bytes=args.max_image_bytes,
        api_key=read_api_key(args.api_key_file, dict(os.environ)), open_stats=args.open_stats,
        exit_timeout_s=args.exit_timeout, model_name=args.model_name,
        python_env=args.python_env, log_file=args.log_file)
    check_options(options)  # before loading the artifact, which can take a while

    def load() -> Detector:  # once per instance
        return Detector.from_path(args.artifact, device=args.device, config=args.config_file, threads=args.threads)

    stop = threading.Event()

    def request_stop(signum, frame) -> None:
        stop.set()

    # SIGINT and SIGTERM end the wait, then the server drains and stops; the handlers before are back afterwards
    # (`main` may run inside a caller's process, where a leftover handler would swallow its Ctrl-C), and so is
    # PyTorch's thread count, which this process sets for the artifact it serves
    with (disposition_kept(signal.SIGINT, request_stop), disposition_kept(signal.SIGTERM, request_stop),
          DetectorServer(load, options) as server, torch_threads(server.detectors[0].torch_threads)):
        server.wait(stop)
    print("[serve] stopped")
    return 0
