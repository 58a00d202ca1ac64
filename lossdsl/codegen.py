"""The straight-line forward: one Python function per ``LossModule``, generated from its resolved plan.

``LossModule.forward`` (the reference path) walks tables: it gathers the inputs in a loop, calls
each term through a helper, and combines the values with closures. The function made here does
the same work as straight-line code: one statement per input, per term and per arithmetic node,
numbers folded in at build time (no ``1.0 *``), objective arithmetic inlined, and each term called
through what its ``specialise`` gives for the call's input signature (its checks done once per
signature; ``Term.specialise``). Terms that share work (``Term.fusion_key``) are computed by one call.

The source is built from positions only: every name in it is one this module makes (``x0`` for
the first input, ``v2`` for the third term's value, ``c0`` for a number, ``K1`` for a closure); the
spec's identifiers, strings and numbers reach the function as values in its globals, never as
text. Expressions become one statement per node, so the source is as flat as it is long (the
checker bounds a spec's nesting at 100 levels; the generator recurses no deeper than that).

Under ``torch.compile`` the function takes a branch without the signature cache (dynamo traces the
terms' own modules, and their checks cost nothing at run time); each module has its own code
object, so dynamo's cache of compiled frames is per module, not shared by every spec.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable

import torch

from .plan import Arithmetic, LetValue, Negate, ObjectiveExpr, TermValue

if typing.TYPE_CHECKING:
    from .runtime import LossModule

#: Whether dynamo is tracing (torch.compiler.is_compiling is torch 2.3 and later).
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling

#: RuntimeErrors a term may raise that are no fault of its inputs: passed on as they are.
NOT_INPUT_ERRORS = (NotImplementedError, RecursionError, torch.cuda.OutOfMemoryError)

#: Input signatures kept per module before the cache starts over (a loop over ever new dtypes).
MAX_SIGNATURES = 64

_OPERATORS = {"+": "+", "-": "-", "*": "*", "/": "/"}


class _Source:
    """Lines of the function and the values its names stand for."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.globals: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def value(self, prefix: str, obj: object) -> str:
        """A new global name for ``obj``: ``c0``, ``c1``, ... by prefix."""
        index = self.counts.get(prefix, 0)
        self.counts[prefix] = index + 1
        name = f"{prefix}{index}"
        self.globals[name] = obj
        return name

    def temporary(self) -> str:
        index = self.counts.get("e", 0)
        self.counts["e"] = index + 1
        return f"e{index}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


class _Expressions:
    """Objective expressions as statements: each node's value in a name (a temporary, a term's
    ``v``, a let's ``l``, a number's ``c``). Decisions follow ``runtime._Resolver`` node by node,
    which recorded them (its closures, its folded numbers, its weighings)."""

    def __init__(self, source: _Source, resolved: typing.Any, indent: int):
        self.source, self.resolved, self.indent = source, resolved, indent
        self.term_index = resolved.term_index
        self.let_index = resolved.let_index
        self.uses_closures = False
        self._numbers: dict[tuple[float, bool], str] = {}

    def number(self, value: float) -> str:
        key = (value, math.copysign(1.0, value) < 0)  # -0.0 is its own number
        if key not in self._numbers:
            self._numbers[key] = self.source.value("c", float(value))
        return self._numbers[key]

    def __call__(self, expr: ObjectiveExpr) -> str:
        resolved = self.resolved
        key = id(expr)
        if key in resolved.constants:
            return self.number(resolved.constants[key])
        if isinstance(expr, TermValue):
            return f"v{self.term_index[id(expr.term)]}"
        if isinstance(expr, LetValue):
            return f"l{self.let_index[expr.name]}"
        if isinstance(expr, Negate):
            return self._line(f"-{self(expr.operand)}")
        if isinstance(expr, Arithmetic) and key not in resolved.numbers:
            weighing = resolved.weighings.get(key)
            if weighing is None:
                return self._line(f"{self(expr.left)} {_OPERATORS[expr.op]} {self(expr.right)}")
            number_first, fixed = weighing
            if fixed is not None:
                loss = self(expr.right if number_first else expr.left)
                if fixed == 0:  # as the resolver: 0 in the loss's shape, its gradient 0
                    return self._line(f"ZERO({loss})", needs=("ZERO", _zero_keeping_graph_of()))
                return self._line(f"{self.number(fixed)} * {loss}")
        # Schedules, learned weightings, weights that move: the resolver's closure of this node.
        self.uses_closures = True
        closure = self.source.value("K", resolved.closures[key])
        return self._line(f"{closure}(V, L, step)")

    def _line(self, value: str, needs: tuple[str, object] | None = None) -> str:
        if needs is not None:
            self.source.globals[needs[0]] = needs[1]
        name = self.source.temporary()
        self.source.emit(self.indent, f"{name} = {value}")
        return name


