"""`siefpn-deploy triton-repo`: a Triton Inference Server model repository from deployed artifacts
(serve.repository)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_artifacts

HELP = "write a Triton Inference Server model repository (config.pbtxt from the graph contract)"
DESCRIPTION = ("Write a model repository a Triton fleet serves unchanged: a model per .onnx or .plan artifact, its "
               "config.pbtxt stated from the graph contract and checked against Triton's own ModelConfig.")
EPILOG = """\
examples:
  siefpn-deploy triton-repo --artifacts export/demo.onnx engines/demo.fp16.plan --output model_repository
  siefpn-deploy triton-repo --artifacts export/demo.onnx --output model_repository --instance-kind cpu \\
      --instances 2 --max-batch 4 --dynamic-batching-delay-us 500

One model per artifact: MODEL/config.pbtxt (platform onnxruntime_onnx or tensorrt_plan; the contract's
input and output names, dtypes and dims; max_batch_size from the artifact's batch range or the engine's
profile; dynamic batching; an instance group), MODEL/1/model.onnx|model.plan and MODEL/meta.json. Every
config.pbtxt is parsed into Triton's own ModelConfig protobuf (from tritonclient) before anything is written.
Copy the folder to a Triton fleet unchanged: its README.md says how. --ensemble adds NAME_ensemble, which takes
encoded images (JPEG, PNG, ...) and returns `siefpn-deploy serve`'s outputs (boxes in original-image pixels,
category ids, RLE masks), so `siefpn-deploy client --model NAME_ensemble` talks to it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serve.repository import INSTANCE_KINDS, RepositoryOptions

    o = RepositoryOptions
    add_artifacts(parser, ".onnx (onnxruntime_onnx) and .plan (tensorrt_plan) artifacts with their meta.json")
    parser.add_argument("--output", type=Path, default=o.output, metavar="DIR", help="default %(default)s")
    parser.add_argument("--max-batch", type=int, metavar="N",
                        help="max_batch_size (default: the artifact's largest batch, an engine's profile maximum)")
    parser.add_argument("--instances", type=int, default=o.instances, metavar="N",
                        help="model instances per GPU (or in all on the CPU); default %(default)s")
    parser.add_argument("--instance-kind", choices=list(INSTANCE_KINDS), default=o.instance_kind,
                        help="KIND_GPU or KIND_CPU (an engine: gpu only); default %(default)s")
    parser.add_argument("--dynamic-batching-delay-us", type=int, default=o.delay_us, metavar="D",
                        help="the longest a request waits for others to batch with, in microseconds (default "
                        "%(default)s, as `serve --max-queue-delay-us`)")
    parser.add_argument("--ensemble", action="store_true",
                        help="also NAME_ensemble: encoded images in, `serve`'s detections out (Python-backend pre- and "
                        "postprocessing around the model; Triton's Python environment needs siefpn-deploy)")
    parser.add_argument("--max-image-pixels", type=int, default=o.max_image_pixels, metavar="N",
                        help="--ensemble: larger images are refused before decoding (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ..serve.repository import RepositoryOptions, write_repository

    write_repository(list(args.artifacts), RepositoryOptions(
        output=args.output, max_batch=args.max_batch, instances=args.instances, instance_kind=args.instance_kind,
        delay_us=args.dynamic_batching_delay_us, ensemble=args.ensemble, max_image_pixels=args.max_image_pixels))
    print(f"[triton-repo] wrote {args.output} ({len(args.artifacts)} model(s)); serve it with "
          f"tritonserver --model-repository={args.output}")
    return 0
