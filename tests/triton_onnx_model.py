"""A test's stand-in for Triton's ONNX Runtime backend, which nvidia-pytriton's tritonserver lacks: a Python-backend
model that runs its folder's 1/model.onnx with ONNX Runtime, so that a `triton-repo --ensemble` repository runs
whole (test_serve_server.py). Each request runs on its own; outputs are named as the graph names them."""

from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        model = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            names = [o.name for o in self.session.get_outputs()]
            outputs = self.session.run(names, feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(names, outputs)]))
        return responses
