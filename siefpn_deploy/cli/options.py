"""What the commands share: the parser class every command gets, and the options several commands take, each
defined once here so it reads and defaults the same everywhere.

A default in help text is argparse's `%(default)s` (the value the parser really uses) or an f-string of the
options dataclass field it comes from; no default is written out twice. A command's options come from the
stage modules that own their defaults, and those import torch: `CommandParser` adds them only when that command
is parsed or its help printed, so `siefpn-deploy --help` and every other command stay fast.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

DESCRIPTION_WIDTH = 110  # the width the epilogs' paragraphs are laid out at


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks (the examples are laid out by hand; `add_command` wraps a
    description)."""


class CommandParser(argparse.ArgumentParser):
    """The parser of one command module (HELP, DESCRIPTION, EPILOG, add_arguments, run). Its options are added on
    first use, and its `run` becomes the namespace's `run`."""

    def __init__(self, *args: Any, command: ModuleType | None = None, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)
        self._command = command
        self._options_added = command is None

    def add_command_options(self) -> None:
        if self._options_added:
            return
        self._options_added = True
        self._command.add_arguments(self)
        self.set_defaults(run=self._command.run)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.add_command_options()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.add_command_options()
        return super().format_usage()

    def format_help(self) -> str:
        self.add_command_options()
        return super().format_help()


def add_command(subparsers: Any, name: str, command: ModuleType) -> CommandParser:
    return subparsers.add_parser(name, command=command, help=command.HELP, epilog=command.EPILOG,
                                 description=textwrap.fill(command.DESCRIPTION, DESCRIPTION_WIDTH))


def optional_path(text: str) -> Path | None:
    """A path option where '' means none (--timing-cache '', --calib-cache '')."""
    return Path(text) if text else None


# ------------------------------------------------------------------------------ configs


def add_config_file(parser: argparse.ArgumentParser, help: str, *, required: bool = False,
                    default: str | None = None) -> None:
    """--config-file: a YAML path or the name of a shipped preset (`train --list-presets`)."""
    if default is not None:
        help += "; default %(default)s"
    parser.add_argument("--config-file", metavar="FILE", required=required, default=default, help=help)


def add_checkpoint_config(parser: argparse.ArgumentParser) -> None:
    """--config-file of the commands that run any artifact: only a .pth checkpoint needs one."""
    add_config_file(parser, "for a .pth: its config (default: config.yaml beside it)")


def add_overrides(parser: argparse.ArgumentParser, help: str = "config overrides") -> None:
    """KEY VALUE config overrides after the options (values parsed as YAML)."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help=help)


REQUIRED_WEIGHTS = "config overrides; MODEL.WEIGHTS path/to/model_final.pth is required"


# ------------------------------------------------------------------------------ running artifacts


def add_artifacts(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--artifacts", nargs="+", required=True, type=Path, metavar="PATH", help=help)


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device where an artifact runs (`export --device` is another option: the device a package is compiled for)."""
    from ..core.ort import DEVICES
    from ..pipeline.bench import BenchJob

    parser.add_argument("--device", choices=DEVICES, default=BenchJob.device,
                        help="where artifacts run; auto: a GPU when there is one (default %(default)s)")


_RUNTIME_HELP = ("onnxruntime; openvino (CPU, FP32 arithmetic; pip install 'siefpn-deploy[openvino]'); or openvino-bf16 "
                 "(the same in bf16, on CPUs that compute it natively: AVX512-BF16 or AMX); default: the file's own, "
                 "openvino for `quantize --target openvino`, else onnxruntime")


def add_runtime(parser: argparse.ArgumentParser, *, several: bool) -> None:
    """--runtime: what runs a .onnx; `several` (parity, bench) takes a list, a row each."""
    from ..core.openvino import RUNTIMES

    if several:
        parser.add_argument("--runtime", nargs="+", choices=RUNTIMES, metavar="R",
                            help=f"what runs each .onnx, a row per runtime: {_RUNTIME_HELP}")
    else:
        parser.add_argument("--runtime", choices=RUNTIMES, help=f"what runs a .onnx: {_RUNTIME_HELP}")


