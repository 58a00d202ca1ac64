"""lossdsl: a small language for composing deep-learning training objectives.

    >>> import lossdsl
    >>> loss_fn = lossdsl.compile("ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)")

``import lossdsl`` imports no torch: parsing, the checks and ``lossdsl check`` need none. The names
that do (``LossModule``, ``term``, ``watch``) import it on first use, as ``compile`` does when it
builds a module.
"""

from . import library as _library  # noqa: F401  (declares the built-in terms, without torch)
# Imported here, not on first use: the submodule lossdsl.advise would otherwise replace the
# function lossdsl.advise once anything imports it. It imports only the standard library at
# load time (numpy inside its functions), so `import lossdsl` stays as fast; so does lossdsl.audit
# (torch inside audit()).
from .advise import Advice, advise
from .ast import Spec
from .audit import AuditReport, audit
from .builder import T
from .declarations import REGISTRY, TermParams
from .driver import check, compile, load
from .errors import Diagnostic, LossSpecError, LossSpecWarning
from .formatting import format
from .parsing import parse
from .plugins import load_plugins

__all__ = [
    "Advice",
    "AuditReport",
    "Diagnostic",
    "LossModule",
    "LossSpecError",
    "LossSpecWarning",
    "REGISTRY",
    "Spec",
    "T",
    "TermParams",
    "advise",
    "audit",
    "check",
    "compile",
    "format",
    "load",
    "parse",
    "term",
    "watch",
]

__version__ = "0.1.0"

#: The names that need torch, imported on first use: name -> (submodule, attribute).
_WITH_TORCH = {"LossModule": ("runtime", "LossModule"), "term": ("custom", "term"), "watch": ("monitor", "watch")}


def __getattr__(name: str):  # noqa: ANN202
    import importlib
    import importlib.util

    if name in _WITH_TORCH:
        module, attribute = _WITH_TORCH[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # found directly from now on
        return value
    if name == "terms":  # lossdsl.terms.mse() without an import: the deprecated alias of T, loaded on use
        return importlib.import_module(".terms", __name__)
    if name == "compare":  # lossdsl.compare(specs, features, target, ...): numpy and the trainer loaded on use
        function = importlib.import_module(".compare", __name__).compare
        globals()["compare"] = function  # importing the submodule set the name to the module: the function wins
        return function
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # lossdsl.registry, lossdsl.runtime, ...: a submodule that `import lossdsl` imported before it
        # left torch out, found as an attribute as it was then
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lossdsl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WITH_TORCH, "terms", "compare"})


load_plugins()  # last: a plug-in's `@lossdsl.term` reaches the names above (and imports torch)
