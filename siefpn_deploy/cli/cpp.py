"""`siefpn-deploy cpp build`: the C++ runtime, libsiefpn and siefpn-infer (runtime.cpp)."""

from __future__ import annotations

import argparse
from pathlib import Path

GROUP = "cpp"
GROUP_HELP = "the C++ runtime (engines/cpp): build libsiefpn and siefpn-infer"
NAME = "build"
HELP = "configure and build engines/cpp with CMake and Ninja (no root needed)"
DESCRIPTION = ("Build libsiefpn (siefpn::Detector: .pt2 packages through LibTorch's AOTInductor runtime, .plan engines "
               "through TensorRT) and the siefpn-infer CLI.")
EPILOG = """\
examples:
  siefpn-deploy cpp build                                   # engines/cpp/build/siefpn-infer and libsiefpn.so
  engines/cpp/build/siefpn-infer --artifact export/demo_aoti.pt2 --source datasets/synth/val \\
      --annotations datasets/synth/annotations/instances_val.json --json out/cpp_results.json
  engines/cpp/build/siefpn-infer --artifact export/demo_aoti.pt2 --bench --batch 1 4 --size 384
  siefpn-deploy bench --artifacts export/demo_aoti.pt2 --cpp --imgsz 384   # Python and C++ side by side

The build uses the system C++ compiler and pip-installed pieces only: cmake, ninja and nlohmann-json (the
[cpp] extra), LibTorch's headers and libraries from the installed torch wheel, and torchvision's image
decoders. The TensorRT backend is compiled when NvInfer.h and libnvinfer are found (--tensorrt auto), or
required (--tensorrt on, with --tensorrt-root). See engines/cpp/README.md for the C++ API.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..runtime.cpp import TENSORRT_CHOICES, CppBuild, default_build_dir

    parser.add_argument("--build-dir", type=Path, metavar="DIR", help=f"default {default_build_dir()}")
    parser.add_argument("--tensorrt", choices=TENSORRT_CHOICES, default=CppBuild.tensorrt,
                        help="the TensorRT backend: auto (when found), on (required) or off (default %(default)s)")
    parser.add_argument("--tensorrt-root", type=Path, metavar="DIR", help="a TensorRT install with include/ and lib/")
    parser.add_argument("--jobs", type=int, metavar="N", help="parallel compile jobs (default: ninja's)")


def run(args: argparse.Namespace) -> int:
    from ..runtime.cpp import CppBuild, default_build_dir

    CppBuild(build_dir=args.build_dir or default_build_dir(), tensorrt=args.tensorrt,
             tensorrt_root=args.tensorrt_root, jobs=args.jobs).run()
    return 0
