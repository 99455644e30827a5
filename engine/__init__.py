"""unseen.engine: the stream runtime, the pipeline and its stages.

The Python API (engine/api.py): ``from unseen.engine import open_session``.  It is loaded on first use,
so that importing a lower part (``unseen.engine.models``, which the weights layer imports) does not load
the whole engine.
"""
from __future__ import annotations

__all__ = ["VideoSession", "open_session"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
