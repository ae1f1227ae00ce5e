"""Per-layer INT8 sensitivity: the output error of each quantized layer when it alone is quantized.

`quantize --budget` ranks layers by this to choose which to keep out of INT8 (`parity/budget.py`). Why this
ranking and not the AP of each layer quantized alone: the AP ranking needs one quantization and one evaluation
per layer (113 convolutions in the RetinaNet R18 graph, a minute or more each on 2 CPU cores), while this
needs one pass of one graph over a few images. What it misses is where the error goes downstream (a head
convolution's error reaches the boxes more directly than an early backbone one's); the budget loop measures
the AP after each exclusion step, so a ranking that misjudges a layer costs a step, never a wrong verdict.

How it is measured, on ONNX Runtime alone: a probe graph is the FP32 graph plus, for every layer the INT8
graph quantized, a copy of that layer which reads the FP32 graph's own tensors through the INT8 graph's own
Q/DQ pairs (its activation scales and zero points, its quantized weights). Each copy's output is that layer
quantized alone; beside the FP32 layer's output it gives the noise-to-signal ratio
    NSR = sum((y_alone - y_fp32)^2) / sum(y_fp32^2)      (SQNR in dB = -10 log10 NSR),
summed over the images. The quantizers keep node and tensor names, which is what lets the two graphs meet;
a layer whose inputs cannot be traced back to FP32 tensors (inside a Loop body, say) is left out, and said so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.contract import graph_inputs
from ..core.ort import ort_session
from ..core.progress import progress_bar
from .precision import QDQ_OPS, dequantized_inputs
from .tensor_error import TensorError, sqnr_db

PREFIX = "sensitivity::"  # names of what the probe adds to the FP32 graph


@dataclass(frozen=True)
class LayerSensitivity:
    node: str  # the layer's node name, the same in the FP32 and the INT8 graph
    op: str
    nsr: float  # noise-to-signal ratio of its output when it alone is quantized

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.nsr)


@dataclass(frozen=True)
class _Probe:
    model: Any  # onnx.ModelProto
    layers: list[tuple[str, str, str, str]]  # (node, op, FP32 output, quantized-alone output)
    skipped: list[str]  # quantized layers that could not be traced back to FP32 tensors


def probe_graph(fp32: Any, int8: Any) -> _Probe:
    """The FP32 model plus a quantized-alone copy of each quantized layer of `int8` (see the module docstring)."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    graph = probe.graph
    known = ({i.name for i in graph.input} | {t.name for t in graph.initializer}
             | {o for n in graph.node for o in n.output})
    inferred = onnx.shape_inference.infer_shapes(fp32).graph
    floats = {v.name for v in [*inferred.value_info, *inferred.output]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    initializers = {t.name: t for t in int8.graph.initializer}
    producer = {o: n for n in int8.graph.node for o in n.output}
    copied: set[str] = set()

    def initializer(name: str) -> str:  # an INT8-graph initializer, copied under a prefixed name
        if not name:
            return name
        if name not in copied:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(initializers[name])
            tensor.name = PREFIX + name
            graph.initializer.append(tensor)
            copied.add(name)
        return PREFIX + name

    def node_copy(node: Any, inputs: list[str], outputs: list[str], name: str) -> Any:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:], new.output[:]
        new.input.extend(inputs)
        new.output.extend(outputs)
        new.name = name
        return new

    def dequantized(dq: Any, tag: str) -> str | None:
        """The probe's copy of what `dq` outputs, reading FP32 tensors; None when it cannot be traced."""
        if any(p and p not in initializers for p in dq.input[1:]):
            return None
        source, q = dq.input[0], producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":  # Q(x) of an FP32 tensor: an activation, or NNCF's weights
            if q.input[0] not in known or any(p and p not in initializers for p in q.input[1:]):
                return None
            graph.node.append(node_copy(q, [q.input[0], *map(initializer, q.input[1:])], [f"{tag}/q"], f"{tag}/q"))
            source = f"{tag}/q"
        elif source in initializers:  # weights stored quantized (ModelOpt, ONNX Runtime)
            source = initializer(source)
        else:
            return None
        graph.node.append(node_copy(dq, [source, *map(initializer, dq.input[1:])], [f"{tag}/dq"], f"{tag}/dq"))
        return f"{tag}/dq"

    layers, skipped = [], []
    for node in int8.graph.node:
        reads_dq = dequantized_inputs(node, producer)
        if node.op_type in QDQ_OPS or not any(reads_dq) or node.output[0] not in floats:
            continue  # not a layer INT8 changes the values of (a Shape reading a quantized tensor, say)
        tag = PREFIX + node.name
        inputs: list[str | None] = []
        for i, (name, from_dq) in enumerate(zip(node.input, reads_dq)):
            if from_dq:
                inputs.append(dequantized(producer[name], f"{tag}/in{i}"))
            elif not name or name in known:
                inputs.append(name)
            else:
                inputs.append(initializer(name) if name in initializers else None)
        if None in inputs or node.output[0] not in known:
            skipped.append(node.name)
            continue
        outputs = [f"{tag}/out{j}" for j in range(len(node.output))]
        graph.node.append(node_copy(node, inputs, outputs, tag))
        layers.append((node.name, node.op_type, node.output[0], outputs[0]))
    exposed = {o.name for o in graph.output}
    for _, _, fp32_out, alone_out in layers:
        for name in (fp32_out, alone_out):
            if name not in exposed:
                graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                exposed.add(name)
    return _Probe(model=probe, layers=layers, skipped=skipped)


def rank_layers(fp32_path: Path, int8_path: Path, images: np.ndarray, image_sizes: np.ndarray, *, log=print
                ) -> list[LayerSensitivity]:
    """Every quantized layer of `int8_path`, most sensitive (highest NSR) first, measured on `images`
    [N, 3, H, W] (with their sizes [N, 2]) one at a time."""
    import onnx

    probe = probe_graph(onnx.load(str(fp32_path)), onnx.load(str(int8_path)))
    if probe.skipped:
        log(f"[quantize] sensitivity: {len(probe.skipped)} quantized layers cannot be probed and are not ranked "
            f"(e.g. {probe.skipped[0]})")
    # no graph optimisation: the probe's Q/DQ pairs then dequantize in float, exactly what they describe
    session = ort_session(probe.model.SerializeToString(), optimize=False, source=f"the sensitivity probe of {int8_path}")
    names = [o.name for o in session.get_outputs()]
    errors = {layer: TensorError() for layer, *_ in probe.layers}
    for i in progress_bar(range(len(images)), desc="sensitivity", unit="img"):
        values = dict(zip(names, session.run(None, graph_inputs(images[i : i + 1], image_sizes[i : i + 1]))))
        for layer, _, fp32_out, alone_out in probe.layers:
            errors[layer].add(values[fp32_out], values[alone_out])
    ranked = [LayerSensitivity(layer, op, errors[layer].nsr) for layer, op, *_ in probe.layers]
    return sorted(ranked, key=lambda s: s.nsr, reverse=True)
