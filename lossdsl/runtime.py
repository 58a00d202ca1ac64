"""The compiled loss: ``LossModule``, one ``nn.Module`` with one child per term.

Everything is resolved in ``__init__``: the forward gathers the input tensors,
calls each term with its inputs by position and combines the values with
pre-built closures. No parsing, no registry look-ups, no host synchronisation.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence

import torch
from pydantic import ValidationError
from torch import nn

from . import ast, pickling
from .errors import Diagnostic, LossSpecError, did_you_mean
from .formatting import format_expr
from .plan import (
    Arithmetic,
    ConstraintPlan,
    Constant,
    LetValue,
    Negate,
    ObjectiveExpr,
    ParamValue,
    Plan,
    ScheduleValue,
    TOTAL_LABEL,
    TermPlan,
    TermValue,
)
from .schedules import SCHEDULES, value_range
from .registry import TermParams, weighted_mean

Values = Sequence[torch.Tensor]
Combine = Callable[[Values, Values, "torch.Tensor | None"], "torch.Tensor | float"]  # terms, lets, step

_OPS: dict[str, Callable] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


class LossModule(nn.Module):
    """A compiled loss spec. Call it with the input tensors; it returns a scalar.

    ``last_terms`` holds the detached value of every term and let of the last
    call, and ``total``. ``inputs`` names the tensors it reads. ``params`` is read-only:
    ``with_params`` builds a module with other values. Copies, pickles and ``torch.save``
    rebuild it from its checked spec and carry its state (see ``lossdsl.pickling``).
    """

    def __init__(self, plan: Plan, params: Mapping[str, float] | None = None):
        super().__init__()
        self.plan = plan
        self.inputs: tuple[str, ...] = plan.inputs
        # The value of every ``param``: its default, or the override given to ``compile``.
        self._param_values: dict[str, float] = {p.name: float(p.default) for p in plan.params}
        self._param_values.update(params or {})
        self._bound_model: nn.Module | None = None  # what bind() was given, for copies
        self.terms = nn.ModuleList()
        position = {name: i for i, name in enumerate(plan.inputs)}
        term_index: dict[int, int] = {}
        for index, term in enumerate(plan.terms):
            module = term.term.module(self._term_params(term))
            module.bind_context(term.where, term.inputs)
            self.terms.append(module)
            term_index[id(term)] = index
        self._term_inputs = tuple(tuple(position[name] for name in term.inputs) for term in plan.terms)
        let_index = {let.name: i for i, let in enumerate(plan.lets)}
        resolve = _Resolver(term_index, let_index, self._param_values, plan.source)
        self._lets = tuple(resolve(let.value) for let in plan.lets)
        self._objective = resolve(plan.objective)
        self._constraints = tuple((resolve(c.value), resolve(c.bound), _ConstraintRule(c)) for c in plan.constraints)
        if plan.constraints:  # one Lagrange multiplier per constraint, saved in state_dict
            self.register_buffer("multipliers", torch.zeros(len(plan.constraints)))
        self._scheduled = resolve.schedules > 0
        if self._scheduled:  # the step counter, saved in state_dict
            self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        # last_terms: every term by label, every let that is more than one term, and the total.
        self._reported_lets = tuple(i for i, let in enumerate(plan.lets) if not isinstance(let.value, TermValue))
        self._last_labels = (
            *(term.label for term in plan.terms),
            *(plan.lets[i].name for i in self._reported_lets),
            *(f"{c.name}{part}" for c in plan.constraints for part in ("", ".violation", ".multiplier")),
            TOTAL_LABEL,
        )
        self._last: list[tuple[torch.Tensor, ...]] = [()]
        declared = {decl.name: decl for decl in plan.declared}
        self._declared = tuple(
            (i, _Declaration(declared[name])) for i, name in enumerate(plan.inputs) if name in declared
        )
        readers: dict[str, list[str]] = {name: [] for name in plan.inputs}
        for term in plan.terms:  # one pass: inputs times terms is quadratic in a large spec
            for name in dict.fromkeys(term.inputs):
                readers[name].append(term.where)
        self._readers = {name: ", ".join(where) for name, where in readers.items()}

    def forward(self, pred: torch.Tensor | None = None, target: torch.Tensor | None = None, **inputs: torch.Tensor):
        if pred is not None:
            inputs["pred"] = pred
        if target is not None:
            inputs["target"] = target
        tensors = self._gather(inputs)
        values = [term(*[tensors[i] for i in positions]) for term, positions in zip(self.terms, self._term_inputs)]
        step = self.step_count if self._scheduled else None
        let_values: list[torch.Tensor] = []
        for let in self._lets:
            let_values.append(let(values, let_values, step))
        total = self._objective(values, let_values, step)
        constraint_values: list[torch.Tensor] = []
        for index, (value_of, bound_of, rule) in enumerate(self._constraints):
            contribution, reported_values = self._constrain(
                index, rule, value_of(values, let_values, step), bound_of(values, let_values, step)
            )
            total = total + contribution
            constraint_values += reported_values
        # Kept as computed and detached when read: no work in the forward for logging.
        reported = [let_values[i] for i in self._reported_lets]
        self._last[0] = (*values, *reported, *constraint_values, total)  # a list slot: Module.__setattr__ is slow
        if self._scheduled and self.training:
            self.step_count += 1
        return total

    def _constrain(
        self, index: int, rule: _ConstraintRule, value: torch.Tensor, bound: torch.Tensor | float
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The constraint's contribution to the loss, and its value, violation and multiplier.

        ``g`` is the signed excess (positive when violated). In training mode the multiplier takes
        a step after it is used: ``lam = max(0, lam + lr * g)`` (unprojected for ``==``).
        """
        excess = bound - value if rule.lower_bound else value - bound
        violation = excess.abs() if rule.equality else torch.relu(excess)
        multiplier = self.multipliers[index].to(excess.dtype, copy=True)  # the buffer is updated below
        contribution = rule.contribution(excess, violation, multiplier)
        if self.training and rule.learns:
            updated = multiplier.detach() + rule.rate * excess.detach()
            self.multipliers[index] = updated if rule.equality else torch.relu(updated)
        return contribution, [value, violation, multiplier]

    @torch.no_grad()
    def step(self, steps: int = 1) -> LossModule:
        """Advance the schedules' step counter by hand (training-mode calls advance it by one each)."""
        if self._scheduled:
            self.step_count += steps
        return self

    @property
    def last_terms(self) -> dict[str, torch.Tensor]:
        """Detached values of the last call: each term, each let of several terms, and ``total``."""
        return {label: value.detach() for label, value in zip(self._last_labels, self._last[0])}

    def _term_params(self, term: TermPlan) -> TermParams:
        """The term's parameters, with the values of the params it was given by name."""
        if not term.param_args:
            return term.params
        values = dict(term.params)
        values.update({field: self.params[param] for field, param in term.param_args})
        try:
            return type(term.params)(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = str(error["loc"][0])
            param = dict(term.param_args).get(field, "?")
            problem = error["msg"].replace("Input should be", "must be")
            message = f"'{field}' of {term.term.name}() is param '{param}' = {self.params.get(param)}, which {problem}"
            raise LossSpecError([Diagnostic("E205", message, term.span, source=self.plan.source)]) from None

    def _gather(self, given: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        tensors = []
        for name in self.inputs:
            tensor = given.get(name)
            if tensor is None:
                self._missing(name, given)
            if not isinstance(tensor, torch.Tensor):
                raise LossSpecError(
                    f"input '{name}' (read by {self._readers[name]}) must be a torch.Tensor, "
                    f"got {type(tensor).__name__}",
                    code="E402",
                )
            tensors.append(tensor)
        if self._declared:
            sizes: dict[str, tuple[int, str]] = {}  # symbolic dimension -> (size, the input that set it)
            for i, declaration in self._declared:
                declaration.check(tensors[i], sizes)
        return tensors

    def _missing(self, name: str, given: dict[str, torch.Tensor]) -> None:
        unused = [key for key in given if key not in self.inputs]
        hint = did_you_mean(name, unused)
        message = f"missing input '{name}', read by {self._readers[name]}"
        detail = f"; {hint}" if hint else f"; this loss reads {', '.join(self.inputs)}"
        raise LossSpecError(message + detail, code="E401")

    def bind(self, model: nn.Module) -> LossModule:
        """Give weight penalties (``l1``, ``l2``) the model whose parameters they read at call time."""
        object.__setattr__(self, "_bound_model", model)  # a reference, not a submodule
        for term in self.terms:
            bind = getattr(term, "bind", None)
            if bind is not None:
                bind(model)
        return self

    @torch.no_grad()
    def fit(self, target: torch.Tensor | None = None, **inputs: torch.Tensor) -> LossModule:
        """Set data statistics, such as the class counts of ``ce(weight=balanced)``, from a full data set."""
        if target is not None:
            inputs["target"] = target
        for term, plan in zip(self.terms, self.plan.terms):
            fit = getattr(term, "fit", None)
            if fit is not None:
                fit(*[inputs.get(name) for name in plan.inputs])
        return self

    @property
    def params(self) -> ParamValues:
        """The value of every ``param`` (read-only: the module was built with them)."""
        return ParamValues(self._param_values)

    @params.setter
    def params(self, values: object) -> None:
        raise AttributeError(ParamValues.READ_ONLY)

    def with_params(self, values: Mapping[str, float] | None = None, /, **params: float) -> LossModule:
        """A new module of the same spec with these params changed (the others keep their values here).

        It is fresh, as ``compile`` makes it: its state starts anew and it is unbound; carry state
        over with ``new.load_state_dict(old.state_dict())``. Names and ranges are checked as for
        ``compile(..., params=...)``.
        """
        from .compiler import check_overrides  # (the compiler imports this module)

        overrides = check_overrides(self.plan, {**(values or {}), **params})
        return type(self)(self.plan, {**self._param_values, **overrides})

    # Copies and pickles rebuild the module from its checked spec and carry its state.
    def __reduce_ex__(self, protocol: int) -> tuple:
        return pickling.reduce(self)

    def __setstate__(self, state: object) -> None:
        if isinstance(state, pickling.State):
            pickling.restore(self, state)
        else:  # nn.Module's own form
            super().__setstate__(state)

    def __deepcopy__(self, memo: dict) -> LossModule:
        return pickling.deep_copy(self, memo)

    def __copy__(self) -> LossModule:
        return pickling.shallow_copy(self)

    def per_sample(
        self, pred: torch.Tensor | None = None, target: torch.Tensor | None = None, **inputs: torch.Tensor
    ) -> torch.Tensor:
        """Each sample's loss, ``[N]``: the objective's weighted sum of its terms' per-sample values.

        A term's value for sample ``i`` is its own reduction over that sample's elements alone
        (``mean``: its mean over the non-batch dimensions, ``ce``'s over the kept targets with
        their class weights, 0 when all are ignored; ``sum``: their sum), times the sample's
        ``sample_weight`` when the term has one. Weights, params and schedules apply as in the
        forward, at the current step. Nothing is updated: the step counter does not move and
        ``ce(weight=balanced)`` reads its class counts without adding the batch. Differentiable.
        A spec with a batch-level term (fairness, dice, soft_f1, l1/l2, custom terms) or a
        constraint has no per-sample form: E403 naming it.
        """
        if pred is not None:
            inputs["pred"] = pred
        if target is not None:
            inputs["target"] = target
        for plan, term in zip(self.plan.terms, self.terms):
            if not term.has_sample_losses():
                raise LossSpecError(f"per_sample(): {plan.where} is computed over the whole batch, so this loss has "
                                    "no per-sample form; per_sample() needs a sum of per-sample terms", code="E403")
        if self.plan.constraints:
            name = self.plan.constraints[0].name
            raise LossSpecError(f"per_sample(): the constraint '{name}' bounds a batch's value, so this loss has no "
                                "per-sample form", code="E403")
        tensors = self._gather(inputs)
        values: list[torch.Tensor] = []
        for term, plan, positions in zip(self.terms, self.plan.terms, self._term_inputs):
            given = [tensors[i] for i in positions]
            weighted = getattr(plan.params, "sample_weight", None) is not None
            if term.per_sample and not weighted:  # such a forward reduces through reduce when weighted
                first = given[0]
                n = first.shape[0] if first.dim() else 1
                dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
                given.append(torch.ones(n, dtype=dtype, device=first.device))
            training = term.training
            term.keeps_samples, term.training = True, False  # [N, 2] sums; no counts added
            try:
                sums = term(*given)  # each sample's numerator and denominator
            finally:
                term.keeps_samples, term.training = False, training
            value = weighted_mean(sums[:, 0], sums[:, 1])
            if weighted:
                value = value * given[-1].to(value.dtype)
            if values and value.shape != values[0].shape:
                raise LossSpecError(f"per_sample(): {plan.where} has {value.shape[0]} samples but "
                                    f"{self.plan.terms[0].where} has {values[0].shape[0]}", code="E402")
            values.append(value)
        step = self.step_count if self._scheduled else None
        let_values: list[torch.Tensor] = []
        for let in self._lets:
            let_values.append(let(values, let_values, step))
        return self._objective(values, let_values, step)

    def extra_repr(self) -> str:
        objective = next((s for s in self.plan.spec.statements if isinstance(s, ast.LossStmt)), None)
        text = format_expr(objective.value) if objective is not None else ""
        return f"objective={text!r}, inputs={self.inputs}"


class ParamValues(Mapping):
    """``LossModule.params``: a read-only view of the values the module was built with."""

    READ_ONLY = (
        "LossModule.params is read-only: the values are built into the module. Use "
        "loss_fn.with_params(lam=0.3) for a module with other values, or lossdsl.compile(spec, params={...})"
    )

    def __init__(self, values: Mapping[str, float]):
        self._values = values

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __iter__(self) -> typing.Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return repr(dict(self._values))

    def _refuse(self, *args: object, **kwargs: object) -> typing.NoReturn:
        raise TypeError(self.READ_ONLY)

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _refuse


class _ConstraintRule:
    """A constraint's method resolved once: the forward compares no strings."""

    def __init__(self, constraint: ConstraintPlan):
        self.rate = constraint.rate
        self.equality = constraint.op == "=="
        self.lower_bound = constraint.op == ">="
        self.learns = constraint.method != "penalty"
        if constraint.method == "penalty":
            self.contribution = lambda g, violation, lam: self.rate * violation
        elif constraint.method == "lagrangian":
            self.contribution = lambda g, violation, lam: lam * g
        elif self.equality:  # augmented Lagrangian
            self.contribution = lambda g, violation, lam: lam * g + self.rate / 2 * g.square()
        else:
            self.contribution = lambda g, violation, lam: (
                torch.relu(g + lam / self.rate).square() - (lam / self.rate).square()
            ) * self.rate / 2


_FLOAT_KINDS = frozenset({"logits", "probs", "real", "embedding", "weight"})
_INDEX_KINDS = frozenset({"labels", "group"})


class _Declaration:
    """Checks one input against its ``inputs:`` declaration at call time (shapes and dtypes only: no sync)."""

    def __init__(self, decl: ast.InputDecl):
        self.name, self.kind, self.shape = decl.name, decl.type, decl.shape
        filename, line = (decl.span.filename, decl.span.line) if decl.span else (None, "?")
        self.where = f"declared {decl.type}{_shape_text(decl.shape)} at {filename or '<spec>'}:{line}"

    def check(self, tensor: torch.Tensor, sizes: dict[str, tuple[int, str]]) -> None:
        if self.kind in _FLOAT_KINDS and not tensor.is_floating_point():
            self.fail(f"expected a floating-point tensor, got {tensor.dtype}")
        if self.kind in _INDEX_KINDS and (tensor.is_floating_point() or tensor.is_complex()):
            self.fail(f"expected integer {self.kind}, got {tensor.dtype}")
        if self.shape is None:
            return
        if tensor.dim() != len(self.shape):
            count = len(self.shape)
            self.fail(f"expected {count} dimension{'s' * (count != 1)}, got shape {tuple(tensor.shape)}")
        for axis, (dim, size) in enumerate(zip(self.shape, tensor.shape)):
            if isinstance(dim, int):
                if size != dim:
                    self.fail(f"dimension {axis} must be {dim}, got shape {tuple(tensor.shape)}")
                continue
            seen = sizes.setdefault(dim, (size, self.name))
            if seen[0] != size:
                self.fail(f"{dim} is {size} here (shape {tuple(tensor.shape)}) but {seen[0]} in '{seen[1]}'")

    def fail(self, problem: str) -> None:
        raise LossSpecError(f"input '{self.name}' ({self.where}): {problem}", code="E402")


def _shape_text(shape: tuple[str | int, ...] | None) -> str:
    return "" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


class _Resolver:
    """Turns objective expressions into closures over the term values and the let values."""

    def __init__(
        self, term_index: dict[int, int], let_index: dict[str, int], params: Mapping[str, float], source: str
    ):
        self.term_index, self.let_index, self.params, self.source = term_index, let_index, params, source
        self.schedules = 0

    def __call__(self, expr: ObjectiveExpr) -> Combine:
        if isinstance(expr, TermValue):
            i = self.term_index[id(expr.term)]
            return lambda terms, lets, step: terms[i]
        if isinstance(expr, LetValue):
            j = self.let_index[expr.name]
            return lambda terms, lets, step: lets[j]
        if isinstance(expr, ScheduleValue):
            self.schedules += 1
            function = SCHEDULES[expr.kind][2](expr.params)
            return lambda terms, lets, step: function(step)
        value = self.constant(expr)
        if value is not None:
            return lambda terms, lets, step: value
        if isinstance(expr, Negate):
            operand = self(expr.operand)
            return lambda terms, lets, step: -operand(terms, lets, step)
        assert isinstance(expr, Arithmetic)
        is_number = self._range(expr) is not None  # (reports a division through 0, or a number beyond float32)
        if not is_number and not self._weight(expr) <= ast.LARGEST_NUMBER:
            self._fail(expr, "the loss's weight overflows float32")
        op = _OPS[expr.op]
        left, right = self(expr.left), self(expr.right)
        return lambda terms, lets, step: op(left(terms, lets, step), right(terms, lets, step))

    def constant(self, expr: ObjectiveExpr) -> float | None:
        """The value of number arithmetic over params, computed once here; None for losses and schedules."""
        if _moves(expr):
            return None
        bounds = self._range(expr)
        return None if bounds is None else bounds[0]

    def _range(self, expr: ObjectiveExpr) -> tuple[float, float] | None:
        """The smallest and largest value of number arithmetic: params at their values, schedules over
        all their steps; None for a loss. Reports a divisor whose range holds 0, and a number beyond
        float32. The checks did the same for literals; params get their values only now."""
        if isinstance(expr, Constant):
            return expr.value, expr.value
        if isinstance(expr, ParamValue):
            return self.params[expr.name], self.params[expr.name]
        if isinstance(expr, ScheduleValue):
            return value_range(expr.kind, expr.params)
        if isinstance(expr, Negate):
            inner = self._range(expr.operand)
            return None if inner is None else (-inner[1], -inner[0])
        if not isinstance(expr, Arithmetic):
            return None
        left, right = self._range(expr.left), self._range(expr.right)
        if expr.op == "/" and right is not None and right[0] <= 0 <= right[1]:
            low, high = right
            self._fail(expr, "division by zero" if low == high else f"division by zero: the divisor goes from {low + 0:g} to {high + 0:g}")  # (no -0)
        if left is None or right is None:
            return None
        if expr.op == "+":
            bounds = left[0] + right[0], left[1] + right[1]
        elif expr.op == "-":
            bounds = left[0] - right[1], left[1] - right[0]
        else:
            factors = (1 / right[1], 1 / right[0]) if expr.op == "/" else right
            products = [a * b for a in left for b in factors]
            bounds = min(products), max(products)
        if not max(abs(bounds[0]), abs(bounds[1])) <= ast.LARGEST_NUMBER:  # inf and nan too
            self._fail(expr, "the constant overflows")
        return bounds

    def _weight(self, expr: ObjectiveExpr) -> float:
        """The largest factor a loss in ``expr`` is multiplied by (divisors hold no 0 by now)."""
        if isinstance(expr, (TermValue, LetValue)):
            return 1.0
        if isinstance(expr, Negate):
            return self._weight(expr.operand)
        if not isinstance(expr, Arithmetic):
            return 0.0
        left, right = self._range(expr.left), self._range(expr.right)
        if left is None and right is None:  # loss + loss, loss - loss
            return max(self._weight(expr.left), self._weight(expr.right))
        loss, number = (expr.right, left) if right is None else (expr.left, right)
        smallest, largest = sorted(abs(bound) for bound in number)
        return self._weight(loss) * (1 / smallest if expr.op == "/" else largest)

    def _fail(self, expr: Arithmetic, problem: str) -> typing.NoReturn:
        """Arithmetic the checks could not see: the params' values came with the module."""
        names = ", ".join(f"{name} = {value:g}" for name, value in self.params.items() if name in _params_in(expr))
        message = f"{problem} with {names}" if names else problem
        raise LossSpecError([Diagnostic("E205", message, expr.span, source=self.source)]) from None


def _moves(expr: ObjectiveExpr) -> bool:
    """Whether number arithmetic holds a schedule."""
    if isinstance(expr, ScheduleValue):
        return True
    if isinstance(expr, Arithmetic):
        return _moves(expr.left) or _moves(expr.right)
    if isinstance(expr, Negate):
        return _moves(expr.operand)
    return False


def _params_in(expr: ObjectiveExpr) -> set[str]:
    if isinstance(expr, ParamValue):
        return {expr.name}
    if isinstance(expr, Arithmetic):
        return _params_in(expr.left) | _params_in(expr.right)
    if isinstance(expr, Negate):
        return _params_in(expr.operand)
    return set()
