"""The built-in terms: one module per family, each term registered in ``lossdsl.registry.REGISTRY``
with its parameters, its docs, its reference implementation and its benchmark inputs.

Importing this package registers them (``import lossdsl`` does). The builders that write specs
from Python are elsewhere, in ``lossdsl.T`` (``lossdsl.builder``): a term here may be named
anything, ``chain`` or ``metric`` included, without hiding a builder.
"""

from . import (  # noqa: F401
    classification,
    ctc,
    divergence,
    group_dro,
    group_fairness,
    metric_learning,
    penalties,
    reinforcement,
    reductions,
    regression,
    segmentation,
    sequence,
    soft_bound,
)
