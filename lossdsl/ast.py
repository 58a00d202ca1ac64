"""The abstract syntax tree of a loss spec: frozen pydantic models.

Every node declares its fields and a ``kind`` literal; ``Expr`` and ``Statement``
are discriminated unions on ``kind``. Each node also carries the source ``span``
it came from. The span is metadata: it is left out of JSON dumps, of the JSON
Schema, and of equality, so ``parse(format(parse(x))) == parse(x)``. Every node has
``children()``, ``walk()`` and ``find_all(kind)`` (``lossdsl.trees``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from . import trees


#: The largest number a spec may hold or compute: float32's. Losses mostly run in float32 (or
#: narrower), where anything larger is inf.
LARGEST_NUMBER = 3.4028234663852886e38


#: The logic operators: words a name cannot be.
RESERVED_WORDS = ("and", "or", "not", "implies")


class Span(BaseModel):
    """A region of source text, 1-based, the end column exclusive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    line: int
    column: int
    end_line: int
    end_column: int
    filename: str | None = None


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    span: SkipJsonSchema[Span | None] = Field(default=None, exclude=True, repr=False)

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in type(self).model_fields if name != "span")

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def children(self) -> Iterator[Node]:
        """The nodes directly below this one, in field order (a call's arguments, then its keywords)."""
        return trees.children_from(self, _child_fields(type(self)), Node)

    def walk(self) -> Iterator[Node]:
        """This node and every node below it, pre-order in source order; iterative, so any depth."""
        return trees.walk(self)

    def find_all(self, kind: type[_N] | tuple[type, ...]) -> Iterator[_N]:
        """Every node of the walk that is a ``kind`` (``spec.find_all(ast.Call)``), in source order."""
        return trees.find_all(self, kind)


_N = TypeVar("_N", bound=Node)

#: Per node class, the fields that hold nodes: derived from the field types once per class.
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _child_fields(cls: type[Node]) -> tuple[str, ...]:
    fields = _CHILD_FIELDS.get(cls)
    if fields is None:
        annotations = {name: field.annotation for name, field in cls.model_fields.items()}
        fields = _CHILD_FIELDS[cls] = trees.child_fields(
            annotations, lambda t: issubclass(t, Node), skip=frozenset({"span"}))
    return fields


# --- expressions -------------------------------------------------------------


class Number(Node):
    kind: Literal["number"] = "number"
    value: int | float

    @field_validator("value", mode="before")
    @classmethod
    def _finite_non_negative(cls, value: Any) -> Any:
        # Negative numbers are Neg(Number(...)), as the parser builds them; -0.0 too.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("a Number holds an int or a float")
        if not value <= LARGEST_NUMBER or math.copysign(1, value) < 0:
            raise ValueError(
                f"a Number is finite, at most {LARGEST_NUMBER:.4g}, and non-negative; wrap it in Neg for a negative value"
            )
        return value


class Name(Node):
    kind: Literal["name"] = "name"
    id: str


class String(Node):
    kind: Literal["string"] = "string"
    value: str

    @field_validator("value")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError("a string cannot hold a line break")
        return value


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: Expr


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: Literal["+", "-", "*", "/"]
    left: Expr
    right: Expr


CompareOp = Literal["<", "<=", ">", ">=", "=="]


class Compare(Node):
    """``a <= b`` or a chain ``a <= b <= c``: one more operand than operators."""

    kind: Literal["compare"] = "compare"
    operands: tuple[Expr, ...]
    ops: tuple[CompareOp, ...]


class Logic(Node):
    """``a and b``, ``a or b``, ``a implies b``: comparisons combined (inside ``soft_bound``)."""

    kind: Literal["logic"] = "logic"
    op: Literal["and", "or", "implies"]
    left: Expr
    right: Expr


class Not(Node):
    """``not a``: the negation of a comparison or a combination of them."""

    kind: Literal["not"] = "not"
    operand: Expr


class Keyword(Node):
    kind: Literal["keyword"] = "keyword"
    name: str
    value: Expr


class Call(Node):
    kind: Literal["call"] = "call"
    name: str
    args: tuple[Expr, ...] = ()
    keywords: tuple[Keyword, ...] = ()


class List(Node):
    kind: Literal["list"] = "list"
    items: tuple[Expr, ...] = ()


class Tuple(Node):
    kind: Literal["tuple"] = "tuple"
    items: tuple[Expr, ...] = Field(min_length=1)


Expr = Annotated[
    Union[Number, Name, String, Neg, BinOp, Compare, Logic, Not, Call, List, Tuple],
    Field(discriminator="kind"),
]

# --- statements --------------------------------------------------------------


class Let(Node):
    kind: Literal["let"] = "let"
    name: str
    value: Expr


class LossStmt(Node):
    """``loss = EXPR``; a spec that is a bare expression parses to one of these."""

    kind: Literal["loss"] = "loss"
    value: Expr
    bare: bool = False


class Param(Node):
    kind: Literal["param"] = "param"
    name: str
    value: int | float
    low: int | float | None = None
    high: int | float | None = None


class Include(Node):
    kind: Literal["include"] = "include"
    path: str


class SubjectTo(Node):
    kind: Literal["subject_to"] = "subject_to"
    constraint: Expr
    name: str | None = None
    method: Expr | None = None


class InputDecl(Node):
    kind: Literal["input"] = "input"
    name: str
    type: str
    shape: tuple[str | int, ...] | None = None
    groups: int | None = None


class Inputs(Node):
    kind: Literal["inputs"] = "inputs"
    decls: tuple[InputDecl, ...] = ()


Statement = Annotated[
    Union[Let, LossStmt, Param, Include, SubjectTo, Inputs],
    Field(discriminator="kind"),
]


class Spec(Node):
    """A whole spec: its statements in source order."""

    kind: Literal["spec"] = "spec"
    statements: tuple[Statement, ...] = ()

    @property
    def objective(self) -> LossStmt | None:
        for statement in self.statements:
            if isinstance(statement, LossStmt):
                return statement
        return None


for _model in (Neg, BinOp, Compare, Logic, Not, Keyword, Call, List, Tuple, Let, LossStmt, SubjectTo, Spec):
    _model.model_rebuild()

for _model in Node.__subclasses__():  # the table of child fields, filled once at import
    _child_fields(_model)
