"""Stage 4: TensorRT engines from (FP32, FP16 or INT8 Q/DQ) ONNX models, through one strongly typed path."""
