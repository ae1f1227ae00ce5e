"""`serve`'s options (light to import: the CLI builds its --help from these defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Dynamic batching: the longest a request waits for others to batch with, in microseconds (`serve` and the
# configs `triton-repo` writes).
MAX_QUEUE_DELAY_US = 2000
# Larger images are refused from their header, before decoding (`serve`, and `triton-repo --ensemble`'s
# preprocessing).
MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"  # loopback unless told otherwise; 0.0.0.0 in a container
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8  # images per batch the dynamic batcher forms (Triton's max_batch_size)
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US
    instances: int = 1  # model instances: each one a stub process and a handler thread here
    max_image_pixels: int = MAX_IMAGE_PIXELS
    exit_timeout_s: int = 30  # on stop, how long in-flight requests may take
    model_name: str | None = None  # default: from the artifact's file name
    python_env: Path | None = None  # the stub's environment (python_env.py); default in the user cache
    log_file: Path | None = None  # tritonserver's log; default a file in the temp folder
