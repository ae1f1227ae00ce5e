"""FP16's range check, streamed: which nodes see values FP16 cannot hold safely.

AutoCast's own reference run keeps every activation of every calibration image in memory before it
aggregates them (a Mask R-CNN at 640x640 ran a 24 GiB machine out of memory with 16 images). This
runs the FP32 model on one image at a time with every float tensor exposed, keeps only each
tensor's largest magnitude, and names the nodes whose inputs or outputs exceed the limit, which
AutoCast then keeps in FP32, as its own rule would.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..core.contract import graph_inputs
from ..core.ort import ort_session
from ..core.progress import progress_bar

# AutoCast's default: |x| above 512 stays FP32 (FP16 holds 65504, but products and sums of such
# values overflow, and its resolution at 512 is already 0.5)
DATA_MAX = 512.0


def fp16_unsafe_nodes(onnx_path: Path, images: np.ndarray, image_sizes: np.ndarray, *, limit: float = DATA_MAX
                      ) -> list[str]:
    """Names of the main graph's nodes with an input or output above `limit` on any image [N,3,H,W] (with its
    size [N,2])."""
    import onnx

    model = onnx.load(str(onnx_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    exposed = sorted(floats - {o.name for o in model.graph.output})
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in exposed)
    session = ort_session(model.SerializeToString(), optimize=False, source=str(onnx_path))  # keep every tensor
    names = [o.name for o in session.get_outputs()]
    largest = dict.fromkeys(names, 0.0)
    for i in progress_bar(range(len(images)), desc="fp16 range check", unit="img"):
        for name, value in zip(names, session.run(None, graph_inputs(images[i : i + 1], image_sizes[i : i + 1]))):
            if value.dtype == np.float32 and value.size:
                largest[name] = max(largest[name], float(np.abs(value).max()))
    hot = {name for name, value in largest.items() if value > limit}
    return [n.name for n in model.graph.node if hot & {*n.input, *n.output}]


def exact(names: list[str]) -> list[str]:
    """Node names as the anchored regexes ModelOpt's nodes_to_exclude takes."""
    return [re.escape(name) + r"\Z" for name in names]
