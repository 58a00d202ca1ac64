"""``children()`` / ``walk()`` / ``find_all()`` on the AST and the plan (lossdsl.trees).

The reference is a plain recursion over every field value of a node, which finds nodes wherever
they are (in a tuple, in an optional field), checked against the table-driven walk on generated
specs; and the walk goes as deep as a tree does without RecursionError.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ast, plan, trees
from lossdsl.errors import LossSpecError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_specs import spec_text  # noqa: E402


def _ast_reference(node: ast.Node) -> list[ast.Node]:
    """Pre-order over every field of every node, left to right (recursive: shallow trees only)."""
    found = [node]
    for name in type(node).model_fields:
        if name == "span":
            continue
        value = getattr(node, name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, ast.Node):
                found += _ast_reference(item)
    return found


def _plan_reference(node: plan.PlanNode) -> list[plan.PlanNode]:
    found = [node]
    for field in dataclasses.fields(node):
        if field.metadata.get("reference"):
            continue
        value = getattr(node, field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, plan.PlanNode):
                found += _plan_reference(item)
    return found


def _parsed(seed: int) -> tuple[str, ast.Spec] | None:
    text = spec_text(random.Random(seed))
    try:
        return text, lossdsl.parse(text)
    except LossSpecError:
        return None


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ast_walk_visits_every_node_once_in_source_order(seed):
    parsed = _parsed(seed)
    if parsed is None:
        return
    _, spec = parsed
    walked = list(spec.walk())
    assert [id(n) for n in walked] == [id(n) for n in _ast_reference(spec)]
    assert len({id(n) for n in walked}) == len(walked)  # each node once
    # Pre-order is source order: the names appear as they are written.
    spans = [(n.span.line, n.span.column) for n in walked if isinstance(n, ast.Name)]
    assert spans == sorted(spans)
    assert list(spec.find_all(ast.Call)) == [n for n in walked if isinstance(n, ast.Call)]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_plan_walk_visits_every_node_once(seed):
    parsed = _parsed(seed)
    if parsed is None:
        return
    text, _ = parsed
    try:
        checked = lossdsl.check(lossdsl.parse(text), text)
    except LossSpecError:
        return
    walked = list(checked.walk())
    assert [id(n) for n in walked] == [id(n) for n in _plan_reference(checked)]
    assert len({id(n) for n in walked}) == len(walked)
    # The terms are walked as Plan.terms; a TermValue refers to one of them and is a leaf.
    assert [n for n in walked if isinstance(n, plan.TermPlan)] == list(checked.terms)
    for value in checked.find_all(plan.TermValue):
        assert list(value.children()) == []
        assert any(value.term is term for term in checked.terms)


def test_children_follow_field_order():
    call = lossdsl.parse("soft_bound(0 <= y <= 1, margin=0.5)").objective.value
    assert [child.kind for child in call.children()] == ["compare", "keyword"]
    compare = call.args[0]
    assert [c.value if c.kind == "number" else c.id for c in compare.children()] == [0, "y", 1]
    assert list(ast.Number(value=1).children()) == []
    assert ast._CHILD_FIELDS[ast.Call] == ("args", "keywords")
    assert ast._CHILD_FIELDS[ast.SubjectTo] == ("constraint", "method")
    assert trees._DATACLASS_FIELDS[plan.Arithmetic] == ("left", "right")
    assert trees._DATACLASS_FIELDS[plan.TermValue] == ()  # a reference, not a child


def test_subject_to_without_method_skips_none():
    spec = lossdsl.parse("loss = ce()\nsubject to mae() <= 2")
    kinds = [n.kind for n in spec.walk()]
    assert kinds == ["spec", "loss", "call", "subject_to", "compare", "call", "number"]


DEPTH = 100_000


def test_ast_walk_goes_100k_deep():
    node: ast.Node = ast.Number(value=1)
    for index in range(DEPTH):
        node = ast.Neg(operand=node) if index % 2 else ast.BinOp(op="+", left=node, right=ast.Name(id="y"))
    walked = node.walk()
    count = sum(1 for _ in walked)
    assert count == 1 + DEPTH + DEPTH // 2  # every Neg and BinOp, each BinOp's Name, the Number
    assert sum(1 for _ in node.find_all(ast.Number)) == 1
    assert sum(1 for _ in node.find_all((ast.Name, ast.Number))) == 1 + DEPTH // 2


def test_plan_walk_goes_100k_deep():
    expr: plan.ObjectiveExpr = plan.ParamValue("lam")
    for index in range(DEPTH):
        expr = plan.Negate(expr) if index % 2 else plan.Arithmetic("*", plan.Constant(2.0), expr)
    assert sum(1 for _ in expr.walk()) == 1 + DEPTH + DEPTH // 2
    assert [p.name for p in expr.find_all(plan.ParamValue)] == ["lam"]


@pytest.mark.parametrize("text", ["ce()", "0.5 * ce() + mse()", "soft_bound(not (y <= 1) or y >= 3)"])
def test_walk_is_deterministic(text):
    spec = lossdsl.parse(text)
    assert [n.kind for n in spec.walk()] == [n.kind for n in lossdsl.parse(text).walk()]


def test_passes_that_search_plans_walk_them():
    """Folding's and explain's searches over number arithmetic go through walk(): any depth."""
    from lossdsl import explain, folding

    expr: plan.ObjectiveExpr = plan.ParamValue("lam")
    for _ in range(DEPTH):
        expr = plan.Arithmetic("+", plan.Constant(1.0), expr)
    assert folding.params_in(expr) == {"lam"}
    assert folding.moves(expr) is False
    assert folding.moves(plan.Arithmetic("*", expr, plan.ScheduleValue("warmup", None))) is True
    assert explain._type(expr) == "Number"
    assert explain._type(plan.Negate(plan.Arithmetic("*", expr, plan.LetValue("a")))) == "Loss"
