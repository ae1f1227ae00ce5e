"""`siefpn-deploy doctor`: one row per optional piece, each true to this machine, and a crash-free report."""

from __future__ import annotations

import onnxruntime
import torch

from siefpn_deploy.cli import main
from siefpn_deploy.core.errors import CannotRunHere
from siefpn_deploy.pipeline.doctor import Piece, diagnose, markdown
from siefpn_deploy.runtime.cpp import infer_binary
from siefpn_deploy.serve.python_env import READY, default_python_env


def rows_of(text: str) -> dict[str, list[str]]:
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    return {c[0]: c[1:] for c in cells}


def test_doctor_tells_the_truth_about_this_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # serve's stub environment: not built there yet
    assert main(["doctor"]) == 0
    rows = rows_of(capsys.readouterr().out)
    assert {"PyTorch", "CUDA", "ONNX Runtime", "OpenVINO", "ModelOpt", "TensorRT / TensorRT-RTX", "C++ runtime",
            "tritonserver", "serve's stub environment", "PyAV", "Polygraphy", "matplotlib"} <= set(rows)
    assert rows["CUDA"][0] == ("yes" if torch.cuda.is_available() else "no")
    for provider in onnxruntime.get_available_providers():
        assert provider.removesuffix("ExecutionProvider") in rows["ONNX Runtime"][1]
    try:
        built = infer_binary().is_file()
    except CannotRunHere:
        built = False
    assert rows["C++ runtime"][0] == ("yes" if built else "no")
    assert rows["C++ runtime"][2] == ("" if built else "siefpn-deploy cpp build")
    here, gives, fix = rows["serve's stub environment"]
    assert here == "no" and str(default_python_env()) in gives and fix.startswith("siefpn-deploy serve --prepare-env")
    # a finished environment (its READY marker is what serve checks) turns the row to yes
    default_python_env().mkdir(parents=True)
    (default_python_env() / READY).write_text("")
    assert main(["doctor", "--missing"]) == 0
    missing = rows_of(capsys.readouterr().out)
    assert "serve's stub environment" not in missing and all(r[0] == "no" for r in missing.values())


def test_a_check_that_raises_is_a_row_not_a_crash():
    def _broken() -> Piece:
        raise OSError("libnvinfer.so.10: cannot open shared object file\nmore")

    (row,) = diagnose((_broken,))
    assert not row.ready and row.name == "broken" and "libnvinfer.so.10" in row.gives and "\n" not in row.gives
    assert markdown([row]).count("\n") == 3
