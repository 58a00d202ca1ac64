"""lossdsl: a small language for composing deep-learning training objectives.

    >>> import lossdsl
    >>> loss_fn = lossdsl.compile("ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)")
"""

from . import library as _library  # noqa: F401  (registers the built-in terms)
# Imported here, not on first use: the submodule lossdsl.advise would otherwise replace the
# function lossdsl.advise once anything imports it. It imports only the standard library at
# load time (numpy inside its functions), so `import lossdsl` stays as fast.
from .advise import Advice, advise
from .ast import Spec
from .audit import AuditReport, audit
from .builder import T
from .driver import check, compile, load
from .custom import load_plugins, term
from .errors import Diagnostic, LossSpecError, LossSpecWarning
from .formatting import format
from .parsing import parse
from .registry import REGISTRY, TermParams
from .runtime import LossModule
from .monitor import watch

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

load_plugins()
__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202
    if name == "terms":  # lossdsl.terms.mse() without an import: the deprecated alias of T, loaded on use
        import importlib

        return importlib.import_module(".terms", __name__)
    if name == "compare":  # lossdsl.compare(specs, features, target, ...): numpy and the trainer loaded on use
        import importlib

        function = importlib.import_module(".compare", __name__).compare
        globals()["compare"] = function  # importing the submodule set the name to the module: the function wins
        return function
    raise AttributeError(f"module 'lossdsl' has no attribute {name!r}")
