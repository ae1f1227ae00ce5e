"""The `siefpn-deploy` command line: one module per command, each thin over a stage of `siefpn_deploy.pipeline`
(or the library code it runs). A command module has HELP (one line), DESCRIPTION, EPILOG (examples),
`add_arguments(parser)` and `run(args) -> int`; the options several commands take are defined once in
`options.py`."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Any

from ..core.errors import UserError, one_line
from . import (
    bench,
    build,
    client,
    convert,
    cpp,
    data,
    debug,
    demo,
    doctor,
    export,
    infer,
    optimize,
    parity,
    quantize,
    serve,
    train,
    triton_repo,
)
from .options import CommandParser, add_command


def _add_group(subparsers: Any, command: ModuleType) -> None:
    """A command under a group word: `data synth`, `cpp build`."""
    group = subparsers.add_parser(command.GROUP, help=command.GROUP_HELP)
    actions = group.add_subparsers(dest=f"{command.GROUP}_command", required=True, metavar="ACTION")
    add_command(actions, command.NAME, command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siefpn-deploy",
        description="Train, evaluate and deploy Dual SIE-FPN detectors (RetinaNet, Faster R-CNN, Mask R-CNN).",
        epilog="`siefpn-deploy COMMAND --help` shows a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    _add_group(sub, data)
    add_command(sub, "train", train)
    add_command(sub, "convert", convert)
    add_command(sub, "export", export)
    add_command(sub, "quantize", quantize)
    add_command(sub, "build", build)
    add_command(sub, "parity", parity)
    add_command(sub, "infer", infer)
    add_command(sub, "bench", bench)
    add_command(sub, "optimize", optimize)
    add_command(sub, "triton-repo", triton_repo)
    add_command(sub, "serve", serve)
    add_command(sub, "client", client)
    _add_group(sub, cpp)
    _add_group(sub, debug)
    add_command(sub, "demo", demo)
    add_command(sub, "doctor", doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
