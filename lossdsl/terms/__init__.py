"""Built-in terms. Importing this package registers them all in ``lossdsl.registry.REGISTRY``."""

from . import classification, constraints, fairness, regression  # noqa: F401
