"""Deprecated: ``from lossdsl import T``. This module forwards every attribute to ``lossdsl.T``, the
builder namespace, so ``from lossdsl import terms as T`` keeps working (with a DeprecationWarning);
the built-in terms themselves live in ``lossdsl.library``."""

import warnings as _warnings

from .builder import Expr  # noqa: F401  (lossdsl.terms.Expr, as before)
from .builder import T as _T

_warnings.warn("lossdsl.terms is deprecated: use `from lossdsl import T` (the same builders)",
               DeprecationWarning, stacklevel=2)


def __getattr__(name: str):  # noqa: ANN202 - T.ce, T.mse, T.input, T.warmup, ...
    return getattr(_T, name)


def __dir__() -> list[str]:
    return dir(_T)
