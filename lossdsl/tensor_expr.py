"""Element-wise tensor expressions inside terms: ``y - 100``, ``abs(pred - target)``, ``clamp(p, 0, 1)``.

They appear in ``soft_bound`` comparisons and in ``mean(...)`` / ``sum(...)``. The checker
(``checks``) validates them on the AST; ``lower_tensor_expr`` then turns the checked AST into a
small IR of frozen dataclasses, once, when the term's parameters are built (terms never see the
AST), and the term turns the IR into closures over its input tensors, once, at construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

from . import ast, trees
from .formatting import format_expr
from .operators import ARITHMETIC

TensorFn = Callable[[tuple[torch.Tensor, ...]], Union[torch.Tensor, float]]

#: Element-wise functions on tensors: name -> (number of arguments, function).
FUNCTIONS: dict[str, tuple[int, Callable[..., torch.Tensor]]] = {
    "abs": (1, torch.abs),
    "square": (1, torch.square),
    "relu": (1, F.relu),
    "exp": (1, torch.exp),
    "log": (1, torch.log),
    "sigmoid": (1, torch.sigmoid),
    "softplus": (1, F.softplus),
    "clamp": (3, torch.clamp),  # clamp(x, lo, hi), lo and hi numbers
}


# --- the IR ------------------------------------------------------------------


class IRNode(trees.DataclassNode):
    """Base of the IR's nodes, tensor expressions and conditions (``lossdsl.conditions``) alike."""

    __slots__ = ()


IRNode.tree = IRNode


@dataclass(frozen=True)
class Const(IRNode):
    value: float


@dataclass(frozen=True)
class Input(IRNode):
    """An input tensor, by name."""

    name: str


@dataclass(frozen=True)
class Negative(IRNode):
    operand: TensorIR


@dataclass(frozen=True)
class Arith(IRNode):
    op: str  # a key of operators.ARITHMETIC
    left: TensorIR
    right: TensorIR


@dataclass(frozen=True)
class Function(IRNode):
    """``abs(x)``, ``clamp(x, lo, hi)``: a function of ``FUNCTIONS`` on one tensor, with number arguments."""

    name: str
    operand: TensorIR
    numbers: tuple[float, ...] = ()


TensorIR = Union[Const, Input, Negative, Arith, Function]


class Lowered:
    """A lowered argument of a term: the IR ``root``, the ``text`` it was written as (for ``explain``),
    and the input names it reads, each once, in source order (the order the term takes them)."""

    __slots__ = ("root", "text", "inputs")

    def __init__(self, root: IRNode, text: str):
        self.root, self.text = root, text
        self.inputs: tuple[str, ...] = tuple(dict.fromkeys(node.name for node in root.find_all(Input)))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (self.root, self.text) == (other.root, other.text)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple:
        return type(self), (self.root, self.text)


class LoweredExpression(Lowered):
    """A tensor expression parameter (``mean(EXPR)``), lowered."""

    __slots__ = ()
    root: TensorIR


def lower_tensor_expr(expr: ast.Node) -> TensorIR:
    """The IR of a checked tensor expression. Recursive: the checks bound its depth (E004)."""
    if isinstance(expr, ast.Number):
        return Const(float(expr.value))
    if isinstance(expr, ast.Name):
        return Input(expr.id)
    if isinstance(expr, ast.Neg):
        return Negative(lower_tensor_expr(expr.operand))
    if isinstance(expr, ast.BinOp):
        return Arith(expr.op, lower_tensor_expr(expr.left), lower_tensor_expr(expr.right))
    if isinstance(expr, ast.Call) and expr.name in FUNCTIONS and expr.args and not expr.keywords:
        return Function(expr.name, lower_tensor_expr(expr.args[0]), tuple(_constant(arg) for arg in expr.args[1:]))
    # The checker rules this out; a ValueError reads as a bad argument if it is ever reached.
    raise ValueError(f"not a tensor expression: {format_expr(expr)}")