def runtimes(args: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(args.runtime) if args.runtime else None


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads of the runtime that runs a .onnx (default: the runtime's own)")


def add_report(parser: argparse.ArgumentParser, default: Path, what: str) -> None:
    parser.add_argument("--report", type=Path, default=default, metavar="DIR",
                        help=f"where {what} go (default %(default)s)")


# ------------------------------------------------------------------------------ images in, detections out


def add_source(parser: argparse.ArgumentParser) -> None:
    """--source, and how much of a video source to run (`data.video`)."""
    from ..data.video import READ_TIMEOUT_S

    parser.add_argument("--source", required=True, metavar="SOURCE",
                        help="an image or a folder of images; a video file or a folder of videos; a camera index "
                        "(0: /dev/video0); or a stream URL (rtsp://, http://, ...)")
    video = parser.add_argument_group("video sources")
    video.add_argument("--stride", type=int, default=1, metavar="N",
                       help="run every Nth frame: frame indices 0, N, 2N, ... (default %(default)s)")
    video.add_argument("--max-frames", type=int, metavar="N",
                       help="stop after N frames have run (counted after --stride); without it a camera or live "
                       "stream runs until it ends or Ctrl-C, which keeps what was done")
    video.add_argument("--read-timeout", type=float, default=READ_TIMEOUT_S, metavar="S",
                       help="seconds without data before a stream or camera counts as dropped (default %(default)s)")
    video.add_argument("--source-option", action="append", metavar="KEY=VALUE",
                       help="an FFmpeg option for opening the source, repeatable: rtsp_transport=tcp, "
                       "video_size=1280x720, framerate=30, input_format=mjpeg")


def video_source(args: argparse.Namespace) -> dict[str, Any] | None:
    """For a video --source: the video run's inputs, stride, max_frames, read_timeout_s and FFmpeg options, all
    checked (before any model loads); None for images, where the video options are refused."""
    from ..core.errors import UserError
    from ..data.video import check_frame_options, source_options, video_inputs

    inputs = video_inputs(args.source)
    if inputs is None:
        given = [flag for flag, value, default in (("--stride", args.stride, 1), ("--max-frames", args.max_frames, None),
                                                   ("--source-option", args.source_option, None)) if value != default]
        if given:
            raise UserError(f"{', '.join(given)}: for a video source; --source {args.source} is images")
        return None
    check_frame_options(args.stride, args.max_frames, args.read_timeout)
    if getattr(args, "annotations", None) is not None:
        raise UserError("--annotations lists images; a video source's JSON names each frame by its index")
    return {"inputs": inputs, "stride": args.stride, "max_frames": args.max_frames,
            "read_timeout_s": args.read_timeout, "options": source_options(args.source_option)}


def add_detections_json(parser: argparse.ArgumentParser) -> None:
    """--save-json and --annotations: what `infer` and `client` write, in the same format."""
    parser.add_argument("--save-json", type=Path, metavar="FILE",
                        help="write the detections as JSON: COCO results with --annotations, else keyed by file_name; "
                        "for a video, one record per detection with its frame_index and timestamp")
    parser.add_argument("--annotations", type=Path, metavar="JSON",
                        help="COCO instances file listing the --source images: --save-json then writes COCO results "
                        "(image_id, category_id, bbox, score, RLE segmentation) that COCO.loadRes takes")


def add_vis_arguments(parser: argparse.ArgumentParser) -> None:
    """--vis-score and --vis-top: which detections a picture shows (`vis_options` reads them). The JSON is not
    filtered by them."""
    from ..runtime.visualize import DEFAULT_MIN_SCORE

    parser.add_argument("--vis-score", type=float, default=DEFAULT_MIN_SCORE, metavar="S",
                        help="draw only detections scoring at least S (default %(default)s); --save-json keeps every "
                        "detection above the model's own threshold")
    parser.add_argument("--vis-top", type=int, metavar="N",
                        help="draw at most the N best of them per image (default: all)")


def vis_options(args: argparse.Namespace) -> dict[str, Any]:
    """`runtime.visualize.draw`'s min_score and top from --vis-score and --vis-top, or a one-line error."""
    from ..core.errors import UserError

    if not 0.0 <= args.vis_score <= 1.0:
        raise UserError(f"--vis-score is a score between 0 and 1, got {args.vis_score:g}")
    if args.vis_top is not None and args.vis_top < 1:
        raise UserError(f"--vis-top must be at least 1, got {args.vis_top}")
    return {"min_score": args.vis_score, "top": args.vis_top}
