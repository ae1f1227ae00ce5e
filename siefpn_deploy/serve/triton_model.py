"""The Python-backend model of the ensemble's two steps: `triton-repo --ensemble` copies this file to
NAME_preprocess/1/model.py and NAME_postprocess/1/model.py. It runs inside Triton's Python backend, where
`triton_python_backend_utils` exists; the step (config parameter `step`) and the artifact's meta.json (beside
config.pbtxt) say what it does. Triton's Python environment needs siefpn-deploy installed (see the repository's
README.md); the work itself is in siefpn_deploy/serve/ensemble.py.

Each request gets its own response: a request whose image does not decode gets an error, the rest their results.
"""

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from siefpn_deploy.serve.ensemble import PostprocessStep, PreprocessStep
from siefpn_deploy.serve.protocol import IMAGE, ORIGINAL_SIZE


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"])
        meta = json.loads((folder / "meta.json").read_text())
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.step_name = params["step"]
        if self.step_name == "preprocess":
            max_pixels = int(params["max_image_pixels"]) if params.get("max_image_pixels") else None
            self.step = PreprocessStep(meta, source=str(folder / "meta.json"), max_image_pixels=max_pixels)
            self.inputs = [IMAGE]
        else:
            self.step = PostprocessStep(meta, source=str(folder / "meta.json"))
            self.inputs = [*self.step.graph_outputs, "image_sizes", ORIGINAL_SIZE]
        # this stub process is a step of its own: the model step computes elsewhere, so PyTorch runs on one thread
        # here and its OpenMP workers do not spin on the cores that step uses (`Predictor.torch_threads`)
        if self.step.predictor.torch_threads:
            torch.set_num_threads(self.step.predictor.torch_threads)

    def execute(self, requests):
        responses = []
        for request in requests:
            arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            try:
                out = self.step(arrays[IMAGE]) if self.step_name == "preprocess" else self.step(arrays)
            except Exception as e:  # noqa: BLE001 - any failure is this request's error response, never the server's
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.step_name}: {e}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in out.items()]))
        return responses
