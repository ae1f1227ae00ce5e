"""COCO results, COCOeval, the one evaluation loop and detection agreement, shared by training and parity."""
