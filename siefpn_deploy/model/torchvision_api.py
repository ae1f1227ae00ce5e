"""Every private torchvision API this project relies on, behind one adapter.

torchvision does not promise to keep these; `tests/test_model.py::test_torchvision_private_apis` fails
loudly, naming the one that changed, when a release moves or renames any of them.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter


def intermediate_layers(model: nn.Module, return_layers: dict[str, str]) -> nn.Module:
    """A module returning {new name: output} of the named children (torchvision's IntermediateLayerGetter)."""
    return IntermediateLayerGetter(model, return_layers=return_layers)


def transform_skip_train_resize() -> dict[str, Any]:
    """GeneralizedRCNNTransform keyword: no resize in training mode (the data pipeline did detectron2's)."""
    return {"_skip_resize": True}


def rpn_test_top_n(rpn: nn.Module) -> tuple[int, int]:
    """(pre-NMS, post-NMS) proposals per image at test time of a torchvision RegionProposalNetwork."""
    return int(rpn._pre_nms_top_n["testing"]), int(rpn._post_nms_top_n["testing"])
