"""Rejoin the FP16 weight parts that train_rcnn_easy.sh sends back from a GPU machine (which returns files of at
most 16 MiB) into an FP32 checkpoint the project loads: `{"model": state dict, "classes": ...}`.

    python benchmarks/experiments/join_weights.py OUT.pth PART [PART ...]

The parts are the byte pieces of one `torch.save` file (from `split`), in order. The weights were rounded to
FP16 on the way, so the rejoined model is not bit-equal to the one trained there: evaluate it here, and report
what this model scores, not the training run's own figure.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from siefpn_deploy.model.checkpoint import save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path, help="the model_final.pth to write")
    p.add_argument("parts", nargs="+", type=Path, help="the parts, in order")
    args = p.parse_args()
    blob = b"".join(part.read_bytes() for part in args.parts)
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model = {k: (t.float() if t.is_floating_point() else t) for k, t in state["model"].items()}
    save_checkpoint(args.output, {"model": model, "classes": state["classes"]}, mark_last=False)
    print(f"wrote {args.output}: {len(model)} tensors, classes {state['classes']['names']}")


if __name__ == "__main__":
    main()
