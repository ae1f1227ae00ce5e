"""Servers as child processes, for benchmarks and tests that need them the way a user runs them.

    with serve_process("export/demo.onnx", ServeOptions(host="127.0.0.1", http_port=p1, ...), log=Path("serve.out")) as proc:
        ...                                   # `siefpn-deploy serve` is ready; SIGTERM proc to stop it gracefully

    with tritonserver_process(Path("model_repository"), ServeOptions(...), work=Path("w"), log=Path("t.log")):
        ...                                   # nvidia-pytriton's tritonserver on a model repository

The bundled tritonserver has the Python backend and no other: it loads Python-backend models (the ensemble's
pre- and postprocessing steps), not ONNX Runtime or TensorRT ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import UserError
from .options import API_KEY_ENV, ServeOptions

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
            "--max-image-bytes", str(o.max_image_bytes), "--exit-timeout", str(o.exit_timeout_s)]
    argv += ["--open-stats"] if o.open_stats else []  # the key itself travels in the environment (serve_process)
    for flag, value in (("--model-name", o.model_name), ("--python-env", o.python_env), ("--log-file", o.log_file)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + list(extra)


@contextmanager
def serve_process(artifact: str | Path, options: ServeOptions, *, log: Path, extra: Sequence[str] = (),
                  ready_timeout_s: float = 300, environ: Mapping[str, str] = {}) -> Iterator[subprocess.Popen]:
    """Start `serve` (stdout and stderr to `log`, in a session of its own so that signals meant for the caller's
    process group never reach it; `environ` added to this process's environment), wait until it is ready, yield
    it; kill it on exit if it still runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        env = {**os.environ, **environ, **({API_KEY_ENV: options.api_key} if options.api_key else {})}
        proc = subprocess.Popen(serve_argv(artifact, options, extra), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
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


def bundled_tritonserver(work: Path) -> Path:
    """A runnable copy of nvidia-pytriton's tritonserver in work/tritonserver, its Python backend given this
    interpreter's stub (what PyTriton itself prepares per server)."""
    from pytriton.utils.distribution import get_root_module_path, get_stub_path

    dest = work / "tritonserver"
    if not (dest / "bin" / "tritonserver").is_file():
        shutil.copytree(get_root_module_path() / "tritonserver", dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("python_backend_stubs", "triton_python_backend_stub"))
        shutil.copy(get_stub_path(f"{sys.version_info.major}.{sys.version_info.minor}"),
                    dest / "backends" / "python" / "triton_python_backend_stub")
    return dest


@contextmanager
def tritonserver_process(repository: Path, options: ServeOptions, *, work: Path, log: Path,
                         ready_timeout_s: float = 300) -> Iterator[subprocess.Popen]:
    """tritonserver on `repository` (every model in it loaded) at options' host and ports; yields once it is ready."""
    import tritonclient.http
    from pytriton.utils.distribution import get_libs_path
    from tritonclient.utils import InferenceServerException

    server = bundled_tritonserver(work)
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(filter(None, [str(get_libs_path()), os.environ.get("LD_LIBRARY_PATH")])))
    argv = [str(server / "bin" / "tritonserver"), "--model-repository", str(repository),
            "--backend-directory", str(server / "backends"), "--http-address", options.host,
            "--http-port", str(options.http_port), "--grpc-address", options.host, "--grpc-port", str(options.grpc_port),
            "--metrics-port", str(options.metrics_port), "--exit-timeout-secs", str(options.exit_timeout_s),
            "--log-file", str(log)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = tritonclient.http.InferenceServerClient(f"{options.host}:{options.http_port}")
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                errors = [ln for ln in text.splitlines() if ln.startswith("E")]
                raise UserError(f"tritonserver did not become ready (exit code {proc.poll()}); {log}: "
                                f"{errors[-1][:400] if errors else text[-300:]}")
            try:
                if client.is_server_ready():
                    break
            except (OSError, InferenceServerException):  # not listening yet
                pass
            time.sleep(0.5)
        yield proc
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=options.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
