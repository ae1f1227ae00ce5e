"""Stage: FP16 or calibrated INT8 from an FP32 export, optionally held to an AP budget (`siefpn-deploy quantize`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.sidecar import read_meta
from ..core.staging import remove_stale
from ..quantize.options import BudgetOptions, QuantizeOptions
from .artifacts import Artifact
from .reuse import current_meta


@dataclass(frozen=True)
class QuantizeJob:
    options: QuantizeOptions
    budget: BudgetOptions | None = None  # INT8 within an AP budget: the most sensitive layers kept in FP32
    reuse: bool = True  # an existing model quantized from the same export with the same options is returned


def quantize_detector(job: QuantizeJob, *, log=print) -> Artifact:
    from ..quantize.quantizer import quantize_model, quantize_request

    options = job.options
    target = options.output_path()
    # first, whatever a killed quantize left beside the output: also when the model on disk is reused
    remove_stale(target.parent, log=log, stage="quantize")
    if job.budget is None and job.reuse:
        source_sha = read_meta(options.onnx)["sha256"]
        meta = current_meta(target, {("quantization", "source_sha256"): source_sha,
                                     ("quantization", "request"): quantize_request(options)})
        if meta is not None:
            log(f"[quantize] {target} is already the {options.precision} model of {options.onnx} with these options")
            return Artifact(path=target, meta=meta, reused=True)
    if job.budget is not None:
        from ..parity.budget import quantize_within_budget

        path, meta = quantize_within_budget(options, job.budget, log=log)
    else:
        path, meta = quantize_model(options, log=log)
    return Artifact(path=path, meta=meta)
