"""Built-in terms, and the Python builder for specs.

(The modules are named after families, never after a term: ``T.fairness`` must reach the builder.)

Importing this package registers the built-in terms in ``lossdsl.registry.REGISTRY``. Its
attributes named after terms build spec expressions: ``from lossdsl import terms as T``, then
``T.ce(weight="balanced") + 0.1 * T.fairness("fpr_gap", group="sex")`` (see ``lossdsl.builder``).
"""

from . import (  # noqa: F401
    classification,
    constraints,
    divergence,
    group_fairness,
    metric,
    penalties,
    reductions,
    regression,
    segmentation,
)

from ..builder import Expr, call, chain, group_loss, implies, input  # noqa: E402,A004  (T.input, T.chain, T.call, ...)


def __getattr__(name: str):  # noqa: ANN202 - T.ce, T.mse, T.abs, ...: a builder per term
    from ..builder import builder

    return builder(name)
