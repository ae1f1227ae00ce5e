"""`quantize --precision int8 --target ort-cpu`: ONNX Runtime's static quantization in the layout its x86 integer
kernels fuse -- QDQ, uint8 activations, per-channel int8 weights, Conv and Gemm only (what carries the FLOPs: the
backbone, neck and heads, as for TensorRT, and the R-CNN box head's fully connected layers, 1000 RoIs each).

It runs in a child process (child.py), as ModelOpt patches ONNX Runtime's quantization classes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .calibration import BatchReader, CalibrationSet
from .child import child_main, run_child
from .precision import QDQ_OPS

ORT_CALIBRATION = {"max": "MinMax", "entropy": "Entropy"}  # --calib-method -> onnxruntime CalibrationMethod
# the fully connected layers worth int8: the R-CNN box head's (every RoI, 1000 of them); the neck's squeeze-
# excitation layers see one vector per image, where int8 would add error and save nothing
INT8_GEMMS = r"^/decoder/"
QUANTIZED_OPS = ("Conv", "Gemm")  # op_types_to_quantize: these quantize their own outputs


def quantize_for_cpu_in_subprocess(source: Path, target: Path, calib: CalibrationSet, *, method: str, batch: int,
                                   excludes: list[str]) -> None:
    run_child(__name__, "ONNX Runtime's static quantization", source, target, calib, method=method, batch=batch,
              excludes=excludes)


def quantize_for_cpu(source: Path, target: Path, reader: BatchReader, *, method: str, excludes: list[str]) -> int:
    """quantize_static into `target`, then excluded nodes rewired to FP32 inputs; returns the inputs rewired. The
    exclusion patterns are resolved to node names here, as ONNX Runtime takes names."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = onnx.load(str(source)).graph.node
    names = [n.name for n in nodes if any(re.match(p, n.name) for p in excludes)
             or (n.op_type == "Gemm" and not re.match(INT8_GEMMS, n.name))]
    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                    nodes_to_exclude=names, calibrate_method=getattr(CalibrationMethod, ORT_CALIBRATION[method]),
                    # a Q/DQ pair per quantized consumer: an excluded node reading the same input keeps it FP32
                    extra_options={"DedicatedQDQPair": True})
    return fp32_inputs_for_excluded(target, excludes)


def _graphs(graph: Any) -> list[Any]:
    """A graph and every subgraph in it (Loop and If bodies), depth first."""
    import onnx

    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found += _graphs(attr.g)
    return found


def fp32_inputs_for_excluded(path: Path, excludes: list[str]) -> int:
    """ONNX Runtime's QDQ format also quantizes a Conv's output (which is what lets its CPU kernels fuse
    DQ -> Conv -> Q into one integer convolution), and every consumer of that tensor then reads the
    dequantized copy, excluded ones too: RoIAlign reading a pyramid level, box decoding reading a head's
    deltas. Point each excluded node back at the FP32 tensor, and drop the Q/DQ pairs nothing reads any
    more (a head's last Conv then keeps its FP32 output). Returns the inputs rewired.

    An input may itself come from an op that reads a quantized tensor (conv1 -> Q/DQ -> Relu -> conv2, where
    an excluded conv2 would still see conv1's quantized output through the Relu; or the GAU attention's
    Reshape of a quantized projection): such ops are rewired too, back to the nearest quantized layers'
    outputs, so an excluded node reads exactly what the FP32 model computes from those outputs."""
    import onnx

    model = onnx.load(str(path))
    graphs = _graphs(model.graph)
    producer = {o: n for g in graphs for n in g.node for o in n.output}
    rewired = 0
    pending = [n for g in graphs for n in g.node
               if n.op_type not in QDQ_OPS and any(re.match(p, n.name) for p in excludes)]
    done: set[int] = set()
    while pending:
        node = pending.pop()
        if id(node) in done:
            continue
        done.add(id(node))
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
            source = producer.get(node.input[i])
            if source is not None and source.op_type not in (*QDQ_OPS, *QUANTIZED_OPS):
                pending.append(source)  # an op that may itself read a quantized tensor
    while True:  # Q/DQ nodes whose outputs nobody reads, until none is left
        read = {i for g in graphs for n in g.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [(g, n) for g in graphs for n in g.node if n.op_type in QDQ_OPS and not set(n.output) & read]
        if not dead:
            break
        for graph, node in dead:
            graph.node.remove(node)
    read = {i for g in graphs for n in g.node for i in n.input}
    unused = [t for t in model.graph.initializer if t.name not in read]  # the dropped pairs' scales, zero points
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    onnx.save(model, str(path))
    return rewired


def main(argv: list[str]) -> int:
    return child_main(argv, lambda job, reader: quantize_for_cpu(Path(job["source"]), Path(job["target"]), reader,
                                                                 method=job["method"], excludes=job["excludes"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
