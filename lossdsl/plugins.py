"""Term plug-ins: the packages registered under the entry-point group ``lossdsl.terms``, imported when
lossdsl is. Without torch: a plug-in imports it itself (``lossdsl.term`` needs it), none is imported
when no plug-in is installed.
"""

from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "lossdsl.terms"


def load_plugins() -> None:
    """Import the packages registered under the ``lossdsl.terms`` entry-point group."""
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry_point.load()
            if callable(loaded) and not isinstance(loaded, type) and not inspect.ismodule(loaded):
                loaded()
        except Exception as exc:  # a broken plug-in must not break lossdsl itself
            warnings.warn(f"lossdsl: the term plug-in {entry_point.name!r} failed to load: {exc}", stacklevel=2)