def _zero_keeping_graph_of() -> Callable[[torch.Tensor], torch.Tensor]:
    from .runtime import _zero_keeping_graph

    return _zero_keeping_graph


def generate(module: LossModule, resolved: typing.Any) -> Callable[..., torch.Tensor]:
    """The straight-line forward of ``module``, from its resolver's records: a function of
    ``(self, pred, target, **inputs)``, kept unbound (``LossModule`` binds it at each look-up; bound
    and kept on the module it would be a reference cycle)."""
    source = _Source()
    plan = module.plan
    source.globals.update(
        Tensor=torch.Tensor, IS_COMPILING=_is_compiling, SILENCE=_silence_of(), CACHE=module._specialised,
        MAX_SIGNATURES=MAX_SIGNATURES, NOT_INPUT_ERRORS=NOT_INPUT_ERRORS,
    )
    inputs = plan.inputs
    names = ", ".join(f"x{i}" for i in range(len(inputs)))
    source.emit(0, "def forward(self, pred=None, target=None, **inputs):")
    for i, name in enumerate(inputs):
        if name in ("pred", "target"):  # the named parameters: never in **inputs
            source.emit(1, f"x{i} = {name}")
        else:
            source.emit(1, f"x{i} = inputs.get({source.value('N', name)})")
        source.emit(1, f"if not isinstance(x{i}, Tensor):")
        source.emit(2, f"self._bad_input({i}, pred, target, inputs)")
    if module._declared:
        source.emit(1, f"self._check_declared(({names}{',' if len(inputs) == 1 else ''}))")
    source.emit(1, "step = self.step_count" if module._scheduled else "step = None")

    groups, alone = _fusion_groups(module)
    source.emit(1, "if IS_COMPILING():")
    _emit_terms(source, module, groups, alone, indent=2, specialised=False)
    source.emit(1, "else:")
    _emit_signature(source, module, alone, indent=2)
    _emit_terms(source, module, groups, alone, indent=2, specialised=True)
    _emit_rest(source, module, resolved, indent=1)
    namespace: dict[str, object] = dict(source.globals)
    code = compile("\n".join(source.lines) + "\n", f"<lossdsl forward {id(module):#x}>", "exec")
    exec(code, namespace)  # noqa: S102 - positions only: see the module docstring
    function = namespace["forward"]
    module._forward_source = "\n".join(source.lines)  # for explain and for the curious
    return function


def _silence_of() -> Callable:
    from .runtime import _silence

    return _silence


def _fusion_groups(module: LossModule) -> tuple[list[list[int]], list[int]]:
    """Terms computed together (one class, one ``fusion_key``, the same inputs, no silencer), and the rest."""
    by_key: dict[tuple, list[int]] = {}
    for index, term in enumerate(module.terms):
        key = term.fusion_key() if module._silencers[index] is None else None
        if key is None:
            continue
        by_key.setdefault((type(term), key, module._term_inputs[index]), []).append(index)
    groups = [indices for indices in by_key.values() if len(indices) > 1]
    fused = {index for indices in groups for index in indices}
    return groups, [index for index in range(len(module.terms)) if index not in fused]


def _arguments(module: LossModule, index: int) -> str:
    positions = module._term_inputs[index]
    return ", ".join(f"x{i}" for i in positions)


def _emit_signature(source: _Source, module: LossModule, alone: list[int], indent: int) -> None:
    """Eager mode: the specialised forwards for this call's input signature, made once per signature."""
    if not alone:
        return
    parts = ["self.training"] + [f"x{i}.dtype, x{i}.ndim, x{i}.device" for i in range(len(module.plan.inputs))]
    source.emit(indent, f"key = ({', '.join(parts)})")
    source.emit(indent, "fns = CACHE.get(key)")
    source.emit(indent, "if fns is None:")
    tensors = ", ".join(f"x{i}" for i in range(len(module.plan.inputs)))
    source.emit(indent + 1, f"fns = self._specialise(key, ({tensors}{',' if len(module.plan.inputs) == 1 else ''}))")
    targets = ", ".join(f"f{index}" for index in alone)
    source.emit(indent, f"{targets}{',' if len(alone) == 1 else ''} = fns")


