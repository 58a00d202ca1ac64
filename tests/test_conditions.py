"""Conditions lowered once (lossdsl.conditions): negation pushed into the comparisons, into an IR
of Compare / All / Any over tensor-expression nodes, which is all soft_bound reads."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ast, trees
from lossdsl.explain import explain
from lossdsl.conditions import All, Any, Compare, LoweredCondition, lower
from lossdsl.tensor_expr import Arith, Const, Function, Input, IRNode, LoweredExpression, Negative


def _condition(text: str) -> ast.Node:
    return lossdsl.parse(f"soft_bound({text})").objective.value.args[0]


y, z, one, two = Input("y"), Input("z"), Const(1.0), Const(2.0)


@pytest.mark.parametrize(("text", "lowered"), [
    ("y <= 1", Compare(y, "<=", one)),
    ("not y <= 1", Compare(y, ">", one)),
    ("not y < 1", Compare(y, ">=", one)),
    ("not not y >= 1", Compare(y, ">=", one)),
    ("not (y == 1)", Compare(y, "!=", one)),
    ("1 <= y <= 2", All((Compare(one, "<=", y), Compare(y, "<=", two)))),
    ("not (1 <= y <= 2)", Any((Compare(one, ">", y), Compare(y, ">", two)))),
    ("y <= 1 and z >= 2", All((Compare(y, "<=", one), Compare(z, ">=", two)))),
    ("not (y <= 1 and z >= 2)", Any((Compare(y, ">", one), Compare(z, "<", two)))),
    ("not (y <= 1 or z >= 2)", All((Compare(y, ">", one), Compare(z, "<", two)))),
    ("y <= 1 implies z >= 2", Any((Compare(y, ">", one), Compare(z, ">=", two)))),
    ("not (y <= 1 implies z >= 2)", All((Compare(y, "<=", one), Compare(z, "<", two)))),
    # The structure stays as written: a and b and c adds (a + b) + c, as it always did.
    ("y <= 1 and z <= 1 and y >= 2",
     All((All((Compare(y, "<=", one), Compare(z, "<=", one))), Compare(y, ">=", two)))),
    ("abs(y - 1) <= clamp(-z, -1, 2) / 2",
     Compare(Function("abs", Arith("-", y, one)), "<=",
             Arith("/", Function("clamp", Negative(z), (-1.0, 2.0)), two))),
])
def test_lowering_pushes_not_into_the_comparisons(text, lowered):
    assert lower(_condition(text)) == lowered


# -- the lowered condition means what the written one does ---------------------------------

_operands = st.sampled_from([ast.Name(id="y"), ast.Name(id="z")])
_numbers = st.sampled_from([0.0, 0.5, 1.0, 2.0]).map(lambda v: ast.Number(value=v))
_comparisons = st.builds(
    lambda left, ops, rights: ast.Compare(operands=(left, *rights[: len(ops)]), ops=tuple(ops)),
    _operands, st.lists(st.sampled_from(["<", "<=", ">", ">=", "=="]), min_size=1, max_size=3),
    st.lists(st.one_of(_operands, _numbers), min_size=3, max_size=3),
)
_conditions = st.recursive(
    _comparisons,
    lambda inner: st.one_of(
        st.builds(lambda operand: ast.Not(operand=operand), inner),
        st.builds(lambda op, left, right: ast.Logic(op=op, left=left, right=right),
                  st.sampled_from(["and", "or", "implies"]), inner, inner),
    ),
    max_leaves=8,
)
_TRUTH = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}


def _holds_written(node: ast.Node, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """The AST's meaning, by the book (a chain is each link; implies is not p or q)."""
    if isinstance(node, ast.Not):
        return ~_holds_written(node.operand, values)
    if isinstance(node, ast.Logic):
        left, right = _holds_written(node.left, values), _holds_written(node.right, values)
        return {"and": left & right, "or": left | right, "implies": ~left | right}[node.op]
    operands = [values[o.id] if isinstance(o, ast.Name) else torch.tensor(float(o.value)) for o in node.operands]
    holds = torch.ones_like(values["y"], dtype=torch.bool)
    for index, op in enumerate(node.ops):
        holds = holds & _TRUTH[op](operands[index], operands[index + 1])
    return holds


def _holds_lowered(node: IRNode, values: dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(node, Compare):
        side = [values[s.name] if isinstance(s, Input) else torch.tensor(s.value) for s in (node.lhs, node.rhs)]
        return _TRUTH[node.op](*side) & torch.ones_like(values["y"], dtype=torch.bool)
    parts = [_holds_lowered(item, values) for item in node.items]
    result = parts[0]
    for part in parts[1:]:
        result = result | part if isinstance(node, Any) else result & part
    return result


@settings(max_examples=200, deadline=None)
@given(_conditions)
def test_lowered_condition_holds_exactly_where_the_written_one_does(condition):
    lowered = lower(condition)
    # No negation is left: every node is a comparison, All, Any or a tensor expression.
    assert all(isinstance(node, (Compare, All, Any, Input, Const)) for node in trees.walk(lowered))
    grid = torch.tensor([-1.0, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
    values = {"y": grid.repeat_interleave(len(grid)), "z": grid.repeat(len(grid))}  # every pair, ties too
    assert torch.equal(_holds_lowered(lowered, values), _holds_written(condition, values))


def test_soft_bound_reads_the_ir_not_the_ast():
    loss = lossdsl.compile("soft_bound(not (0 <= y <= 1) or z >= 2, penalty=hinge) + mean(abs(y - z))")
    condition, expression = loss.plan.terms[0].params.condition, loss.plan.terms[1].params.expr
    assert isinstance(condition, LoweredCondition) and isinstance(expression, LoweredExpression)
    for lowered in (condition, expression):
        assert all(isinstance(node, IRNode) for node in trees.walk(lowered.root))
    assert condition.text == "not 0 <= y <= 1 or z >= 2"  # as written (canonically), for explain
    assert condition.inputs == ("y", "z") and expression.inputs == ("y", "z")
    assert "condition = not 0 <= y <= 1 or z >= 2" in explain(loss.plan, trace=False)


def test_negation_written_or_pushed_gives_the_same_values_and_gradients():
    written = lossdsl.compile("soft_bound(not (y <= 1 and z >= 0) or y >= 3, reduction=none)")
    pushed = lossdsl.compile("soft_bound((y > 1 or z < 0) or y >= 3, reduction=none)")
    values = {"y": torch.linspace(-2, 4, 13, requires_grad=True), "z": torch.linspace(1, -1, 13)}
    a = written(**values)
    (grad_a,) = torch.autograd.grad(a.sum(), values["y"])
    b = pushed(**values)
    (grad_b,) = torch.autograd.grad(b.sum(), values["y"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=0)
    # DL2 by hand: each 'or' multiplies its sides' squared hinges.
    y, zz = values["y"].detach(), values["z"]
    expected = torch.relu(1 - y) ** 2 * torch.relu(zz) ** 2 * torch.relu(3 - y) ** 2
    torch.testing.assert_close(a.detach(), expected)


def test_the_forward_walks_no_tree(monkeypatch):
    loss = lossdsl.compile("0.5 * soft_bound(not (0 <= y <= 1), penalty=hinge) + mean(square(y - z)) + mse()")
    inputs = {"y": torch.randn(8), "z": torch.randn(8), "pred": torch.randn(8), "target": torch.randn(8)}
    expected = loss(**inputs)

    def no_walks(*args, **kwargs):
        raise AssertionError("the forward walked a tree")

    monkeypatch.setattr(trees, "walk", no_walks)
    torch.testing.assert_close(loss(**inputs), expected)
