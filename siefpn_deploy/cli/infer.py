"""`siefpn-deploy infer`: run any artifact on images (runtime.infer)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (
    add_checkpoint_config,
    add_detections_json,
    add_device,
    add_runtime,
    add_source,
    add_threads,
    add_vis_arguments,
    video_source,
    vis_options,
)

HELP = "run any artifact on images or video: detections drawn (PNGs, MP4) and written as JSON"
DESCRIPTION = ("Run a .onnx, .pt2, .plan or .pth on an image, a folder of images, a video, a folder of videos, a "
               "camera or a stream, through the same preprocessing and postprocessing as parity and bench: "
               "detections drawn to PNGs or an MP4, and/or written as JSON.")
EPILOG = """\
examples:
  siefpn-deploy infer --artifact export/demo.onnx --source datasets/synth/val --save-vis out/vis --save-json out/dets.json
  siefpn-deploy infer --artifact export/demo.onnx --source datasets/synth/val --save-json out/results.json \\
      --annotations datasets/synth/annotations/instances_val.json          # COCO results, ready for COCOeval
  siefpn-deploy infer --artifact output/demo/model_final.pth --source photo.jpg --save-vis out/
  siefpn-deploy infer --artifact export/demo.onnx --source photo.jpg --save-vis out/ --vis-score 0.3 --vis-top 5
  siefpn-deploy infer --artifact export/demo.onnx --source clip.mp4 --save-vis out/clip.mp4 --save-json out/clip.json
  siefpn-deploy infer --artifact export/demo.onnx --source rtsp://camera/stream --source-option rtsp_transport=tcp \\
      --stride 2 --save-vis out/camera.mp4 --save-json out/camera.json             # Ctrl-C ends it, keeping both

Labels are 1..C as in siefpn_deploy/core/contract.py; the JSON carries each label's COCO category_id. A video's
JSON has one record per detection with its frame_index and timestamp (seconds, from the frame's pts).
The pictures show the confident detections only (--vis-score, --vis-top); the JSON keeps every detection above
the model's own threshold (MODEL.SCORE_THRESH_TEST), as COCOeval needs.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", required=True, type=Path, metavar="PATH",
                        help=".onnx, .pt2, .plan or a .pth checkpoint")
    add_source(parser)
    parser.add_argument("--save-vis", type=Path, metavar="PATH",
                        help="draw the detections: images to DIR/NAME.png; a video to an .mp4 file, or to DIR/NAME.mp4")
    add_vis_arguments(parser)
    add_detections_json(parser)
    add_checkpoint_config(parser)
    add_device(parser)
    add_runtime(parser, several=False)
    add_threads(parser)
    parser.add_argument("--batch", type=int, metavar="B",
                        help="images per canvas (default: one image per canvas, as training's evaluation and parity: "
                        "a batch's padding reaches the border detections of its smaller images); a video's frames "
                        "share a canvas, and go in batches of the artifact's largest batch, at most 8, by default")


def run(args: argparse.Namespace) -> int:
    from ..core.cpu import torch_threads
    from ..runtime import Detector
    from ..runtime.infer import run_infer

    vis = vis_options(args)  # checked before the model loads
    video = video_source(args)  # so is the source
    detector = Detector.from_path(args.artifact, device=args.device, config=args.config_file, runtime=args.runtime,
                                  threads=args.threads)
    with torch_threads(detector.torch_threads):
        if video is not None:
            from ..runtime.video import run_video_infer

            run_video_infer(detector, save_vis=args.save_vis, save_json=args.save_json, batch_size=args.batch,
                            **video, **vis)
            return 0
        run_infer(detector, Path(args.source), save_vis=args.save_vis, save_json=args.save_json,
                  annotations=args.annotations, batch_size=args.batch, **vis)
    return 0
