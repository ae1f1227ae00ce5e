"""Progress bars: live on a terminal, a line every 30 s in a log file or CI."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    return tqdm(iterable, **kwargs)
