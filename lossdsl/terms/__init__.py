"""Built-in terms. Importing this package registers them all in ``lossdsl.registry.REGISTRY``."""

from . import classification, constraints, divergence, fairness, metric, regression, segmentation  # noqa: F401