def _emit_terms(source: _Source, module: LossModule, groups: list[list[int]], alone: list[int], indent: int,
                specialised: bool) -> None:
    first_of_group = {indices[0]: indices for indices in groups}
    fused = {index for indices in groups for index in indices}
    for index in range(len(module.terms)):
        if index in fused and index not in first_of_group:
            continue
        if index in first_of_group:
            indices = first_of_group[index]
            function = source.value("G", type(module.terms[index]).fuse([module.terms[i] for i in indices]))
            call = f"{function}({_arguments(module, index)})"
            targets = ", ".join(f"v{i}" for i in indices)
        else:
            # Compiled: through the module's __call__, whose pre-hooks size lazy buffers before dynamo traces.
            function = f"f{index}" if specialised else source.value("T", module.terms[index])
            arguments = _arguments(module, index)
            silencer = module._silencers[index]
            if silencer is not None:
                name = source.value("S", silencer)
                source.emit(indent, f"a{index} = SILENCE([{arguments}], {name}(step))")
                arguments = f"*a{index}"
            call = f"{function}({arguments})"
            targets = f"v{index}"
        source.emit(indent, "try:")
        source.emit(indent + 1, f"{targets} = {call}")
        source.emit(indent, "except (IndexError, RuntimeError) as exc:")
        source.emit(indent + 1, "if isinstance(exc, NOT_INPUT_ERRORS):")
        source.emit(indent + 2, "raise")
        source.emit(indent + 1, f"raise self._torch_error({index}, [{_arguments(module, index)}], exc) from None")


def _emit_rest(source: _Source, module: LossModule, resolved: typing.Any, indent: int) -> None:
    """Audited values, the finite check, lets, the objective, constraints, last values, the step."""
    count = len(module.terms)
    for index in module.audited_terms:
        source.emit(indent, f"v{index}, r{index} = v{index}")
    if module.audited_terms:
        source.emit(indent, "if self.training and self.window_warning and not IS_COMPILING():")
        source.emit(indent + 1, "self._warn_unwindowed()")
    values = ", ".join(f"v{i}" for i in range(count))
    tuple_of_values = f"({values}{',' if count == 1 else ''})"
    source.emit(indent, "if self.check_finite:")
    arguments = ", ".join(f"[{_arguments(module, i)}]" for i in range(count))
    source.emit(indent + 1, f"self._check_finite([{values}], [{arguments}])")
    expressions = _Expressions(source, resolved, indent)
    start = len(source.lines)
    for j, let in enumerate(module.plan.lets):
        source.emit(indent, f"l{j} = {expressions(let.value)}")
        source.emit(indent, f"L.append(l{j})")
    total = expressions(module.plan.objective)
    source.emit(indent, f"total = {total}")
    if module._weightings:
        source.emit(indent, "if self.training and self.watch_learned_weights and not IS_COMPILING():")
        source.emit(indent + 1, f"for weighting in {source.value('W', module._weightings)}:")  # (its warning's stacklevel)
        source.emit(indent + 2, "weighting.watch()")
    reported_constraints = []
    for k, constraint in enumerate(module.plan.constraints):
        value, bound = expressions(constraint.value), expressions(constraint.bound)
        _, _, rule, lower_bound = module._constraints[k]
        rule_name = source.value("R", rule)
        windows = [f"{source.value('T', module.terms[i])}.window_updates" for i in module._constraint_windows[k]]
        window = windows[0] if windows else "1.0"
        for other in windows[1:]:
            window = f"{source.value('M', torch.maximum)}({window}, {other})"
        source.emit(indent, f"contribution, q{k} = self._constrain({k}, {rule_name}, {lower_bound}, {value}, {bound}, {window})")
        source.emit(indent, "total = total + contribution")
        surrogate = module._constraint_surrogates[k]
        source.emit(indent, f"q{k}.insert(1, {'q%d[0]' % k if surrogate is None else 'r%d' % surrogate})")
        reported_constraints.append(f"*q{k}")
    # The lets' list and the term values' tuple only where a closure reads them.
    if expressions.uses_closures:
        source.lines.insert(start, "    " * indent + "L = []")
        source.lines.insert(start, "    " * indent + f"V = {tuple_of_values}")
    else:
        source.lines[start:] = [line for line in source.lines[start:] if not line.strip().startswith("L.append(")]
    reported = [f"l{j}" for j in module._reported_lets]
    last = ", ".join([*(f"v{i}" for i in range(count)), *reported, *reported_constraints, "total"])
    if module._weights:
        last += ", total if step is None else step"
    source.emit(indent, f"self._last[0] = ({last},)")
    if module._scheduled:
        source.emit(indent, "if self.training:")
        source.emit(indent + 1, "self._advance_step()")
    source.emit(indent, "return total")
