"""A client for `siefpn-deploy serve` (tritonclient, HTTP or gRPC), a bounded load generator and the
`siefpn-deploy client` command.

    with DetectorClient("localhost:8000") as client:                  # grpc=True for localhost:8001
        dets = client.detect([Path("a.jpg").read_bytes()])            # list[Detections], original pixels

Images travel encoded (the file's bytes); detections come back as `Detections`, the type `Detector.predict`
returns in-process, so code written against one runs against the other. A video source's frames travel as PNG
(`run_client_video`).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..core.errors import UserError, one_line
from ..core.fileio import write_json
from ..core.progress import progress_bar
from ..core.timing import Latency
from ..data.video import READ_TIMEOUT_S, Frame, Video, VideoInput, check_frame_options
from ..evaluation.coco import coco_results
from ..model.predictor import Detections
from ..runtime.infer import image_files, image_ids_by_name
from ..runtime.video import Progress, frame_records, kept_on_failure, run_frames
from . import protocol
from .options import API_KEY_HEADER, GRPC_API_KEY_HEADER
from .protocol import RequestError


def _triton_module(grpc: bool) -> Any:
    if grpc:
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def _reason(e: Exception) -> str:
    """A tritonclient error as one line (the server's message, without PyTriton's traceback)."""
    text = str(e.message() if hasattr(e, "message") and callable(e.message) else e)
    text = text.split("\nAt:\n")[0]  # the Python backend appends the stub's frames after "At:"
    # a traceback's own lines are indented or start with "Traceback"; its last unindented line is the error
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln[0].isspace() and not ln.startswith("Traceback")]
    return one_line(Exception(lines[-1] if lines else text))


class DetectorClient:
    def __init__(self, url: str = "localhost:8000", *, grpc: bool = False, model: str | None = None,
                 timeout_s: float = 120.0, api_key: str | None = None) -> None:
        self.url, self.grpc = url, grpc
        # `serve --api-key-file`
        self.headers = {GRPC_API_KEY_HEADER if grpc else API_KEY_HEADER: api_key} if api_key else None
        self._module = _triton_module(grpc)
        from tritonclient.utils import InferenceServerException

        self._error = InferenceServerException
        kwargs = {} if grpc else {"connection_timeout": timeout_s, "network_timeout": timeout_s}
        try:
            self._client = self._module.InferenceServerClient(url, **kwargs)
            live = self._client.is_server_live()
        except (InferenceServerException, OSError, ValueError) as e:  # refused, unknown host, bad URL
            raise UserError(f"--url {url}: cannot reach a Triton server ({_reason(e)})") from None
        if not live:
            raise UserError(f"--url {url}: the Triton server is not live")
        self.model = model or self._only_model()
        meta = self._call(self._client.get_model_metadata, self.model)
        outputs = meta["outputs"] if isinstance(meta, dict) else [{"name": o.name} for o in meta.outputs]
        self.output_names = [o["name"] for o in outputs]
        self.timeout_s = timeout_s

    def _call(self, fn, *args, **kwargs) -> Any:
        kwargs["headers"] = self.headers
        try:
            return fn(*args, **kwargs) if not self.grpc or fn.__name__ == "infer" else fn(*args, as_json=True, **kwargs)
        except self._error as e:
            raise RequestError(f"{self.url}: {_reason(e)}") from None

    def _only_model(self) -> str:
        # the statistics of every loaded model (the repository index is an API `serve` keeps closed)
        models = sorted({m["name"] for m in self._call(self._client.get_inference_statistics).get("model_stats", [])})
        if len(models) != 1:
            raise UserError(f"{self.url} serves {len(models)} models ({', '.join(models) or 'none'}): "
                            "name one with --model")
        return models[0]

    def infer_raw(self, inputs: dict[str, np.ndarray], datatypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """One request of any inputs (for tests of what the server refuses): {name: array} -> every output."""
        datatypes = datatypes or {}
        tensors = []
        for name, array in inputs.items():
            dtype = datatypes.get(name) or ("BYTES" if array.dtype == object else None)
            if dtype is None:
                from tritonclient.utils import np_to_triton_dtype

                dtype = np_to_triton_dtype(array.dtype)
            t = self._module.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            tensors.append(t)
        outputs = [self._module.InferRequestedOutput(n) for n in self.output_names]
        kwargs = {"client_timeout": self.timeout_s} if self.grpc else {}
        result = self._call(self._client.infer, self.model, tensors, outputs=outputs, **kwargs)
        return {n: result.as_numpy(n) for n in self.output_names}

    def detect(self, images: Sequence[bytes], *, sources: Sequence[str] | None = None) -> list[Detections]:
        """Encoded images (one request, one row each) -> their detections; a RequestError names the image the
        server refused and why."""
        if not images:
            return []
        out = self.infer_raw({protocol.IMAGE: np.array([[bytes(b)] for b in images], dtype=object)})
        names = list(sources) if sources is not None else [f"image {i}" for i in range(len(images))]
        return [protocol.unpack(out, b, source=names[b]) for b in range(len(images))]

    def batch_stats(self) -> dict[int, int]:
        """Triton's statistics for the model: {executed batch size: executions}."""
        stats = self._call(self._client.get_inference_statistics, self.model)
        model = stats["model_stats"][0]
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model.get("batch_stats", [])}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadClients:
    """One DetectorClient per worker thread (tritonclient's HTTP client is not thread-safe), all closed together."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url, self.kwargs = url, kwargs
        self._local = threading.local()
        self._all: list[DetectorClient] = []
        self._lock = threading.Lock()

    def get(self) -> DetectorClient:
        if not hasattr(self._local, "client"):
            self._local.client = DetectorClient(self.url, **self.kwargs)
            with self._lock:
                self._all.append(self._local.client)
        return self._local.client

    def close(self) -> None:
        for client in self._all:
            client.close()


@dataclass
class LoadResult:
    concurrency: int
    seconds: list[float] = field(default_factory=list)  # of each answered request
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def throughput(self) -> float:
        """Images per second over the whole run (one image per request)."""
        return len(self.seconds) / self.wall_s if self.wall_s else 0.0

    def p_ms(self, q: float) -> float:
        return Latency(tuple(self.seconds)).percentile(q) * 1e3 if self.seconds else float("nan")


def run_load(url: str, payloads: Sequence[bytes], *, requests: int, concurrency: int, grpc: bool = False,
             model: str | None = None, timeout_s: float = 120.0, api_key: str | None = None) -> LoadResult:
    """`requests` requests of one image each (payloads in turn), `concurrency` at a time, each thread with its
    own connection; it ends when all have answered (each within `timeout_s`). Errors are counted, not raised."""
    clients = ThreadClients(url, grpc=grpc, model=model, timeout_s=timeout_s, api_key=api_key)

    def one(i: int) -> tuple[float, str]:
        client = clients.get()
        start = time.perf_counter()
        try:
            client.detect([payloads[i % len(payloads)]])
        except UserError as e:
            return time.perf_counter() - start, str(e)
        return time.perf_counter() - start, ""

    result = LoadResult(concurrency=concurrency)
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in as_completed([pool.submit(one, i) for i in range(requests)]):
                seconds, error = future.result()
                if error:
                    result.errors.append(error)
                else:
                    result.seconds.append(seconds)
    finally:
        result.wall_s = time.perf_counter() - start
        clients.close()
    return result


def run_client(url: str, source: Path, *, grpc: bool = False, model: str | None = None,
               annotations: Path | None = None, save_json: Path | None = None, concurrency: int = 1,
               api_key: str | None = None, log=print) -> list[dict]:
    """`siefpn-deploy client`: every image under `source` through the server, `concurrency` requests at a time
    -> COCO results (as `siefpn-deploy infer --save-json` writes them), and latency percentiles."""
    if concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {concurrency}")
    files = image_files(source)
    image_ids = image_ids_by_name(annotations, files, source) if annotations is not None else None
    with DetectorClient(url, grpc=grpc, model=model, api_key=api_key) as first:  # a one-line error now if the
        model = first.model  # server is not there
    clients = ThreadClients(url, grpc=grpc, model=model, api_key=api_key)

    def one(path: Path) -> tuple[Path, Detections, float]:
        client = clients.get()
        start = time.perf_counter()
        dets = client.detect([path.read_bytes()], sources=[str(path)])[0]
        return path, dets, time.perf_counter() - start

    found: dict[Path, Detections] = {}
    seconds: list[float] = []
    start = time.perf_counter()
    try:
        with progress_bar(total=len(files), desc=f"client {model}", unit="img") as bar, \
                ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in as_completed([pool.submit(one, p) for p in files]):
                path, dets, took = future.result()
                found[path] = dets
                seconds.append(took)
                bar.update(1)
    finally:
        clients.close()
    wall = time.perf_counter() - start
    latency = Latency(tuple(seconds))
    records: list[dict] = []
    for path in files:  # in file order, whatever order the answers came in
        dets = found[path]
        image_id = image_ids[path] if image_ids is not None else 0
        for r in coco_results(image_id, dets.boxes, dets.scores, dets.category_ids, dets.masks):
            records.append(r if image_ids is not None else {"file_name": str(path), **{k: v for k, v in r.items()
                                                                                        if k != "image_id"}})
    if save_json is not None:
        write_json(save_json, records, indent=None)
    log(f"[client] {len(records)} detections in {len(files)} images from {url} ({model}, "
        f"{'gRPC' if grpc else 'HTTP'}, concurrency {concurrency}): {len(files) / wall:.1f} img/s, latency p50 "
        f"{latency.percentile(50) * 1e3:.1f} ms, p99 {latency.percentile(99) * 1e3:.1f} ms"
        + (f"; JSON: {save_json}" if save_json else ""))
    return records


def png_bytes(image: np.ndarray) -> bytes:
    """A decoded frame as the server takes it: PNG, lossless, so that the server runs the very pixels `infer` runs
    (JPEG would add its loss on top of the video codec's, and the server's reduced JPEG decoding); zlib's fastest
    level, as the bytes only cross to the server."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _send_frames(video: Video, clients: ThreadClients, pool: ThreadPoolExecutor, done: Progress,
                 seconds: list[float], *, stride: int, max_frames: int | None, concurrency: int) -> None:
    """One source's frames to the server, `concurrency` at once (a request each), their records in frame order."""
    source = video.source

    def one(frame: Frame) -> tuple[Detections, float]:
        data = png_bytes(frame.image)
        start = time.perf_counter()
        dets = clients.get().detect([data], sources=[f"{source.name} frame {frame.index}"])[0]
        return dets, time.perf_counter() - start

    def handle(frames: list[Frame]) -> None:
        for frame, (dets, took) in zip(frames, pool.map(one, frames)):
            done.records += frame_records(source, frame, dets)
            done.frames += 1
            seconds.append(took)

    try:
        run_frames(video, stride=stride, max_frames=max_frames, step=concurrency, desc=f"client {source.stem}",
                   handle=handle)
    finally:
        done.warnings += video.warnings


