"""Built-in terms. Importing this package registers them all in ``lossdsl.registry.REGISTRY``."""

from . import (  # noqa: F401
    classification,
    constraints,
    divergence,
    fairness,
    metric,
    penalties,
    reductions,
    regression,
    segmentation,
)
