"""The Python environment Triton's Python-backend stub runs PyTriton's proxy model in.

`serve` runs a real `tritonserver` (from the nvidia-pytriton wheel). Requests reach this process through
the Python backend: a stub process per model instance, with an embedded interpreter, runs PyTriton's proxy
model, which hands each batch to us over ZeroMQ and shared memory. Two facts about nvidia-pytriton 0.7's
stub make it need an environment of its own :

- it was built for NumPy 1: under NumPy 2 every tensor it returns is empty ("output tensor shape does not
  match size of output"). This project runs on NumPy 2 (torch, ONNX Runtime), so the stub gets a venv of
  this interpreter holding numpy<2 and pyzmq, and nothing of ours;
- it links libpythonX.Y.so.1.0 by name, and where the system has another build of the same version
  (Debian's 3.11.2 beside a pyenv 3.11.7) the loader picks that one, whose C modules lack what this
  interpreter's standard library calls. The Python backend puts EXECUTION_ENV_PATH/lib first on the
  stub's library path, so this interpreter's libpython is linked there.

The environment is built once per interpreter, in a staging folder renamed into place, under the user
cache (or `--python-env DIR`), and given to Triton as the model's EXECUTION_ENV_PATH. Building it is the one
step of serving that needs a package index (numpy<2 is in no environment of ours), so the demo and
`serve --prepare-env` build it ahead; once it is there, `serve` starts with no index and no pip cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

from ..core.errors import UserError, one_line
from ..core.fileio import user_cache_dir

# what the proxy model imports besides the standard library (pytriton/proxy/*.py); numpy<2 is the point
STUB_REQUIREMENTS = ("numpy>=1.21,<2", "pyzmq>=23")
LAYOUT_VERSION = 1  # bump when the environment's contents change
READY = "READY"  # written last: a folder without it is not used


def default_python_env() -> Path:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}-v{LAYOUT_VERSION}"
    return user_cache_dir() / f"triton-python-env-{tag}"


def python_env_ready(path: Path | None = None) -> tuple[bool, Path]:
    """Whether the stub's environment at `path` (default: `default_python_env()`) is built, and where."""
    env = Path(path) if path is not None else default_python_env()
    return (env / READY).is_file(), env


def shared_libpython() -> Path | None:
    """This interpreter's libpythonX.Y.so.1.0, or None when it is linked statically."""
    name, libdir = sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LIBDIR")
    if not name or not libdir or not (Path(libdir) / name).is_file():
        return None
    return Path(libdir) / name


def activate_script(env: Path) -> str:
    # the stub's embedded interpreter finds its prefix by looking up `python3` on PATH, so the venv's bin
    # goes first; the Python backend sources this, then adds env/lib to LD_LIBRARY_PATH itself
    return f'export PATH="{env / "bin"}:$PATH"\nexport VIRTUAL_ENV="{env}"\n'


def ensure_python_env(path: Path | None = None, *, log=print) -> Path:
    """The stub's environment at `path` (default: `default_python_env()`), built first if it is not there.
    Building installs STUB_REQUIREMENTS with pip (from the package index, or pip's cache)."""
    ready, env = python_env_ready(path)
    if ready:
        return env
    if env.exists():
        raise UserError(f"--python-env {env} exists but is not a finished stub environment (no {READY}): "
                        "remove it to rebuild")
    env.parent.mkdir(parents=True, exist_ok=True)
    log(f"[serve] building the Triton Python-backend environment in {env} (once): {', '.join(STUB_REQUIREMENTS)}")
    stage = Path(tempfile.mkdtemp(prefix=f".{env.name}.", dir=env.parent))
    try:
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(stage)
        site = stage / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "--no-warn-conflicts", "--target", str(site), *STUB_REQUIREMENTS],
                             check=False, capture_output=True, text=True)
        if pip.returncode != 0:
            lines = [ln for ln in (pip.stderr or pip.stdout).splitlines() if ln.strip()]
            raise UserError(f"could not build the Triton Python-backend environment in {env}: pip install "
                            f"{' '.join(STUB_REQUIREMENTS)} failed: {one_line(Exception(lines[-1] if lines else ''))} "
                            "(it needs a package index or a wheel folder once: run `siefpn-deploy serve "
                            "--prepare-env` once where one is reachable, e.g. when the image is built)")
        libpython = shared_libpython()
        if libpython is not None:
            (stage / "lib" / libpython.name).symlink_to(libpython)
        (stage / "bin" / "activate").write_text(activate_script(env))
        (stage / READY).write_text(f"{sys.version}\n{' '.join(STUB_REQUIREMENTS)}\n")
        try:
            os.replace(stage, env)  # the venv's files name `env`, never the staging folder
        except OSError:
            if not python_env_ready(env)[0]:  # not another process that built it at the same time
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return env
