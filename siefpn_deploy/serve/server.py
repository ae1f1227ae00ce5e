"""`siefpn-deploy serve`: a real Triton Inference Server on this machine, serving a `Detector` of any artifact.

    client --HTTP/gRPC--> tritonserver (dynamic batcher) --> Python-backend stub (PyTriton's proxy model)
           --ZeroMQ + shared memory--> `DetectorModel` in this process --> Detector.predict

No container: the nvidia-pytriton wheel ships `tritonserver` and its Python backend. Triton gives the HTTP
and gRPC endpoints, /v2/health/live and /v2/health/ready, Prometheus metrics on the metrics port, request
statistics and the dynamic batcher; this process gives the model. Whatever the artifact (.onnx, .pt2, .plan or
a .pth), the served model takes encoded images and returns detections in original-image pixels (protocol.py).

Stopping (`DetectorServer.__exit__`) stops tritonserver first, which refuses new requests and waits up to
`exit_timeout_s` for the ones in flight; their batches still run here, so they complete.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..core.errors import UserError
from ..data.image import decode_reduced, to_pixels
from ..runtime.detector import Detector
from . import protocol
from .launch import READY
from .options import API_KEY_HEADER, ServeOptions
from .processes import end_processes, process_tree
from .python_env import ensure_python_env
from .repository import model_name

# how long a process the server started may take to exit on SIGTERM, once tritonserver has stopped
STUB_GRACE_S = 5.0


class DetectorModel:
    """The callable Triton runs on each batch: requests (each `image` [n,1] bytes) -> one response per request."""

    def __init__(self, detector: Detector, *, max_image_pixels: int, max_image_bytes: int) -> None:
        self.detector = detector
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        # every row is decoded and checked before anything runs: a bad row is an error row, never a failed batch
        blobs = [np.asarray(request[protocol.IMAGE], dtype=object).reshape(-1) for request in requests]
        rows = [self._decode(blob, row) for request in blobs for row, blob in enumerate(request)]
        counts = [len(request) for request in blobs]
        # rows run together only when they get the same canvas alone: a row's detections never depend on the
        # requests Triton batched it with (on one padded canvas, the padding would change the features near
        # each image's border). Different sizes cost batching: each canvas size is a run of its own.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, row in enumerate(rows):
            if row.canvas is not None:
                groups.setdefault(row.canvas, []).append(i)
        found: dict[int, Any] = {}
        for members in groups.values():
            images, sizes = [rows[i].image for i in members], [rows[i].original_hw for i in members]
            # masks stay unpasted until `protocol.pack` encodes them, one at a time
            found.update(zip(members, self.detector.predict(images, batch_size=len(images), paste_masks=False,
                                                            original_hw=sizes)))
        contract = self.detector.contract
        packed = [protocol.pack(contract, found[i], row.original_hw) if i in found
                  else protocol.pack(contract, None, (0, 0), row.error) for i, row in enumerate(rows)]
        ends = np.cumsum(counts)
        return [protocol.stack(contract, packed[end - n : end]) for n, end in zip(counts, ends)]

    def _decode(self, blob: Any, row: int) -> Row:
        """The row decoded (a JPEG at a reduced size: `decode_reduced`) and its canvas, or its one-line refusal."""
        try:
            data = bytes(blob) if not isinstance(blob, bytes) else blob
            if len(data) > self.max_image_bytes:
                return Row(error=f"image in row {row} is {len(data)} bytes, more than the {self.max_image_bytes} "
                                 "allowed")
            decoded, original = decode_reduced(data, name=f"in row {row}", max_pixels=self.max_image_pixels,
                                               resized_to=self.detector.resized_size)
        except (UserError, TypeError) as e:
            return Row(error=str(e))
        image = to_pixels(decoded)  # uint8 [3,H,W]; the PIL image goes: a batch holds each picture once
        del decoded
        try:
            return Row(image, original, self.detector.canvas_of(*image.shape[-2:]))
        except UserError as e:
            return Row(error=f"image in row {row}: {e}")


@dataclass(frozen=True)
class Row:
    """One decoded row of a batch: its image (uint8 [3,H,W]), original (height, width) and canvas; or only
    `error`."""

    image: Any = None
    original_hw: tuple[int, int] = (0, 0)
    canvas: tuple[int, int] | None = None
    error: str = ""


def check_port_free(host: str, port: int, option: str) -> None:
    """A one-line error when something already listens on host:port (SO_REUSEADDR: a socket in TIME_WAIT from
    an earlier run does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise UserError(f"{option} {port}: {host}:{port} {why}") from None


def check_options(options: ServeOptions) -> None:
    """Sane numbers, and three different ports that are free (cheap: the CLI checks before it loads the artifact)."""
    o = options
    if min(o.max_batch, o.instances, o.max_image_pixels, o.max_image_bytes) < 1 or o.max_queue_delay_us < 0:
        raise UserError("--max-batch, --instances, --max-image-pixels and --max-image-bytes must be >= 1, "
                        "--max-queue-delay-us >= 0")
    if o.open_stats and not o.api_key:
        raise UserError("--open-stats opens statistics that only an --api-key-file closes; without a key they are open")
    ports = {"--http-port": options.http_port, "--grpc-port": options.grpc_port}
    if metrics_served(options):  # with a key and without --open-stats the metrics port is never opened
        ports["--metrics-port"] = options.metrics_port
    if len(set(ports.values())) != len(ports):
        raise UserError(f"--http-port, --grpc-port and --metrics-port must differ, got {list(ports.values())}")
    for option, port in ports.items():
        check_port_free(options.host, port, option)


def metrics_served(options: ServeOptions) -> bool:
    """Triton's metrics endpoint has no key check: beside an API key it is served only with --open-stats."""
    return not options.api_key or options.open_stats


PYTRITON = "nvidia-pytriton==0.7.0"


def require_pytriton() -> None:
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        raise UserError(f"serve needs tritonserver from the {PYTRITON} wheel: pip install -e \".[serve]\" && "
                        f"pip install --no-deps {PYTRITON} (its wheel pins numpy<2, which this project does not use)")


def tensor(field: protocol.Field) -> Any:
    from pytriton.model_config import Tensor

    return Tensor(name=field.name, dtype=field.dtype, shape=field.shape)


class DetectorServer:
    """tritonserver serving the detector `load` returns, for the life of a `with` block:

        with DetectorServer(lambda: Detector.from_path("export/demo.onnx"), ServeOptions(http_port=8000)) as server:
            server.wait(stop_event)      # until stop_event is set (the CLI sets it on SIGINT/SIGTERM)

    `load` is called once per instance (`--instances N`): each instance runs its own backend, since OpenVINO's
    infer request and TensorRT's execution context and stream must not run two batches at once. N instances
    hold N copies of the model.
    """

    def __init__(self, load: Callable[[], Detector], options: ServeOptions, *, log=print) -> None:
        self.options = options
        self.detectors = [load() for _ in range(options.instances)]
        self.detector = self.detectors[0]
        self.name = options.model_name or model_name(self.detector.path)
        self.log = log
        self.log_file = options.log_file or Path(tempfile.gettempdir()) / f"siefpn-serve-{self.name}.log"
        self._triton: Any = None
        self._before: dict[int, int] = {}

    def __enter__(self) -> Self:
        o = self.options
        check_options(o)
        require_pytriton()
        env = ensure_python_env(o.python_env, log=self.log)
        from pytriton.exceptions import PyTritonError
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
        from tritonclient.utils import InferenceServerException

        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        config = TritonConfig(http_address=o.host, http_port=o.http_port, grpc_address=o.host, grpc_port=o.grpc_port,
                              metrics_port=o.metrics_port, allow_metrics=metrics_served(o),
                              exit_timeout_secs=o.exit_timeout_s, log_file=self.log_file)
        triton = Triton(config=config, security_config=TritonSecurityConfig(
            access_token=o.api_key, restricted_endpoints=restricted_endpoints(o, DEFAULT_PROTECTED_ENDPOINTS)))
        models = [DetectorModel(d, max_image_pixels=o.max_image_pixels, max_image_bytes=o.max_image_bytes)
                  for d in self.detectors]
        triton.bind(model_name=self.name, infer_func=models,
                    inputs=[tensor(f) for f in protocol.inputs()],
                    outputs=[tensor(f) for f in protocol.outputs(self.detector.contract)],
                    config=ModelConfig(max_batch_size=o.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=o.max_queue_delay_us)))
        use_python_env(triton, env)
        self._triton = triton
        self._before = process_tree(os.getpid())  # what is not the server's: a library caller's own children
        try:
            triton.run()
        except (PyTritonError, InferenceServerException, RuntimeError, OSError) as e:  # a port taken meanwhile, a
            # model that failed to load (its stub's traceback is in the log)
            triton.stop()
            self._triton = None
            raise UserError(f"tritonserver did not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''});"
                            f" its log: {self.log_file}") from None
        host = "localhost" if o.host in ("0.0.0.0", "127.0.0.1") else o.host
        metrics = (f"metrics http://{host}:{o.metrics_port}/metrics" if config.allow_metrics
                   else "no metrics: --open-stats serves them beside an API key")
        key = f"; inference needs the API key (header {API_KEY_HEADER})" if o.api_key else ""
        self.log(f"[serve] {self.name} ({self.detector.kind}, {self.detector.path.name}) {READY}: "
                 f"http://{host}:{o.http_port} (gRPC {host}:{o.grpc_port}, {metrics});"
                 f" max batch {o.max_batch}, queue delay {o.max_queue_delay_us} us, {o.instances} instance(s){key}; "
                 f"Triton's log: {self.log_file}")
        return self

    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def wait(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Serve until `stop` is set; a UserError if tritonserver or the proxy dies first."""
        while not stop.wait(poll_s):
            if not self.alive():
                raise UserError(f"tritonserver stopped unexpectedly; its log: {self.log_file}")

    def __exit__(self, *exc: object) -> None:
        if self._triton is None:
            return
        self.log(f"[serve] stopping: in-flight requests finish first (up to {self.options.exit_timeout_s} s)")
        # grandchildren and deeper: tritonserver's stubs. Our children end with this process: PyTriton waits for
        # tritonserver, and multiprocessing's resource tracker (which ignores SIGTERM) unlinks the shared memory
        # left behind once this process exits; killing it first would leak those segments.
        ours = {pid: start for pid, start in process_tree(os.getpid(), min_depth=2).items() if pid not in self._before}
        try:
            self._triton.stop()
        finally:
            self._triton = None
            ended = end_processes(ours, grace_s=STUB_GRACE_S)
            if ended:
                self.log(f"[serve] ended {len(ended)} process(es) left after tritonserver stopped: {ended}")


def restricted_endpoints(options: ServeOptions, admin: list[str]) -> list[str]:
    """The Triton APIs that need the key (PyTriton's token, or the user's --api-key-file): `admin` (loading
    models, logging, tracing: PyTriton's own) always; with a user key, inference too, and metadata, model
    config and statistics unless --open-stats. Without a key, statistics stay open: they are read-only and
    show clients the batches executed (Triton itself leaves them open)."""
    if not options.api_key:
        return [e for e in admin if e != "statistics"]
    reading = [] if options.open_stats else ["metadata", "model-config", "statistics"]
    return sorted({*admin, "inference", *reading} - ({"statistics"} if options.open_stats else set()))


def use_python_env(triton: Any, env: Path) -> None:
    """Run the bound models' stubs in `env` (see python_env.py) through the Python backend's EXECUTION_ENV_PATH.

    PyTriton 0.7 has no public option for a model's backend parameters. Its Model builds its Triton config once
    and caches it (Model._get_triton_model_config); this fills that cache before `run()` and adds the parameter
    to it. nvidia-pytriton is pinned to 0.7.0, and tests/test_serve.py fails if this stops taking effect."""
    for model in triton._model_manager.models:
        model._get_triton_model_config().backend_parameters["EXECUTION_ENV_PATH"] = str(env)
