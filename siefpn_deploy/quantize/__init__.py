"""Stage 3: FP16 (ModelOpt AutoCast) and calibrated INT8 (ModelOpt PTQ, explicit Q/DQ) ONNX models."""
