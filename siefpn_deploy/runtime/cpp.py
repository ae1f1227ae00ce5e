"""The C++ runtime (engines/cpp: libsiefpn and siefpn-infer) from Python: building it, and running siefpn-infer.

    siefpn-deploy cpp build            # cmake + ninja from the [cpp] extra's wheels, LibTorch from the torch wheel

The build needs no root and no toolkit download: the system C++ compiler, the `cmake`, `ninja` and
`nlohmann-json` wheels, and the installed torch and torchvision (their headers, libraries and image
decoders). The sources live in the repository (engines/cpp), so this works from a clone with `pip install -e`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CannotRunHere, UserError
from ..core.timing import Latency

SOURCE_DIR = Path(__file__).resolve().parents[2] / "engines" / "cpp"
BINARY = "siefpn-infer"
TENSORRT_CHOICES = ("auto", "on", "off")


def default_build_dir() -> Path:
    return SOURCE_DIR / "build"


def _tool(name: str) -> str:
    """cmake or ninja: this environment's (the wheels' scripts beside the interpreter) before PATH's."""
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / name, Path(sys.executable).parent / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} not found: install the C++ build tools with `pip install -e .[cpp]`")
    return found


@dataclass(frozen=True)
class CppBuild:
    build_dir: Path
    tensorrt: str = "auto"  # auto: the TensorRT backend is compiled when NvInfer.h and libnvinfer are found
    tensorrt_root: Path | None = None
    jobs: int | None = None

    @property
    def binary(self) -> Path:
        return self.build_dir / BINARY

    def configure_args(self) -> list[str]:
        args = [_tool("cmake"), "-S", str(SOURCE_DIR), "-B", str(self.build_dir), "-G", "Ninja",
                f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", f"-DPython_EXECUTABLE={sys.executable}",
                f"-DSIEFPN_WITH_TENSORRT={self.tensorrt.upper()}"]
        if self.tensorrt_root is not None:
            args.append(f"-DTENSORRT_ROOT={self.tensorrt_root}")
        return args

    def run(self, *, log=print) -> Path:
        """Configure (every time: cheap, and it picks up a changed torch or contract) and build; the binary's path.
        A failure is a one-line UserError quoting the compiler's first error; the full log is kept."""
        if not (SOURCE_DIR / "CMakeLists.txt").is_file():
            raise UserError(f"the C++ sources are not at {SOURCE_DIR}: build from a clone of the repository "
                            "(pip install -e .)")
        self.build_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.build_dir / "build.log"
        build = [_tool("cmake"), "--build", str(self.build_dir)] + (["-j", str(self.jobs)] if self.jobs else [])
        with open(log_path, "w") as out:
            for step, cmd in (("configure", self.configure_args()), ("build", build)):
                log(f"[cpp] {step}: {' '.join(cmd[1:])}")
                out.write(f"$ {' '.join(cmd)}\n")
                out.flush()
                with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                    for line in proc.stdout:  # everything to the log; ninja's [n/total] steps as progress
                        out.write(line)
                        if step == "build" and line.startswith("[") and "/" in line.split("]")[0]:
                            log(f"[cpp] {line.rstrip()}")
                if proc.returncode != 0:
                    out.flush()
                    raise UserError(f"the C++ {step} failed ({_first_error(log_path)}); full log: {log_path}")
        log(f"[cpp] built {self.binary} and {self.build_dir / 'libsiefpn.so'}")
        return self.binary


def _first_error(log_path: Path) -> str:
    """The first error in a build log: CMake's message (the indented lines after "CMake Error at ..."), or the
    compiler's "file:line: error: ..." line; the commands echoed into the log are not read."""
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if not ln.startswith("$ ")]
    for i, line in enumerate(lines):
        if line.startswith("CMake Error"):
            message = []
            for following in lines[i + 1:]:
                if following.strip() == "" and message:
                    break
                message.append(following.strip())
            return " ".join(" ".join(message).split())[:300] or line
        if ": error:" in line or ": fatal error:" in line:
            return " ".join(line.split())[:300]
    return " ".join((lines[-1] if lines else "no output").split())[:300]


def infer_binary(build_dir: Path | None = None) -> Path:
    """The built siefpn-infer, or CannotRunHere saying how to build it."""
    binary = (build_dir or default_build_dir()) / BINARY
    if not binary.is_file():
        raise CannotRunHere(f"{binary} is not built: run `siefpn-deploy cpp build`")
    return binary


def run_infer_cli(args: list[str], *, build_dir: Path | None = None, timeout: float | None = None,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """siefpn-infer with `args` (and `env`, default this process's); its exit code, stdout and stderr (no exception
    on a non-zero exit)."""
    return subprocess.run([str(infer_binary(build_dir)), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def cpp_bench(artifact: Path, *, batches: list[int], size: int, warmup: int, iters: int, threads: int | None = None,
              source: Path | None = None, build_dir: Path | None = None) -> list[dict[str, Any]]:
    """siefpn-infer --bench: per batch, {"batch", "model": Latency, "e2e": Latency (seconds), "peak_rss_mib"}, timed
    in C++ (the peak is the C++ process's, up to that batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        args = ["--artifact", str(artifact), "--bench", "--batch", *map(str, batches), "--size", str(size),
                "--warmup", str(warmup), "--iters", str(iters), "--json", str(out)]
        args += ["--threads", str(threads)] if threads else []
        args += ["--source", str(source)] if source else []
        done = run_infer_cli(args, build_dir=build_dir)
        if done.returncode != 0:
            raise UserError(f"siefpn-infer --bench on {artifact} failed: {done.stderr.strip() or done.stdout.strip()}")
        rows = json.loads(out.read_text())
    return [{"batch": r["batch"], "model": Latency(tuple(v / 1e3 for v in r["model_ms"])),
             "e2e": Latency(tuple(v / 1e3 for v in r["e2e_ms"])), "peak_rss_mib": r["peak_rss_mib"]} for r in rows]
