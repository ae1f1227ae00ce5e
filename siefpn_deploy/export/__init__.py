"""Stage 2: the deploy wrapper, static-shape postprocessing, ONNX export and its verification."""
