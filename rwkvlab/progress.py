"""Progress bars that nest without flooding a notebook.

Every long loop of rwkvlab shows a :class:`Progress` bar (tqdm.auto: a widget in JupyterLab, text in a
terminal). Only the outermost bar open at a time is drawn: a training shows one bar over all its steps, and
the validation or per-slice loops it runs inside stay silent. tqdm's own ``leave=False`` still prints one
line per inner bar in an executed notebook, which is what made the executed training notebooks hundreds
of outputs long.
"""

from __future__ import annotations

import threading
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Progress"]

_open = threading.local()


class Progress(tqdm):
    """``tqdm.auto.tqdm``, disabled while another :class:`Progress` of the same thread is open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        depth = getattr(_open, "depth", 0)
        kwargs["disable"] = kwargs.get("disable", False) or depth > 0
        super().__init__(*args, **kwargs)
        _open.depth = depth + 1
        self._counted = True

    def close(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            _open.depth -= 1
        super().close()
