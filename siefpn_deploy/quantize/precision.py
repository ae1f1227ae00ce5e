"""What stays in FP32: node-name regexes over the exported graph's module paths (see
`export.exporter.name_nodes_by_module`), matched with `re.match` as ModelOpt does.

The heads and the backbone/neck convolutions go to FP16 or INT8. These stay in full precision:
- the GAU attention logits and softmax: a dot product over C/2 channels overflows FP16 on real
  activations, and a softmax input quantized to 8 bits loses the attention's peaks;
- class-score sigmoids and softmaxes;
- everything in the decoder that is not a head: box decoding, anchors, top-k, RoIAlign sampling,
  the NMS and its inputs.
"""

from __future__ import annotations

from typing import Any

GAU_ATTENTION = r"(?i)^/backbone/neck/gau/.*(matmul|softmax|scaled_dot_product)"
SCORES = r"(?i)^/decoder/.*(sigmoid|softmax)"
DECODING = r"^/decoder/(?!.*(head|predictor)/)"  # the decoder, minus its head modules

DEFAULT_EXCLUDES = {
    "gau_attention": GAU_ATTENTION,
    "class_scores": SCORES,
    "decoding_roialign_nms": DECODING,
}

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")  # what an INT8 model's quantization is made of


def dequantized_inputs(node: Any, producer: dict[str, Any]) -> list[bool]:
    """For each input of an ONNX node: whether a DequantizeLinear makes it, i.e. whether the node computes on
    INT8 values there. `producer` maps each tensor of the graph to the node that outputs it."""
    return [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input]
