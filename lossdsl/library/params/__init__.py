"""The built-in terms declared without torch, one module per family: each term's parameter model,
docs, layouts and the flags the checks read, and where its module class lives
(``lossdsl.library.<family>``, imported on first use of ``TermDef.module``).

Importing this package declares them (``import lossdsl`` does), in the order of docs/terms.md.
"""

from . import (  # noqa: F401
    classification,
    ctc,
    divergence,
    group_fairness,  # before group_dro: the order the families were registered in, docs/terms.md's
    group_dro,
    metric_learning,
    penalties,
    reinforcement,
    reductions,
    regression,
    segmentation,
    sequence,
    soft_bound,
)
