"""The two things `debug compare` runs: an ONNX model with every main-graph tensor marked as an output, or a
PyTorch checkpoint, which shows its graph outputs only (why: `compare.py`'s docstring)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..core.contract import graph_inputs
from ..core.errors import UserError
from ..core.ort import ort_session
from ..core.sidecar import read_meta
from ..quantize.precision import dequantized_inputs
from ..runtime.detector import CHECKPOINT_SUFFIXES, Detector


@dataclass(frozen=True)
class Producer:
    """The node that outputs a tensor."""

    position: int  # its index in the graph's node list (ONNX keeps nodes in topological order)
    node: str
    op: str
    inputs: tuple[str, ...]
    dequantized: bool  # it reads a DequantizeLinear's output: it computes on INT8 values


class Side(Protocol):
    path: Path
    meta: dict[str, Any]
    inputs: list[str]  # the graph's input names
    tensors: list[str]  # what can be compared, in graph order

    def producer(self, tensor: str) -> Producer | None: ...

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]: ...


class OnnxSide:
    """An ONNX model in ONNX Runtime on the CPU without graph optimisation: Q/DQ pairs compute in float exactly
    what they describe, and no tensor is fused away. With `every_tensor`, every main-graph tensor is an output
    (Polygraphy's ModifyOutputs with MARK_ALL); else its own outputs. It is also a `model.predictor.Backend`, so a
    Predictor prepares its inputs."""

    kind = "onnxruntime"
    on_gpu = False
    computes_in_torch = False

    def __init__(self, path: Path, *, every_tensor: bool) -> None:
        import onnx

        self.path, self.every_tensor = path, every_tensor
        self.meta = read_meta(path)  # a missing model or sidecar is a one-line error naming it
        self.model = onnx.load(str(path))
        graph = self.model.graph
        constants = {t.name for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in constants]
        producer = {o: n for n in graph.node for o in n.output}
        # what Polygraphy marks: every output of every node but a Constant's
        self._producers = {
            o: Producer(position=i, node=n.name, op=n.op_type, inputs=tuple(n.input),
                        dequantized=any(dequantized_inputs(n, producer)))
            for i, n in enumerate(graph.node) if n.op_type != "Constant" for o in n.output if o}
        self.tensors = list(self._producers) if every_tensor else [o.name for o in graph.output]

    def producer(self, tensor: str) -> Producer | None:
        return self._producers.get(tensor)

    @functools.cached_property
    def _runner(self) -> Any:
        from polygraphy import constants
        from polygraphy.backend.onnx import ModifyOutputs
        from polygraphy.backend.onnxrt import OnnxrtRunner

        marked = ModifyOutputs(self.model, outputs=constants.MARK_ALL)() if self.every_tensor else self.model
        session = ort_session(marked.SerializeToString(), optimize=False, source=str(self.path))
        return OnnxrtRunner(session, name=self.path.name)

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        runner = self._runner
        try:
            with runner:
                return dict(runner.infer(graph_inputs(images, image_sizes)))
        except Exception as e:  # noqa: BLE001 - ORT and Polygraphy raise their own types
            raise UserError(f"ONNX Runtime cannot run {self.path} on a {images.shape[2]}x{images.shape[3]} "
                            f"canvas: {str(e).strip().splitlines()[0]}") from None


class CheckpointSide:
    """A PyTorch checkpoint, eager on the CPU: its graph outputs only."""

    def __init__(self, path: Path, config: Path | None) -> None:
        self.path = path
        self.detector = Detector.from_checkpoint(path, config=config, device="cpu")
        self.meta = self.detector.meta
        self.inputs = [t.name for t in self.detector.contract.inputs()]
        self.tensors = list(self.detector.contract.output_names)

    def producer(self, tensor: str) -> Producer | None:
        return None

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        return self.detector.backend.run(images, image_sizes)


def open_sides(a: Path, b: Path, config: Path | None) -> tuple[Side, Side]:
    """Each an .onnx with its meta.json or a checkpoint (with `config`, or the config it stores); at least one
    an .onnx. Beside a checkpoint, an .onnx shows its graph outputs only."""
    checkpoints = [p.suffix in CHECKPOINT_SUFFIXES for p in (a, b)]
    for path, checkpoint in zip((a, b), checkpoints):
        if not (checkpoint or path.suffix == ".onnx"):
            raise UserError(f"debug compare takes .onnx models and {'/'.join(CHECKPOINT_SUFFIXES)} checkpoints, "
                            f"got {path}")
        if checkpoint and not path.is_file():
            raise UserError(f"checkpoint not found: {path}")
    if all(checkpoints):
        raise UserError(f"debug compare needs an ONNX model on at least one side, got {a} and {b}")
    a_side, b_side = (CheckpointSide(p, config) if checkpoint else OnnxSide(p, every_tensor=not any(checkpoints))
                      for p, checkpoint in zip((a, b), checkpoints))
    return a_side, b_side
