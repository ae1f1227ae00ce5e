"""`quantize --precision int8 --target ort-cpu`: ONNX Runtime's static quantization in the layout its x86 integer
kernels fuse -- QDQ, uint8 activations, per-channel int8 weights, Conv and Gemm only (what carries the FLOPs: the
backbone, neck and heads, as for TensorRT, and the R-CNN box head's fully connected layers, 1000 RoIs each).

It runs in a child process (`python -m siefpn_deploy.quantize.ort_cpu`): ModelOpt, which makes the TensorRT
layout, patches ONNX Runtime's quantization classes process-wide once it has run
(modelopt/onnx/quantization/ort_patching.py), and ONNX Runtime's own quantize_static then fails in that process
("Quantization parameters are not specified for param ..."). The child reads the calibration tensors from the
cache files the parent wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError, one_line
from .calibration import BatchReader, CalibrationSet
from .precision import QDQ_OPS

ORT_CALIBRATION = {"max": "MinMax", "entropy": "Entropy"}  # --calib-method -> onnxruntime CalibrationMethod
# the fully connected layers worth int8: the R-CNN box head's (every RoI, 1000 of them); the neck's squeeze-
# excitation layers see one vector per image, where int8 would add error and save nothing
INT8_GEMMS = r"^/decoder/"


def quantize_for_cpu_in_subprocess(source: Path, target: Path, calib: CalibrationSet, *, method: str, batch: int,
                                   excludes: list[str]) -> None:
    job = {"source": str(source), "target": str(target), "tensors": str(calib.path), "sizes": str(calib.sizes_path),
           "method": method, "batch": batch, "excludes": excludes}
    # stderr passes through: the child's progress bar, and its one-line error
    done = subprocess.run([sys.executable, "-P", "-m", __name__, json.dumps(job)], check=False)
    if done.returncode != 0:
        raise UserError(f"ONNX Runtime's static quantization of {source.name} failed (exit {done.returncode}; "
                        "its message is above)")


def quantize_for_cpu(source: Path, target: Path, reader: BatchReader, *, method: str, excludes: list[str]) -> int:
    """quantize_static into `target`, then excluded nodes rewired to FP32 inputs; returns the inputs rewired. The
    exclusion patterns are resolved to node names here, as ONNX Runtime takes names."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = onnx.load(str(source)).graph.node
    names = [n.name for n in nodes if any(re.match(p, n.name) for p in excludes)
             or (n.op_type == "Gemm" and not re.match(INT8_GEMMS, n.name))]
    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm"],
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
    more (a head's last Conv then keeps its FP32 output). Returns the inputs rewired."""
    import onnx

    model = onnx.load(str(path))
    graphs = _graphs(model.graph)
    producer = {o: n for g in graphs for n in g.node for o in n.output}
    rewired = 0
    for graph in graphs:
        for node in graph.node:
            if node.op_type in QDQ_OPS or not any(re.match(p, node.name) for p in excludes):
                continue
            for i, name in enumerate(node.input):
                dq = producer.get(name)
                q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
                if q is not None and q.op_type == "QuantizeLinear":
                    node.input[i] = q.input[0]
                    rewired += 1
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
    job = json.loads(argv[0])
    reader = BatchReader(np.load(job["tensors"], mmap_mode="r"), np.load(job["sizes"]), batch=job["batch"],
                         desc=f"calibrate ({job['method']})")
    try:
        quantize_for_cpu(Path(job["source"]), Path(job["target"]), reader, method=job["method"],
                         excludes=job["excludes"])
    except (UserError, ValueError, RuntimeError) as e:  # ONNX Runtime's quantizer raises plain ValueErrors
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
