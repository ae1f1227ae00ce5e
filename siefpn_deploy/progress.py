"""Progress bars: live on a terminal, a line every 30 s in a log file or CI."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    # no bar for work that ends (or fails) within a second or two: a quick error stays one line
    kwargs.setdefault("delay", 1.0 if interactive else 2.0)
    return tqdm(iterable, **kwargs)
