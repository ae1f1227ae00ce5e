"""`siefpn-deploy client`: send images to a `serve` server (serve.client)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_detections_json, add_source, video_source

HELP = "send images or video frames to a `serve` server (HTTP or gRPC): detections as COCO JSON, latency"
DESCRIPTION = ("Send every image under --source, or the frames of a video, camera or stream, to a `siefpn-deploy "
               "serve` server (or a `triton-repo --ensemble` model) and print throughput and latency percentiles.")
EPILOG = """\
examples:
  siefpn-deploy client --url localhost:{http} --source datasets/synth/val --concurrency 8
  siefpn-deploy client --url localhost:{grpc} --grpc --source datasets/synth/val \\
      --annotations datasets/synth/annotations/instances_val.json --save-json out/served_results.json
  siefpn-deploy client --url localhost:{http} --source clip.mp4 --stride 2 --save-json out/clip.json

Sends each image's file bytes to a `siefpn-deploy serve` server (tritonclient, HTTP or gRPC), CONCURRENCY
requests at a time, and prints throughput and latency percentiles. --save-json writes what
`siefpn-deploy infer --save-json` writes: COCO results with --annotations (COCO.loadRes takes them). A video's
frames go as PNG (lossless: the server runs the pixels infer runs), and the JSON has infer's frame_index and
timestamp per detection.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import inspect

    from ..serve.client import run_client
    from ..serve.options import ServeOptions

    parser.epilog = EPILOG.format(http=ServeOptions.http_port, grpc=ServeOptions.grpc_port)
    parser.add_argument("--url", default=f"localhost:{ServeOptions.http_port}",
                        help=f"host:port (default %(default)s; gRPC: :{ServeOptions.grpc_port})")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    parser.add_argument("--model", metavar="NAME", help="the model (default: the server's only one)")
    add_source(parser)
    add_detections_json(parser)
    parser.add_argument("--concurrency", type=int, metavar="N",
                        default=inspect.signature(run_client).parameters["concurrency"].default,
                        help="requests in flight (default %(default)s)")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help="the server's key (`serve --api-key-file`): this file's first line, or $SIEFPN_API_KEY")


def run(args: argparse.Namespace) -> int:
    import os

    from ..serve.client import run_client, run_client_video
    from ..serve.options import read_api_key

    api_key = read_api_key(args.api_key_file, dict(os.environ))
    video = video_source(args)
    if video is not None:
        run_client_video(args.url, grpc=args.grpc, model=args.model, save_json=args.save_json,
                         concurrency=args.concurrency, api_key=api_key, **video)
        return 0
    run_client(args.url, Path(args.source), grpc=args.grpc, model=args.model, annotations=args.annotations,
               save_json=args.save_json, concurrency=args.concurrency, api_key=api_key)
    return 0
