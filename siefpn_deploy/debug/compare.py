"""`debug compare`: where two versions of one export part ways, tensor by tensor.

A is the reference (the FP32 export), B the other: its FP16 or one of its INT8 layouts, or the PyTorch
checkpoint it was exported from. Both run on the same images, prepared as the runtime prepares them
(`Predictor.prepare`: the contract's preprocessing, the export's canvas range), one image at a time, and every
tensor both name alike is compared, in A's graph order, with the metrics of `quantize.tensor_error`.

Why the names meet: the quantizers keep node and tensor names. ModelOpt, ONNX Runtime and NNCF put their Q/DQ
pairs on a layer's inputs and AutoCast adds Casts, so a layer's output has the same name, and the same
producing node, in both graphs (`quantize/sensitivity.py` relies on the same).

Polygraphy marks the outputs (`ModifyOutputs(outputs=MARK_ALL)`: every main-graph tensor) and runs them
(`OnnxrtRunner`, which checks the feeds against the graph's inputs). Its `Comparator.run` is not used: it keeps
every marked tensor of every image before comparing (gigabytes per image at 800x1333, all of them at once), and
`CompareFunc.simple` has no cosine or SQNR; here each image's tensors are folded into running sums and dropped.

Integer and boolean tensors (shapes, indices, NMS selections) have no error size: they are only checked for
equality. Where one differs (TopK or the NMS picked other candidates), every float tensor computed from it compares
other candidates, not rounding: those tensors are listed, marked, and left out of the findings below. Not compared,
and said so in the report: tensors of different shapes, tensors found in one graph only (the Q/DQ and Cast nodes'
outputs), and tensors inside Loop bodies (not main-graph tensors).

ONNX vs PyTorch: the graph outputs only. The dynamo exporter names a tensor after torch.export's FX node
(`relu_13`, `getitem_33`), which the eager model never names, and forward hooks give a module's output per call,
which does not map to one tensor (LFE and GAU are shared by every pyramid level). Intermediates would need the
exported program run node by node: a full export, and a decomposed graph rather than the eager model.

Reading the result: error only grows along a graph, so the tensors with the largest error are the last ones,
which inherit it. Three things point at the cause instead (tensors after a differing selection left out):
- the first tensor over tolerance in graph order;
- the onsets: tensors over tolerance whose compared inputs are all within it (where error starts);
- the ten layers that add the most error: each tensor's error minus that of its worst compared input, on a linear
  scale (NSR for SQNR, 1 - cosine for cosine), so a layer that passes a broken input on adds nothing. When B
  computes some layers in reduced precision, only those are ranked: they are what quantize can keep out, while a
  full-precision op can only reshape the error it is given (a sigmoid of very negative logits magnifies the
  relative error of its input, on any model, and would crowd the ranking).
The onsets that B computes in reduced precision (reading a DequantizeLinear's output, or in FP16) are the
suggested `quantize --exclude` regexes, in the syntax quantize itself uses for exact node names.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.progress import progress_bar
from ..data.image import find_images, to_tensor
from ..model.predictor import Predictor
from ..quantize.calibration import choose
from ..quantize.range_check import exact
from ..quantize.tensor_error import TensorError
from .sides import OnnxSide, Producer, Side, open_sides

WORST = 10  # how many of the layers that add the most error are named
DEFAULT_IMAGES = 16  # enough for sums that do not hinge on one image, few enough for a large model on a CPU


@dataclass(frozen=True)
class Metric:
    label: str
    floor: bool  # the tolerance is a floor (SQNR, cosine) or a ceiling (max, mean)
    value: Callable[[TensorError], float]
    # grows with the error, from 0 for none, on a linear scale: what "added error" subtracts
    badness: Callable[[TensorError], float]


METRICS = {
    "sqnr": Metric("SQNR dB", True, operator.attrgetter("sqnr_db"), operator.attrgetter("nsr")),
    "cosine": Metric("cosine", True, operator.attrgetter("cosine"), lambda e: 1.0 - e.cosine),
    "max": Metric("max |B-A|", False, operator.attrgetter("max_abs"), operator.attrgetter("max_abs")),
    "mean": Metric("mean |B-A|", False, operator.attrgetter("mean_abs"), operator.attrgetter("mean_abs")),
}


@dataclass(frozen=True)
class Tolerance:
    """A bound on one metric: `sqnr=20` (SQNR at least 20 dB), `cosine=0.999`, `max=0.5`, `mean=0.01`."""

    metric: str
    limit: float

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        name, _, value = text.partition("=")
        try:
            limit = float(value)
        except ValueError:
            limit = float("nan")
        if name not in METRICS or not np.isfinite(limit):
            raise UserError(f"--tol takes METRIC=VALUE with METRIC one of {', '.join(METRICS)} (e.g. sqnr=20), "
                            f"got {text!r}")
        return cls(name, limit)

    @property
    def of(self) -> Metric:
        return METRICS[self.metric]

    def exceeded(self, error: TensorError) -> bool:
        """Over the bound, or not finite where A is (an FP16 overflow), whatever the metric."""
        value = self.of.value(error)
        return error.mismatched > 0 or (value < self.limit if self.of.floor else value > self.limit)

    def __str__(self) -> str:
        return f"{self.of.label} {'>=' if self.of.floor else '<='} {self.limit:g}"


# 20 dB: noise power 1% of the signal's (an RMS error of 10%), a common bar for INT8. The calibrated INT8
# synthetic RetinaNet measures 26-36 dB through its backbone and medians of 25 and 21 dB in its neck and heads,
# with a tail below 20 dB that is worth seeing; FP16 measures 50-66 dB. A broken scale falls below 0 dB
DEFAULT_TOLERANCE = Tolerance("sqnr", 20.0)


@dataclass
class Row:
    """One compared tensor."""

    tensor: str
    producer: Producer  # in A
    reduced: bool  # B computes it in reduced precision: from a DequantizeLinear's output, or in FP16
    shape: tuple[int, ...]  # on the first image
    error: TensorError = field(default_factory=TensorError)
    # computed from an integer or boolean tensor that differs in B (directly or through other such tensors):
    # its values belong to other candidates, so its difference is no rounding error
    after_selection: bool = False


@dataclass
class Comparison:
    a: Side
    b: Side
    images: list[Path]
    tolerance: Tolerance
    rows: list[Row]  # in A's graph order
    skipped: dict[str, list[str]]  # why -> the tensors
    integers: list[str]  # the integer and boolean tensors, checked for equality, in graph order
    differing: list[str]  # those of them that differ in B on some image

    @property
    def outputs_only(self) -> bool:
        return not all(isinstance(side, OnnxSide) for side in (self.a, self.b))

    def over(self, row: Row) -> bool:
        return self.tolerance.exceeded(row.error)

    @functools.cached_property
    def considered(self) -> list[Row]:
        """The rows the findings look at: all but those after a differing selection."""
        return [r for r in self.rows if not r.after_selection]

    @functools.cached_property
    def over_tolerance(self) -> list[Row]:
        return [r for r in self.considered if self.over(r)]

    @functools.cached_property
    def first_over(self) -> Row | None:
        return next(iter(self.over_tolerance), None)

    @functools.cached_property
    def _by_tensor(self) -> dict[str, Row]:
        return {r.tensor: r for r in self.rows}

    def inputs(self, row: Row) -> list[Row]:
        """The compared tensors its node reads (graph inputs and weights are the same on both sides)."""
        return [self._by_tensor[i] for i in row.producer.inputs if i in self._by_tensor]

    def added(self, row: Row) -> float:
        """Its error minus its worst input's, on the tolerance metric's linear scale."""
        badness = self.tolerance.of.badness
        return badness(row.error) - max((badness(i.error) for i in self.inputs(row)), default=0.0)

    @functools.cached_property
    def worst(self) -> list[Row]:
        """The layers that add the most error, most first (ties in graph order), among those B computes in reduced
        precision when it has any; none when nothing adds any."""
        candidates = [r for r in self.considered if r.reduced] or self.considered
        return sorted((r for r in candidates if self.added(r) > 0), key=self.added, reverse=True)[:WORST]

    @functools.cached_property
    def onsets(self) -> list[Row]:
        """Over tolerance, with every compared input within it: where error starts, in graph order."""
        return [r for r in self.considered if self.over(r) and not any(self.over(i) for i in self.inputs(r))]

    @functools.cached_property
    def suggested_excludes(self) -> list[str]:
        """`quantize --exclude` regexes for the onsets B computes in reduced precision, one per node."""
        nodes = [r.producer.node for r in self.onsets if r.reduced]
        return exact(list(dict.fromkeys(nodes)))


def check_same_export(a: Side, b: Side) -> None:
    """Refuse two models that are not versions of one export, in one line."""
    if a.inputs != b.inputs:
        raise UserError(f"{a.path} takes inputs {a.inputs} and {b.path} takes {b.inputs}: they are not versions of "
                        "one export")
    weights = [side.meta.get("source", {}).get("weights_sha256") for side in (a, b)]
    if all(weights) and weights[0] != weights[1]:
        raise UserError(f"{a.path} and {b.path} come from different weights (meta.json source.weights_sha256): "
                        "they are not versions of one export")
    if a.meta.get("preprocess") != b.meta.get("preprocess"):
        raise UserError(f"{a.path} and {b.path} prepare images differently (meta.json preprocess): they are not "
                        "versions of one export")


def compare(a_path: Path, b_path: Path, images: Path, *, tolerance: Tolerance = DEFAULT_TOLERANCE,
            max_images: int = DEFAULT_IMAGES, config: Path | None = None) -> Comparison:
    """A and B on up to `max_images` images of the folder `images` (spread over its sorted list); `config`: a
    checkpoint's config, when it stores none."""
    if max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {max_images}")
    a, b = open_sides(a_path, b_path, config)
    check_same_export(a, b)
    in_b = set(b.tensors)
    common = [t for t in a.tensors if t in in_b]
    if not common:
        raise UserError(f"{a.path} and {b.path} share no tensor names: they are not versions of one export")
    files = choose(find_images(images), max_images)
    # the inputs of an ONNX side: its canvas range (a checkpoint takes any canvas)
    onnx_side = a if isinstance(a, OnnxSide) else b
    prepare = Predictor(onnx_side, onnx_side.meta, onnx_side.path)
    rows: dict[str, Row] = {}
    skipped: dict[str, list[str]] = {"only in A": [t for t in a.tensors if t not in in_b],
                                     "only in B": sorted(set(b.tensors) - set(a.tensors))}
    refused: dict[str, str] = {}  # tensor -> why it is not compared
    integers: dict[str, bool] = {}  # integer or boolean tensor -> whether it differed on some image
    with progress_bar(files, desc=f"compare {a.path.name} vs {b.path.name}", unit="img") as bar:
        for path in bar:
            feeds = prepare.feeds(prepare.prepare([to_tensor(path)]))
            out_a, out_b = a.run(*feeds), b.run(*feeds)
            for tensor in common:
                if tensor in refused:
                    continue
                x, y = out_a[tensor], out_b[tensor]
                if x.dtype.kind != "f" or y.dtype.kind != "f":
                    integers[tensor] = integers.get(tensor, False) or not np.array_equal(x, y)
                elif x.shape != y.shape:
                    refused[tensor] = "shapes differ"
                    rows.pop(tensor, None)
                else:
                    if tensor not in rows:
                        rows[tensor] = Row(tensor, _producer(a, b, tensor), _reduced(b, tensor, y), x.shape)
                    rows[tensor].error.add(x, y)
    for tensor, why in refused.items():
        skipped.setdefault(why, []).append(tensor)
    differing = [t for t in common if integers.get(t)]
    after = _after_selection(a, integers)
    ordered = [rows[t] for t in common if t in rows]
    for row in ordered:
        row.after_selection = row.tensor in after
    return Comparison(a=a, b=b, images=files, tolerance=tolerance, rows=ordered, skipped=skipped,
                      integers=[t for t in common if t in integers], differing=differing)


def _after_selection(a: Side, integers: dict[str, bool]) -> set[str]:
    """The tensors of A computed from an integer or boolean tensor that differs (`integers`: tensor -> differs),
    directly or through others. One pass in graph order settles a tensor's inputs before it; an integer tensor
    found equal stops the chain (the shape of a tensor after a selection is no selection)."""
    after = {t for t, differs in integers.items() if differs}
    for tensor in a.tensors:
        producer = a.producer(tensor)
        if integers.get(tensor) is False or producer is None:  # found equal, or a checkpoint's output
            continue
        if after.intersection(producer.inputs):
            after.add(tensor)
    return after


def _producer(a: Side, b: Side, tensor: str) -> Producer:
    """Its node in A, else (a checkpoint's outputs) its position among the outputs."""
    return a.producer(tensor) or b.producer(tensor) or Producer(
        position=a.tensors.index(tensor), node=tensor, op="output", inputs=(), dequantized=False)


def _reduced(b: Side, tensor: str, value: np.ndarray) -> bool:
    producer = b.producer(tensor)
    return value.dtype.itemsize < np.dtype(np.float32).itemsize or (producer is not None and producer.dequantized)
