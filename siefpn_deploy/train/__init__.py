"""Stage 1: the training loop, DDP launch and the train command's evaluation."""
