"""`siefpn-deploy serve` as a child process, for benchmarks and tests that need a server the way a user runs it.

    with serve_process("export/demo.onnx", ServeOptions(host="127.0.0.1", http_port=p1, ...), log=Path("serve.out")) as proc:
        ...                                   # the server is ready; SIGTERM proc to stop it gracefully
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import UserError
from .options import ServeOptions

READY = "is ready"  # what DetectorServer prints once tritonserver answers


def free_loopback_ports(n: int) -> list[int]:
    """n ports nothing listens on at 127.0.0.1 now (the kernel's picks; free until someone binds them)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def serve_argv(artifact: str | Path, options: ServeOptions, extra: Sequence[str] = ()) -> list[str]:
    o = options
    # -P: the working folder is not put on sys.path, so a checkout there cannot shadow the installed package
    argv = [sys.executable, "-P", "-m", "siefpn_deploy", "serve", "--artifact", str(artifact), "--host", o.host,
            "--http-port", str(o.http_port), "--grpc-port", str(o.grpc_port), "--metrics-port", str(o.metrics_port),
            "--max-batch", str(o.max_batch), "--max-queue-delay-us", str(o.max_queue_delay_us),
            "--instances", str(o.instances), "--max-image-pixels", str(o.max_image_pixels),
            "--exit-timeout", str(o.exit_timeout_s)]
    for flag, value in (("--model-name", o.model_name), ("--python-env", o.python_env), ("--log-file", o.log_file)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + list(extra)


@contextmanager
def serve_process(artifact: str | Path, options: ServeOptions, *, log: Path, extra: Sequence[str] = (),
                  ready_timeout_s: float = 300) -> Iterator[subprocess.Popen]:
    """Start `serve` (stdout and stderr to `log`, in a session of its own so that signals meant for the caller's
    process group never reach it), wait until it is ready, yield it; kill it on exit if it still runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(serve_argv(artifact, options, extra), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while READY not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-2000:]
                raise UserError(f"serve did not become ready (exit code {proc.poll()}); {log}: ...{tail[-300:]}")
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
