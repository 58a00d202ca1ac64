"""The check pass, split along its seams over one shared ``Context``:

- ``context``: the state of checking one spec, ``report``, the objective's ``Type``;
- ``scope``: which names a statement may use, the ``inputs:`` block, params' ranges;
- ``types``: the objective's arithmetic over losses and numbers, lets, schedules;
- ``arguments``: a term call's arguments bound to its parameter model;
- ``tensor_exprs``: element-wise expressions and conditions inside terms;
- ``constraints``: ``subject to`` lines;
- ``labels``: each term's name in ``last_terms``;
- ``spec``: the pass over a whole spec, statement by statement, to the ``Plan``.
"""

from .context import MAX_ERRORS, Type
from .spec import check, check_nesting

__all__ = ["MAX_ERRORS", "Type", "check", "check_nesting"]