def run_client_video(url: str, inputs: list[VideoInput], *, grpc: bool = False, model: str | None = None,
                     save_json: Path | None = None, concurrency: int = 1, api_key: str | None = None, stride: int = 1,
                     max_frames: int | None = None, read_timeout_s: float = READ_TIMEOUT_S,
                     options: dict[str, str] | None = None, log=print) -> list[dict]:
    """`siefpn-deploy client` on video sources (`data.video.video_inputs`): each frame run (--stride,
    --max-frames) goes to the server as a PNG, `concurrency` frames in flight at a time -> the JSON records
    `siefpn-deploy infer` writes for the same video (`runtime.video.frame_records`), and latency percentiles. A
    source that fails part way, or Ctrl-C, keeps the records so far (`runtime.video.kept_on_failure`)."""
    if concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {concurrency}")
    check_frame_options(stride, max_frames, read_timeout_s)
    with DetectorClient(url, grpc=grpc, model=model, api_key=api_key) as first:  # a one-line error now if the
        model = first.model  # server is not there
    clients = ThreadClients(url, grpc=grpc, model=model, api_key=api_key)

    done = Progress()
    seconds: list[float] = []
    start = time.perf_counter()
    try:
        with kept_on_failure(done, save_json, "client", log), ThreadPoolExecutor(max_workers=concurrency) as pool:
            for source in inputs:
                with Video(source, read_timeout_s=read_timeout_s, options=options) as video:
                    _send_frames(video, clients, pool, done, seconds, stride=stride, max_frames=max_frames,
                                 concurrency=concurrency)
    finally:
        clients.close()
    wall = time.perf_counter() - start
    latency = Latency(tuple(seconds))
    log(f"[client] {len(done.records)} detections in {done.frames} frames of {len(inputs)} video(s) from {url} "
        f"({model}, {'gRPC' if grpc else 'HTTP'}, concurrency {concurrency}): {done.frames / wall:.1f} frames/s, "
        f"latency p50 {latency.percentile(50) * 1e3:.1f} ms, p99 {latency.percentile(99) * 1e3:.1f} ms"
        + (f"; JSON: {save_json}" if save_json else ""))
    return done.records
