"""The bottom layer: the graph contract, config, errors, atomic file I/O, progress bars, timing, reports."""
