"""Serving: a Triton Inference Server model repository from deployed artifacts (`repository.py`)."""
