"""`serve`'s options (light to import: the CLI builds its --help from these defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError

# Dynamic batching: the longest a request waits for others to batch with, in microseconds (`serve` and the
# configs `triton-repo` writes).
MAX_QUEUE_DELAY_US = 2000
# Larger images are refused from their header, before decoding (`serve`, and `triton-repo --ensemble`'s
# preprocessing).
MAX_IMAGE_PIXELS = 40_000_000
# Larger encoded images are refused before decoding. 32 MiB holds any camera's JPEG at 40 M pixels; a PNG that
# needs more is a screenshot of noise or a bomb's padding.
MAX_IMAGE_BYTES = 32 * 2**20
# The header a client sends the key in when `serve` runs with an API key: PyTriton's (TRITON_ACCESS_HEADER),
# which it hands to tritonserver's --http-restricted-api and --grpc-restricted-protocol. Over gRPC, Triton
# reads it with its protocol prefix (what PyTriton's create_auth_headers sends).
API_KEY_HEADER = "triton-access-token"
GRPC_API_KEY_HEADER = f"triton-grpc-protocol-{API_KEY_HEADER}"
API_KEY_ENV = "SIEFPN_API_KEY"


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
    max_image_bytes: int = MAX_IMAGE_BYTES
    api_key: str | None = None  # inference (and, unless open_stats, metadata and statistics) needs it
    open_stats: bool = False  # with api_key: statistics, metadata, model config and metrics stay open
    exit_timeout_s: int = 30  # on stop, how long in-flight requests may take
    model_name: str | None = None  # default: from the artifact's file name
    python_env: Path | None = None  # the stub's environment (python_env.py); default in the user cache
    log_file: Path | None = None  # tritonserver's log; default a file in the temp folder


def read_api_key(path: Path | None, environ: dict[str, str]) -> str | None:
    """The key in `path` (its first line), else $SIEFPN_API_KEY, else None. A file, not a flag's value: a command
    line is visible to every user of the machine in `ps`."""
    if path is None:
        return environ.get(API_KEY_ENV) or None
    try:
        key = path.read_text().splitlines()[0].strip() if path.stat().st_size <= 4096 else ""
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise UserError(f"--api-key-file {path}: cannot read a key ({getattr(e, 'strerror', None) or 'empty'})") from None
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        raise UserError(f"--api-key-file {path}: the first line must be the key: printable, no spaces, under 4 KiB")
    return key
