"""Stage: a strongly typed TensorRT engine from an (FP32, FP16 or INT8) ONNX (`siefpn-deploy build`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import UserError
from ..tensorrt.plan import BuildOptions
from .artifacts import Artifact


@dataclass(frozen=True)
class BuildJob:
    options: BuildOptions
    reuse: bool = True  # an engine built from the same ONNX with the same options is returned as it is


def build_detector_engine(job: BuildJob, *, log=print) -> Artifact:
    """Raises CannotRunHere (a UserError) where no TensorRT builder is installed."""
    from ..core.sidecar import read_meta
    from ..tensorrt.builder import load_backend
    from ..tensorrt.plan import build_engine, build_request, read_engine_meta

    load_backend()  # the one-line reason, before anything is read
    engine = job.options.engine_path()
    if job.reuse:
        try:
            sidecar = read_engine_meta(engine)
            if (sidecar["onnx_sha256"] == read_meta(job.options.onnx)["sha256"]
                    and sidecar["build"].get("request") == build_request(job.options)):
                log(f"[build] {engine} is already built from {job.options.onnx} with these options")
                return Artifact(path=engine, meta=sidecar, reused=True)
        except UserError:
            pass
    path, sidecar = build_engine(job.options, log=log)
    return Artifact(path=path, meta=sidecar)
