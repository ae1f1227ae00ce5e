"""Small rewrites of the exported ModelProto that make it friendlier to the tools downstream."""

from __future__ import annotations

import ast
from typing import Any


def name_nodes_by_module(model: Any) -> None:
    """node_Conv_12 -> /backbone/neck/gau/node_Conv_12, from the module path the exporter records on each
    node. Readable in Netron and in TensorRT's parser errors, and what the quantize stage's
    --exclude regexes match (e.g. the GAU attention: /backbone/neck/gau/)."""
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if not scopes:
            continue
        # cumulative module paths, then the aten op: ['', 'backbone', 'backbone.neck', ..., 'add_12']
        modules = [s for s in ast.literal_eval(scopes)[:-1] if s and not s.startswith("_")]
        node.name = f"/{modules[-1].replace('.', '/')}/{node.name}" if modules else f"/{node.name}"


def type_loop_bodies(model: Any) -> None:
    """Give every Loop an explicit initial condition and its body's carried values their element types.

    onnxscript leaves both implicit, which ONNX Runtime and TensorRT accept but graph rewriters do not:
    ModelOpt AutoCast turns an untyped condition into type 0 ("Invalid tensor data type 0")."""
    import onnx
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type != "Loop":
            continue
        if node.input[1] == "":
            name = f"{node.name}/cond_true"
            model.graph.initializer.append(onnx.helper.make_tensor(name, onnx.TensorProto.BOOL, [], [True]))
            node.input[1] = name
        body = next(a.g for a in node.attribute if a.name == "body")
        body.input[1].type.tensor_type.elem_type = onnx.TensorProto.BOOL
        carried = list(node.input[2:])
        for value, source in [*zip(body.input[2:], carried), *zip(body.output[1:], carried)]:
            if types.get(source):
                value.type.tensor_type.elem_type = types[source]
