"""Build specs from Python: ``from lossdsl import T``.

    >>> spec = T.ce(weight="balanced") + 0.1 * T.fairness("fpr_gap", group="sex") + T.soft_bound(T.input("y") <= 100)
    >>> str(spec)
    'ce(weight=balanced) + 0.1 * fairness(fpr_gap, group=sex) + soft_bound(y <= 100)'
    >>> loss_fn = spec.compile()

Every builder value wraps the AST node the parser would produce for the same text, so
``parse(str(spec)) == spec.spec``. A term call is checked when it is built (unknown terms,
arguments and options raise ``LossSpecError`` at once, with the same diagnostics as text, but
without a file); the types of the whole objective are checked by ``compile`` and ``check``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from . import ast
from .declarations import REGISTRY
from .formatting import format as format_spec
from .formatting import format_expr

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Expr:
    """A spec expression under construction. Arithmetic and comparisons build bigger ones."""

    __slots__ = ("node",)

    def __init__(self, node: ast.Node):
        self.node = node

    # -- arithmetic --
    def __add__(self, other: Any) -> Expr:
        return _binop("+", self, other)

    def __radd__(self, other: Any) -> Expr:
        return _binop("+", other, self)

    def __sub__(self, other: Any) -> Expr:
        return _binop("-", self, other)

    def __rsub__(self, other: Any) -> Expr:
        return _binop("-", other, self)

    def __mul__(self, other: Any) -> Expr:
        return _binop("*", self, other)

    def __rmul__(self, other: Any) -> Expr:
        return _binop("*", other, self)

    def __truediv__(self, other: Any) -> Expr:
        return _binop("/", self, other)

    def __rtruediv__(self, other: Any) -> Expr:
        return _binop("/", other, self)

    def __neg__(self) -> Expr:
        return Expr(ast.Neg(operand=self.node))

    # -- comparisons (for soft_bound) --
    def __le__(self, other: Any) -> Expr:
        return _compare("<=", self, other)

    def __lt__(self, other: Any) -> Expr:
        return _compare("<", self, other)

    def __ge__(self, other: Any) -> Expr:
        return _compare(">=", self, other)

    def __gt__(self, other: Any) -> Expr:
        return _compare(">", self, other)

    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]
        return _compare("==", self, other)

    __hash__ = None  # type: ignore[assignment]

    # -- logic over comparisons (for soft_bound): Python's and / or / not cannot be overloaded --
    def __and__(self, other: Any) -> Expr:
        return Expr(ast.Logic(op="and", left=self.node, right=node_of(other)))

    def __or__(self, other: Any) -> Expr:
        return Expr(ast.Logic(op="or", left=self.node, right=node_of(other)))

    def __invert__(self) -> Expr:
        return Expr(ast.Not(operand=self.node))

    def __bool__(self) -> bool:
        raise TypeError(
            "a spec expression has no truth value; Python's chained comparisons (0 <= y <= 1) "
            "need T.chain(0, '<=', y, '<=', 1)"
        )

    # -- the spec --
    @property
    def spec(self) -> ast.Spec:
        """The whole spec this expression stands for: a bare objective."""
        return ast.Spec(statements=(ast.LossStmt(value=self.node, bare=True),))

    def __str__(self) -> str:
        return format_expr(self.node)

    def __repr__(self) -> str:
        return f"lossdsl.builder.Expr({str(self)!r})"

    def check(self):  # noqa: ANN201 - a Plan
        """Check the whole objective; raise ``LossSpecError`` on a mistake."""
        from .driver import check  # (the driver imports the runtime, which imports the terms, which import this)

        return check(self.spec, format_spec(self.spec))

    def compile(self, params: dict[str, float] | None = None):  # noqa: ANN201 - a LossModule
        from .driver import compile as compile_spec

        return compile_spec(self.spec, params)

    def subject_to(self, constraint: Expr, name: str | None = None, using: Expr | None = None) -> Objective:
        """This loss ``subject to`` a bound on another: ``T.ce().subject_to(T.fairness("eo_gap",
        group="sex") <= 0.02, name="eo", using=T.penalty(10))``."""
        return Objective(self.node).subject_to(constraint, name, using)


class Objective:
    """A loss with ``subject to`` constraints: ``loss = ...`` and one ``subject to`` line each."""

    __slots__ = ("node", "constraints")

    def __init__(self, node: ast.Node, constraints: tuple[ast.SubjectTo, ...] = ()):
        self.node, self.constraints = node, constraints

    def subject_to(self, constraint: Expr, name: str | None = None, using: Expr | None = None) -> Objective:
        if not isinstance(constraint, Expr):
            raise TypeError(f"a constraint is a comparison of a loss with a bound, such as T.mae() <= 0.5; got {constraint!r}")
        if name is not None and not _is_name(name):
            raise ValueError(f"a constraint's name is an identifier, got {name!r}")
        statement = ast.SubjectTo(constraint=constraint.node, name=name, method=None if using is None else node_of(using))
        return Objective(self.node, (*self.constraints, statement))

    @property
    def spec(self) -> ast.Spec:
        return ast.Spec(statements=(ast.LossStmt(value=self.node), *self.constraints))

    def __str__(self) -> str:
        return format_spec(self.spec)

    def __repr__(self) -> str:
        return f"lossdsl.builder.Objective({str(self)!r})"

    def check(self):  # noqa: ANN201 - a Plan
        """Check the whole spec; raise ``LossSpecError`` on a mistake."""
        from .driver import check

        return check(self.spec, format_spec(self.spec))

    def compile(self, params: dict[str, float] | None = None):  # noqa: ANN201 - a LossModule
        from .driver import compile as compile_spec

        return compile_spec(self.spec, params)


def node_of(value: Any) -> ast.Node:
    """The AST node of a Python value, as the text ``str(value)`` would parse."""
    if isinstance(value, Expr):
        return value.node
    if isinstance(value, bool):
        return ast.Name(id="true" if value else "false")
    if isinstance(value, (int, float)):
        if not abs(value) <= ast.LARGEST_NUMBER:
            raise ValueError(f"a spec number is finite and at most {ast.LARGEST_NUMBER:.4g} in size, got {value}")
        if value < 0 or math.copysign(1, value) < 0:
            return ast.Neg(operand=ast.Number(value=-value))
        return ast.Number(value=value)
    if isinstance(value, str):
        if _is_name(value):
            return ast.Name(id=value)
        if "\n" in value or "\r" in value:
            raise ValueError(f"a spec string cannot hold a line break, got {value!r}")
        return ast.String(value=value)
    if isinstance(value, list):
        return ast.List(items=tuple(node_of(item) for item in value))
    if isinstance(value, tuple):
        if not value:
            raise ValueError("an empty tuple has no spec form; a list of numbers is written [1, 2]")
        return ast.Tuple(items=tuple(node_of(item) for item in value))
    raise TypeError(f"cannot use {type(value).__name__} in a spec: {value!r}")


def _binop(op: str, left: Any, right: Any) -> Expr:
    return Expr(ast.BinOp(op=op, left=node_of(left), right=node_of(right)))


def _compare(op: str, left: Any, right: Any) -> Expr:
    return Expr(ast.Compare(operands=(node_of(left), node_of(right)), ops=(op,)))


def _is_name(text: str) -> bool:
    return bool(_IDENTIFIER.match(text)) and text not in ast.RESERVED_WORDS


def input(name: str) -> Expr:  # noqa: A001 - T.input reads well
    """An input tensor by name, for comparisons and expressions: ``T.input("y") <= 100``."""
    if not _is_name(name):
        raise ValueError(f"an input name is an identifier other than {', '.join(ast.RESERVED_WORDS)}, got {name!r}")
    return Expr(ast.Name(id=name))


_COMPARISONS = ("<", "<=", ">", ">=", "==")


def chain(*parts: Any) -> Expr:
    """A comparison chain: ``T.chain(0, "<=", T.input("y"), "<=", 1)`` is ``0 <= y <= 1``."""
    operands, ops = parts[0::2], parts[1::2]
    if len(operands) != len(ops) + 1 or not ops:
        raise ValueError("a chain alternates operands and operators: chain(a, '<=', b, '<=', c)")
    if unknown := [op for op in ops if op not in _COMPARISONS]:
        raise ValueError(f"unknown comparison {unknown[0]!r}: one of {', '.join(_COMPARISONS)}")
    return Expr(ast.Compare(operands=tuple(node_of(o) for o in operands), ops=tuple(ops)))


def implies(premise: Any, conclusion: Any) -> Expr:
    """``T.implies(x >= 0, y >= 0)`` is ``x >= 0 implies y >= 0``; ``&``, ``|`` and ``~`` are and, or, not."""
    return Expr(ast.Logic(op="implies", left=node_of(premise), right=node_of(conclusion)))


def group_loss(inner: Any, form: str = "group_loss") -> Expr:
    """``T.group_loss(T.mse())`` (or ``form="group_loss_gap"``), the statistic of ``T.fairness``."""
    return Expr(ast.Call(name=form, args=(node_of(inner),)))


def call(name: str, *args: Any, **kwargs: Any) -> Expr:
    """A term call, checked now: ``call("ce", weight="balanced")`` is ``T.ce(weight="balanced")``."""
    node = ast.Call(
        name=name,
        args=tuple(node_of(arg) for arg in args),
        keywords=tuple(ast.Keyword(name=key, value=node_of(value)) for key, value in kwargs.items()),
    )
    if name in REGISTRY:  # a term: check its arguments at once (tensor functions are checked in context)
        from .driver import check

        check(ast.Spec(statements=(ast.LossStmt(value=node, bare=True),)), library=False)
    return Expr(node)


class _TermBuilder:
    def __init__(self, name: str):
        self.name = name
        self.__doc__ = REGISTRY[name].doc if name in REGISTRY else f"{_kind_of(name)} {name}()"

    def __call__(self, *args: Any, **kwargs: Any) -> Expr:
        return call(self.name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<lossdsl term builder {self.name}()>"


def _kind_of(name: str) -> str | None:
    """What a callable name of the language is, besides a term: None for none."""
    from .dual_methods import METHOD_ARGUMENTS as METHODS
    from .library.params.group_fairness import GROUP_LOSS_FORMS
    from .schedule_params import SCHEDULE_PARAMS as SCHEDULES
    from .tensor_expr import FUNCTIONS
    from .weighting_params import WEIGHTING_PARAMS as WEIGHTINGS

    if name in SCHEDULES:
        return "the schedule"
    if name in WEIGHTINGS:
        return "the multi-task weighting"
    if name in METHODS:
        return "the constraint method"
    if name in GROUP_LOSS_FORMS:
        return "the fairness statistic"
    if name in FUNCTIONS:
        return "the element-wise function"
    return None


def builder(name: str) -> _TermBuilder:
    """The builder of a term, schedule, group_loss form or element-wise function named ``name``."""
    if name not in REGISTRY and _kind_of(name) is None:
        raise AttributeError(name)
    return _TermBuilder(name)


class Builders:
    """``lossdsl.T``: a builder for every callable of the language, and nothing else.

    ``T.ce(weight="balanced")``, ``T.warmup(1000)``, ``T.abs(T.input("y"))``,
    ``T.group_loss_gap(T.mse())``, ``T.penalty(10)`` (for ``subject_to(..., using=...)``): each term
    (built-in or custom), schedule, constraint method, ``group_loss`` form and element-wise function
    by its name, looked up when used, so a term registered later is there
    too; plus the five helpers ``input``, ``chain``, ``call``, ``group_loss`` and ``implies``. A term
    whose name is a helper's (a custom ``chain``) is ``T["chain"](...)`` or ``T.call("chain", ...)``.
    The implementations live elsewhere (``lossdsl.library``), so no module hides a term's name.
    """

    __slots__ = ()

    input = staticmethod(input)
    chain = staticmethod(chain)
    call = staticmethod(call)
    group_loss = staticmethod(group_loss)
    implies = staticmethod(implies)

    def __getattr__(self, name: str) -> _TermBuilder:
        if name.startswith("__"):  # copy, pickle and inspect probe for dunders
            raise AttributeError(name)
        try:
            return builder(name)
        except AttributeError:
            raise AttributeError(f"lossdsl.T has no term, schedule, constraint method or function named {name!r}") from None

    def __getitem__(self, name: str) -> _TermBuilder:
        """The builder of exactly that name, never a helper: ``T["chain"]`` for a term named chain."""
        try:
            return builder(name)
        except AttributeError:
            raise KeyError(name) from None

    def __dir__(self) -> list[str]:
        from .dual_methods import METHOD_ARGUMENTS as METHODS
        from .library.params.group_fairness import GROUP_LOSS_FORMS
        from .schedule_params import SCHEDULE_PARAMS as SCHEDULES
        from .tensor_expr import FUNCTIONS
        from .weighting_params import WEIGHTING_PARAMS as WEIGHTINGS

        return sorted({"input", "chain", "call", "group_loss", "implies", *REGISTRY, *SCHEDULES, *METHODS,
                       *GROUP_LOSS_FORMS, *FUNCTIONS, *WEIGHTINGS})

    def __repr__(self) -> str:
        return "<lossdsl.T: spec builders>"


#: The builder namespace, ``from lossdsl import T``.
T = Builders()
