"""The built-in terms: one module per family, each term registered in ``lossdsl.registry.REGISTRY``
with its parameters, its docs, its reference implementation and its benchmark inputs.

Each term is declared without torch in ``lossdsl.library.params.<family>`` (its parameter model, docs,
layouts and flags: all the checks read), and computed by its module class in ``lossdsl.library.<family>``,
marked ``@implements(name)`` beside its reference cases. Importing this package declares the terms
(``import lossdsl`` does); a family's modules are imported, with torch, when a term of it is first built
(``REGISTRY[name].module``). The builders that write specs from Python are elsewhere, in ``lossdsl.T``
(``lossdsl.builder``): a term here may be named anything, ``chain`` or ``metric`` included, without
hiding a builder.
"""

from . import params  # noqa: F401  (declares the built-in terms)
