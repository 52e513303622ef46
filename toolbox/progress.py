"""Progress bars for long work: shown on a terminal, silent in logs and captured output.

``TOOLBOX_PROGRESS=1`` forces them on (e.g. under ``script`` or CI that wants them),
``TOOLBOX_PROGRESS=0`` forces them off.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    flag = os.environ.get("TOOLBOX_PROGRESS")
    disable = None if flag is None else flag.strip() in ("0", "false", "no", "off")
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=disable, **kwargs)