def lowered_expression(value: object) -> object:
    """A tensor expression argument, lowered: what a ``TensorExpression`` parameter holds."""
    if isinstance(value, ast.Node):
        return LoweredExpression(lower_tensor_expr(value), format_expr(value))
    return value


def names_in(expr: ast.Node | IRNode) -> list[str]:
    """Input names read by a checked tensor expression or comparison (AST or IR), in source order,
    repeats kept."""
    if isinstance(expr, IRNode):
        return [node.name for node in expr.find_all(Input)]
    return [node.id for node in expr.find_all(ast.Name)]


def value_range(expr: TensorIR) -> tuple[float, float]:
    """The smallest and largest value a tensor expression takes for inputs in [-1, 1] (a
    bound; +-inf once it leaves float64): what its numbers alone make of it, for the overflow checks.
    A divisor that reads an input counts as size 1 (no bound holds near its zeros)."""
    if isinstance(expr, Const):
        return expr.value, expr.value
    if isinstance(expr, Input):
        return -1.0, 1.0
    if isinstance(expr, Negative):
        low, high = value_range(expr.operand)
        return -high, -low
    if isinstance(expr, Arith):
        (a, b), (c, d) = value_range(expr.left), value_range(expr.right)
        if expr.op in ("+", "-"):
            return ARITHMETIC[expr.op].bounds((a, b), (c, d))
        if expr.op == "/":
            divisor = _number_value(expr.right)
            size = max(abs(a), abs(b))
            if not divisor:
                return -size, size
            c = d = 1 / divisor
        # Not operators' bounds: these may be infinite, and a corner of 0 and inf counts as 0 (not
        # NaN). A corner at 0 stays in: relu(y) * 3 reaches 0.
        products = [x * y if x and y else 0.0 for x in (a, b) for y in (c, d)]
        return min(products), max(products)
    if isinstance(expr, Function):
        low, high = value_range(expr.operand)
        largest = max(abs(low), abs(high))
        smallest = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
        if expr.name == "abs":
            return smallest, largest
        if expr.name == "square":
            return smallest * smallest, largest * largest
        if expr.name == "relu":
            return max(low, 0.0), max(high, 0.0)
        if expr.name == "exp":
            return _exp(low), _exp(high)
        if expr.name == "log":
            size = max(1.0, math.log(largest)) if largest > 0 else 1.0
            return -size, size
        if expr.name == "sigmoid":
            return 0.0, 1.0
        if expr.name == "softplus":
            return max(low, 0.0), max(high, 0.0) + math.log(2)
        if expr.name == "clamp":
            lowest, highest = (number or 0.0 for number in expr.numbers)
            return min(max(low, lowest), highest), min(max(high, lowest), highest)
    return -math.inf, math.inf  # the checker rules this out


def _exp(value: float) -> float:
    return math.exp(value) if value < 709 else math.inf


def _number_value(expr: TensorIR) -> float | None:
    """The value of number arithmetic; None when it reads an input."""
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Negative):
        value = _number_value(expr.operand)
        return None if value is None else -value
    if isinstance(expr, Arith):
        left, right = _number_value(expr.left), _number_value(expr.right)
        if left is None or right is None:
            return None
        return ARITHMETIC[expr.op].fold(left, right)
    return None


