"""`siefpn-deploy doctor`: what each optional piece gives on this machine (pipeline.doctor)."""

from __future__ import annotations

import argparse

HELP = "say what each optional piece (runtimes, TensorRT, CUDA, C++, Triton) gives on this machine"
DESCRIPTION = ("Print one table: for ONNX Runtime (its providers), OpenVINO (devices, bf16), ModelOpt, TensorRT / "
               "TensorRT-RTX, CUDA, the C++ runtime, tritonserver and serve's stub environment, PyAV, Polygraphy "
               "and matplotlib, whether it is here, what it gives, and for each missing one why and the command "
               "that adds it. It only looks: nothing is built or installed.")
EPILOG = """\
examples:
  siefpn-deploy doctor                 # the table
  siefpn-deploy doctor --missing       # only what is missing, with the command that adds it

Every command that needs a missing piece says so in one line too; doctor shows them all at once. Exit code 0
always: a machine without a GPU is not broken.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--missing", action="store_true", help="list only the pieces that are not here")


def run(args: argparse.Namespace) -> int:
    from ..pipeline.doctor import diagnose, markdown

    rows = diagnose()
    print(markdown([r for r in rows if not (args.missing and r.ready)]), end="")
    return 0
