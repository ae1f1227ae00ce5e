"""The typed stage API: one function per stage, each taking an options dataclass and returning a typed result.

    data = synthetic_dataset(DatasetOptions(root=Path("datasets/synth")))
    run = train_detector(TrainOptions("configs/synth_retinanet_R18.yaml", overrides=tuple(data.overrides())))
    onnx = export_detector(ExportJob(run.config, weights=run.weights))
    int8 = quantize_detector(QuantizeJob(QuantizeOptions(onnx=onnx.path, precision="int8", target="ort-cpu")))
    parity = check_parity(ParityJob(run.config, weights=run.weights, artifacts=(onnx.path, int8.path)))
    bench = bench_artifacts(BenchJob(artifacts=(run.weights, onnx.path, int8.path)))
    ranking = rank_artifacts(bench.report, parity.report)
    best = optimize_detector(OptimizeJob(weights=run.weights))  # all of the above for every candidate, one winner

Each artifact-making stage returns an earlier run's artifact when its sidecar says it answers the same request
from the same input (`reused` is then True). The CLI, the demo, the benchmarks and the test fixtures all call
these functions. Heavy backends (ModelOpt, TensorRT, OpenVINO) are imported only by the stage that needs them.
"""

from ..export.options import ExportOptions
from ..quantize.options import BudgetOptions, QuantizeOptions
from ..tensorrt.plan import BuildOptions
from .artifacts import Artifact
from .bench import BenchJob, BenchResult, RankResult, bench_artifacts, rank_artifacts
from .build import BuildJob, build_detector_engine
from .dataset import DatasetOptions, DatasetResult, synthetic_dataset
from .export import ExportJob, export_detector
from .optimize import OptimizeJob, OptimizeResult, optimize_detector
from .parity import ParityJob, ParityResult, check_parity
from .quantize import QuantizeJob, quantize_detector
from .train import TrainOptions, TrainResult, train_detector

__all__ = [
    "Artifact", "BenchJob", "BenchResult", "BudgetOptions", "BuildJob", "BuildOptions", "DatasetOptions",
    "DatasetResult", "ExportJob", "ExportOptions", "OptimizeJob", "OptimizeResult", "ParityJob", "ParityResult", "QuantizeJob", "QuantizeOptions",
    "RankResult", "TrainOptions", "TrainResult", "bench_artifacts", "build_detector_engine", "check_parity",
    "export_detector", "optimize_detector", "quantize_detector", "rank_artifacts", "synthetic_dataset", "train_detector",
]