def simplified(expr: TensorIR) -> TensorIR:
    """``expr`` folded at build time, so the forward does no arithmetic on numbers alone: constant
    subexpressions become one number (``2 * 3 * y`` is ``6 * y``, ``abs(-3)`` is 3), and the identities
    ``x * 1``, ``1 * x``, ``x / 1``, ``x + 0``, ``0 + x``, ``x - 0`` (``x``), ``0 - x``, ``x * -1`` (``-x``),
    ``-(-x)`` and ``-(a - b)`` (``b - a``) leave no op behind; all of them give the same value (up
    to the sign of a zero). Numbers fold in float64, before any cast to the inputs' dtype."""
    if isinstance(expr, (Const, Input)):
        return expr
    if isinstance(expr, Negative):
        operand = simplified(expr.operand)
        if isinstance(operand, Const):
            return Const(-operand.value)
        if isinstance(operand, Negative):
            return operand.operand
        if isinstance(operand, Arith) and operand.op == "-":
            return Arith("-", operand.right, operand.left)
        return Negative(operand)
    if isinstance(expr, Arith):
        left, right = simplified(expr.left), simplified(expr.right)
        if isinstance(left, Const) and isinstance(right, Const):
            value = ARITHMETIC[expr.op].fold(left.value, right.value)
            if value is not None:
                return Const(value)
        number = lambda side, *values: isinstance(side, Const) and side.value in values  # noqa: E731
        if expr.op in ("+", "-") and number(right, 0.0):
            return left
        if expr.op == "+" and number(left, 0.0):
            return right
        if expr.op == "-" and number(left, 0.0):
            return simplified(Negative(right))
        if expr.op in ("*", "/") and number(right, 1.0):
            return left
        if expr.op == "*" and number(left, 1.0):
            return right
        if expr.op == "*" and number(right, -1.0):
            return simplified(Negative(left))
        if expr.op == "*" and number(left, -1.0):
            return simplified(Negative(right))
        return Arith(expr.op, left, right)
    if isinstance(expr, Function):
        operand = simplified(expr.operand)
        if isinstance(operand, Const):  # a function of a number: computed once, in float64
            value = torch.tensor(operand.value, dtype=torch.float64)
            if expr.name == "clamp":
                return Const(float(_clamp(value, *expr.numbers)))
            return Const(float(FUNCTIONS[expr.name][1](value)))
        return Function(expr.name, operand, expr.numbers)
    return expr


def compile_tensor_expr(expr: TensorIR, position: dict[str, int]) -> TensorFn:
    """A function of the term's input tensors computing the lowered expression ``expr``, folded
    first (``simplified``)."""
    return _compiled(simplified(expr), position)


def _compiled(expr: TensorIR, position: dict[str, int]) -> TensorFn:
    if isinstance(expr, Const):
        value = expr.value
        return lambda tensors: value
    if isinstance(expr, Input):
        index = position[expr.name]
        return lambda tensors: tensors[index]
    if isinstance(expr, Negative):
        operand = _compiled(expr.operand, position)
        return lambda tensors: -operand(tensors)
    if isinstance(expr, Arith):
        op = ARITHMETIC[expr.op].function
        left, right = _compiled(expr.left, position), _compiled(expr.right, position)
        return lambda tensors: op(left(tensors), right(tensors))
    if isinstance(expr, Function):
        _, function = FUNCTIONS[expr.name]
        operand = _compiled(expr.operand, position)
        if expr.name == "clamp":
            low, high = expr.numbers
            return lambda tensors: _clamp(_as_tensor(operand(tensors)), low, high)
        return lambda tensors: function(_as_tensor(operand(tensors)))
    raise TypeError(f"not a tensor expression: {expr!r}")  # lowering rules this out


def _clamp(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``torch.clamp`` with bounds beyond the dtype's range moved to its edge (torch refuses them:
    1e30 does not fit in float16)."""
    finfo = torch.finfo(value.dtype)
    return torch.clamp(value, min(max(low, finfo.min), finfo.max), min(max(high, finfo.min), finfo.max))


def _as_tensor(value: torch.Tensor | float) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.tensor(value)


def _constant(expr: ast.Node) -> float:
    """A number argument (a clamp bound): a number or a negated one."""
    if isinstance(expr, ast.Number):
        return float(expr.value)
    if isinstance(expr, ast.Neg):
        return -_constant(expr.operand)
    raise ValueError("the number arguments of a tensor function are numbers")  # the checker rules this out


trees.fill_table(IRNode)  # the table of child fields, derived once at import (conditions add theirs)
