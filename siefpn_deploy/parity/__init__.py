"""Stage 5: the accuracy-parity check, COCO mAP of every artifact beside PyTorch's."""
