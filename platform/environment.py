"""Environment variables set for the span of a block: how Ray Tune and MLflow's client take
some of their settings (read from ``os.environ`` when used, with no per-call argument)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def environment(values: Mapping[str, str], keep_set: bool = False) -> Iterator[None]:
    """``values`` in ``os.environ`` inside the block, the variables as they were after it. With
    ``keep_set``, a variable that is already set keeps its value (the user's choice wins)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(
        {name: value for name, value in values.items() if not (keep_set and name in os.environ)}
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
