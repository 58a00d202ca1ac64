"""Labels: the name of each term in ``last_terms`` (its let's name, or its term name, numbered)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from ..plan import TOTAL_LABEL, Arithmetic, Negate, ObjectiveExpr, TermPlan, TermValue, Weighted
from .context import Context


def label_terms(ctx: Context, terms: list[TermPlan], used_lets: list[str]) -> dict[int, TermPlan]:
    """Name each term for ``last_terms``: its let's name, or its term name (numbered when repeated)."""
    whole_let = {}
    for name in used_lets:
        value = ctx.lets[name].value
        if isinstance(value, TermValue):
            whole_let[id(value.term)] = name
    unnamed = Counter(t.term.name for t in terms if id(t) not in whole_let)
    seen: Counter[str] = Counter()
    taken = {*used_lets, *(c.name for c in ctx.constraints), TOTAL_LABEL}  # labels of last_terms
    labelled: dict[int, TermPlan] = {}
    for term in terms:
        if id(term) in whole_let:
            label = whole_let[id(term)]
        else:
            seen[term.term.name] += 1
            label = term.term.name if unnamed[term.term.name] == 1 else f"{term.term.name}_{seen[term.term.name]}"
            while label in taken:
                label += "_"
        taken.add(label)
        labelled[id(term)] = dataclasses.replace(term, label=label)
    return labelled


def relabel(expr: ObjectiveExpr, labelled: dict[int, TermPlan]) -> ObjectiveExpr:
    if isinstance(expr, TermValue):
        return TermValue(labelled[id(expr.term)])
    if isinstance(expr, Arithmetic):
        return Arithmetic(expr.op, relabel(expr.left, labelled), relabel(expr.right, labelled), expr.span)
    if isinstance(expr, Negate):
        return Negate(relabel(expr.operand, labelled))
    if isinstance(expr, Weighted):
        return dataclasses.replace(expr, operands=tuple(relabel(operand, labelled) for operand in expr.operands))
    return expr

