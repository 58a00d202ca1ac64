"""The compiled loss: ``LossModule``, one ``nn.Module`` with one child per term.

Everything is resolved in ``__init__``: the forward gathers the input tensors,
calls each term with its inputs by position and combines the values with
pre-built closures. No parsing, no registry look-ups, no host synchronisation.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

import warnings

from . import ast, codegen, duals, folding, kinds, pickling
from .binding import BoundPlan, bind
from .errors import Diagnostic, LossSpecError, LossSpecWarning, did_you_mean
from .formatting import format_expr
from .operators import ARITHMETIC
from .plan import (
    MULTIPLIER_CAP,
    Arithmetic,
    LetValue,
    Negate,
    ObjectiveExpr,
    Plan,
    ScheduleValue,
    TOTAL_LABEL,
    TermValue,
    Weighted,
)
from .schedules import SCHEDULES
from .weightings import WEIGHTINGS, Weighting
from .registry import weighted_mean

Values = Sequence[torch.Tensor]
Combine = Callable[[Values, Values, "torch.Tensor | None"], "torch.Tensor | float"]  # terms, lets, step

#: Whether dynamo is tracing (torch.compiler.is_compiling is torch 2.3 and later).
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling

#: RuntimeErrors a term may raise that are no fault of its inputs: passed on as they are.
_NOT_INPUT_ERRORS = (NotImplementedError, RecursionError, torch.cuda.OutOfMemoryError)


def build(bound: BoundPlan) -> LossModule:
    """The last pass: a fresh ``LossModule`` from a bound plan (it checks nothing ``bind`` did)."""
    return LossModule(bound)


class _GeneratedOrReference:
    """``LossModule.forward``: the module's straight-line forward (``lossdsl.codegen``) where it has
    one, else the reference path, bound at each look-up. A generated forward kept bound on the module
    would hold the module from its own ``__dict__``, a cycle only the cyclic collector frees; bound
    here, a module goes when its last reference does. On the class, it is the reference function."""

    def __init__(self, reference: Callable[..., torch.Tensor]):
        self.reference = reference
        self.__doc__, self.__wrapped__ = reference.__doc__, reference

    def __get__(self, module: LossModule | None, owner: type | None = None) -> Callable[..., torch.Tensor]:
        if module is None:
            return self.reference
        if not _dynamo_prepared and "torch._dynamo" in sys.modules:
            _prepare_for_dynamo()
        return module.__dict__.get("_generated_forward", self.reference).__get__(module)


# torch.compile without fullgraph converts every new Python frame, and on __get__'s frame (the look-up
# of ``loss_fn.forward`` in nn.Module's call) dynamo recursed without end. Its code is marked to run as
# it is; dynamo still inlines it where it traces through a module call (fullgraph, or a compiled
# training step that calls the loss), so those keep one graph (torch.compiler.disable would not: such
# a step would break its graph). Marked once dynamo is loaded, not by importing it here (1.6 s): at
# the first look-up after that (``torch.compile(loss_fn)`` makes one before it compiles), or by
# ``LossModule.compile``.
_dynamo_prepared = False


def _prepare_for_dynamo() -> None:
    global _dynamo_prepared
    eval_frame = getattr(sys.modules.get("torch._dynamo"), "eval_frame", None)
    if eval_frame is None:  # dynamo is still being imported: a later look-up marks it
        return
    skip_code = getattr(eval_frame, "skip_code", None)
    if skip_code is not None:  # (a torch without it: nothing to mark)
        skip_code(_GeneratedOrReference.__get__.__code__)
    _dynamo_prepared = True


class LossModule(nn.Module):
    """A compiled loss spec. Call it with the input tensors; it returns a scalar.

    ``last_terms`` holds the detached value of every term and let of the last
    call, and ``total``. ``inputs`` names the tensors it reads. ``params`` is read-only:
    ``with_params`` builds a module with other values. Copies, pickles and ``torch.save``
    rebuild it from its checked spec and carry its state (see ``lossdsl.pickling``).
    """

    #: Opt-in: raise E405 naming the term (and its inputs) whose value is NaN or infinite. Checking
    #: reads the values on the host, a synchronisation per term on CUDA, so it is off by default.
    check_finite: bool = False

    #: Whether training-mode calls watch that ``uncertainty(...)``'s learned weights move, and warn
    #: (LossSpecWarning, once) when they do not: they are missing from the optimiser. One host
    #: synchronisation, once, after ``weightings.CHECK_AFTER_BACKWARDS`` backward passes.
    watch_learned_weights: bool = True

    #: Whether modules are built with the straight-line forward generated from their plan
    #: (``lossdsl.codegen``); ``LossModule.forward`` is the reference path it is tested against.
    straight_line: bool = True

    def __init__(self, plan: Plan | BoundPlan, params: Mapping[str, float] | None = None):
        """Build the module of a bound plan (``build``), or of a plan and its params' values (bound here)."""
        super().__init__()
        bound = plan if isinstance(plan, BoundPlan) else bind(plan, params)
        plan = bound.plan
        self.plan = plan
        self.inputs: tuple[str, ...] = plan.inputs
        # The value of every ``param``: its default, or the override given to ``compile``.
        self._param_values: dict[str, float] = dict(bound.params)
        self._bound_model: nn.Module | None = None  # what bind() was given, for copies
        self.terms = nn.ModuleList()
        position = {name: i for i, name in enumerate(plan.inputs)}
        term_index: dict[int, int] = {}
        for index, (term, params) in enumerate(zip(plan.terms, bound.term_params)):
            module = term.term.module(params)
            module.bind_context(term.where, term.inputs)
            self.terms.append(module)
            term_index[id(term)] = index
        self._term_inputs = tuple(tuple(position[name] for name in term.inputs) for term in plan.terms)
        let_index = {let.name: i for i, let in enumerate(plan.lets)}
        resolve = _Resolver(term_index, let_index, self._param_values, bound.intervals)
        self._lets = tuple(resolve(let.value) for let in plan.lets)
        self._objective = resolve(plan.objective)
        self._constraints = tuple(
            (resolve(c.value), resolve(c.bound), duals.rule_for(c.method, c.rate, c.op == "=="), c.op == ">=")
            for c in plan.constraints
        )
        if resolve.weightings:  # uncertainty(...), dwa(...): their learned parameters and buffers
            self.weightings = nn.ModuleList(resolve.weightings)
        self._weightings: tuple[Weighting, ...] = tuple(resolve.weightings)
        if plan.constraints:  # per constraint: its multiplier and its update's state, saved in state_dict
            self.register_buffer("multipliers", torch.zeros(len(plan.constraints)))
            self.register_buffer("dual_state", torch.zeros(len(plan.constraints), duals.STATE_SIZE))
        # Terms only constraints read take their audited value (fairness rates: hard, over a window)
        # with the surrogate's gradient; they return (value, surrogate).
        in_objective, in_constraints = resolve.terms_reached(plan)
        #: The terms only constraints read, whose value there is audited (indices into ``terms``).
        self.audited_terms = tuple(
            index for index in sorted(in_constraints - in_objective)
            if getattr(self.terms[index], "audit_in_constraint", lambda: False)()
        )
        # Per constraint: the audited terms its value reads, whose window (in updates) the default
        # multiplier rule slows down to (``duals.AdaptiveRule``).
        audited = set(self.audited_terms)
        self._constraint_windows = tuple(tuple(sorted(resolve.terms_in(c.value, plan) & audited)) for c in plan.constraints)
        # A constraint on one audited term reports that term's surrogate beside its value.
        self._constraint_surrogates = tuple(
            term_index[id(c.value.term)] if isinstance(c.value, TermValue) and term_index[id(c.value.term)] in self.audited_terms
            else None
            for c in plan.constraints
        )
        #: Whether the first training call warns about audited rates without a window (``verify``
        #: says the same in its own words and turns it off).
        self.window_warning = True
        #: Per term: None, or a function of the step giving True (a bool tensor) while every weight
        #: the term is under is 0; its inputs then pass no gradient (see ``_Resolver.silencers``).
        self._silencers = resolve.silencers(plan)
        self._scheduled = resolve.schedules > 0
        if self._scheduled:  # the step counter, saved in state_dict
            self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        # last_terms: every term by label, every let that is more than one term, and the total.
        self._reported_lets = tuple(i for i, let in enumerate(plan.lets) if not isinstance(let.value, TermValue))
        self._last_labels = (
            *(term.label for term in plan.terms),
            *(plan.lets[i].name for i in self._reported_lets),
            *(f"{c.name}{part}" for c in plan.constraints for part in ("", ".surrogate", ".violation", ".multiplier")),
            TOTAL_LABEL,
        )
        # Each weight that moves (a schedule, alone or times numbers) over a loss, under "weight/<loss>":
        # computed when last_terms is read, from the step the last call used (kept after its values).
        self._weights = _weight_labels(resolve.moving)
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
        #: Per input signature (training mode; each input's dtype, dims, device): each term's
        #: specialised forward (``Term.specialise``), made at the signature's first eager call.
        self._specialised: dict[tuple, tuple[Callable[..., torch.Tensor], ...]] = {}
        # An instance attribute: this module's own code object (see codegen). A subclass that
        # overrides forward keeps its own (its super().forward is the reference path).
        if self.straight_line and type(self).forward is LossModule.forward:
            self._generated_forward = codegen.generate(self, resolve)

    def forward(self, pred: torch.Tensor | None = None, target: torch.Tensor | None = None, **inputs: torch.Tensor):
        if pred is not None:
            inputs["pred"] = pred
        if target is not None:
            inputs["target"] = target
        tensors = self._gather(inputs)
        step = self.step_count if self._scheduled else None
        values: list[torch.Tensor] = []
        for index, (term, positions) in enumerate(zip(self.terms, self._term_inputs)):
            values.append(self._call_term(index, term, [tensors[i] for i in positions], step))
        surrogates: dict[int, torch.Tensor] = {}
        for index in self.audited_terms:  # (value, surrogate)
            values[index], surrogates[index] = values[index]
        if self.audited_terms and self.training and self.window_warning and not _is_compiling():
            self._warn_unwindowed()
        if self.check_finite:
            self._check_finite(values, [[tensors[i] for i in positions] for positions in self._term_inputs])
        let_values: list[torch.Tensor] = []
        for let in self._lets:
            let_values.append(let(values, let_values, step))
        total = self._objective(values, let_values, step)
        if self._weightings and self.training and self.watch_learned_weights and not _is_compiling():
            for weighting in self._weightings:  # learned weights left out of the optimiser (one sync, once)
                weighting.watch()
        constraint_values: list[torch.Tensor] = []
        for index, (value_of, bound_of, rule, lower_bound) in enumerate(self._constraints):
            value = value_of(values, let_values, step)
            window = self._window(self._constraint_windows[index])
            contribution, reported_values = self._constrain(
                index, rule, lower_bound, value, bound_of(values, let_values, step), window
            )
            total = total + contribution
            surrogate = self._constraint_surrogates[index]
            reported_values.insert(1, reported_values[0] if surrogate is None else surrogates[surrogate])
            constraint_values += reported_values
        # Kept as computed and detached when read: no work in the forward for logging.
        reported = [let_values[i] for i in self._reported_lets]
        last = (*values, *reported, *constraint_values, total)
        # a list slot (Module.__setattr__ is slow); the step only learned weights need is any tensor
        self._last[0] = (*last, total if step is None else step) if self._weights else last
        if self._scheduled and self.training:
            self._advance_step()
        return total

    forward = _GeneratedOrReference(forward)  # type: ignore[assignment]

    def compile(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        """``nn.Module.compile`` (``torch.compile`` of the module's call, in place), with the look-up of
        ``forward`` marked for dynamo first (``_prepare_for_dynamo``): no eager look-up comes before it."""
        import torch._dynamo  # noqa: F401 - what torch.compile loads anyway

        _prepare_for_dynamo()
        super().compile(*args, **kwargs)

    def _window(self, indices: tuple[int, ...]) -> torch.Tensor | float:
        """How many updates a constraint's value averages over: its audited terms' longest window, or 1."""
        if not indices:
            return 1.0
        terms = list(self.terms)
        window = terms[indices[0]].window_updates
        for i in indices[1:]:
            window = torch.maximum(window, terms[i].window_updates)
        return window

    def _constrain(
        self, index: int, rule: duals.DualRule, lower_bound: bool, value: torch.Tensor, bound: torch.Tensor | float,
        window: torch.Tensor | float = 1.0,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The constraint's contribution to the loss, and its value, violation and multiplier.

        ``g`` is the signed excess (positive when violated). In training mode the multiplier takes
        a step after it is used (``lossdsl.duals``: the rule of the constraint's method), kept within
        ``MULTIPLIER_CAP`` in size. Computed in float32 at least (the buffer's dtype): a float16
        loss would overflow at a multiplier of 65504.
        """
        dtype = torch.promote_types(value.dtype, self.multipliers.dtype)
        value = value.to(dtype)
        excess = bound - value if lower_bound else value - bound
        violation = excess.abs() if rule.equality else torch.relu(excess)
        # A copy: the buffer is updated below. Clamped also here, for a multiplier loaded or set by hand.
        multiplier = self.multipliers[index].to(dtype, copy=True).clamp(rule.lowest, MULTIPLIER_CAP)
        contribution = rule.contribution(excess, violation, multiplier)
        if self.training and rule.learns:
            with torch.no_grad():
                updated, state = rule.update(multiplier, excess.detach(), self.dual_state[index], window)
                self.multipliers[index] = updated.to(self.multipliers.dtype)  # saturates, never inf
                self.dual_state[index] = state
        return contribution, [value, violation, multiplier]

    def _warn_unwindowed(self) -> None:
        """Once, at the first training-mode call: a constraint whose audited rates come from each batch alone."""
        self.window_warning = False
        for index in self.audited_terms:
            if not getattr(self.terms[index], "window_known", True):
                term = self.plan.terms[index]
                group = term.params.group_names[0] if hasattr(term.params, "group_names") else "group"
                warnings.warn(
                    f"{term.where}: the constraint's multiplier reads each batch's rates alone, which are noisy "
                    f"and overstate the gap: call loss_fn.fit({group}=codes) with the training data's group "
                    f"codes, or give the count (groups=K, or '{group}[N] of K' in an inputs: block), so that it "
                    "reads rates over a window of batches",
                    LossSpecWarning, stacklevel=5,  # the caller of loss_fn(...)
                )

    @torch.no_grad()
    def step(self, steps: int = 1) -> LossModule:
        """Advance the schedules' step counter by hand (training-mode calls advance it by one each)."""
        if self._scheduled:
            self.step_count += steps
        return self

    @property
    def last_terms(self) -> dict[str, torch.Tensor]:
        """Detached values of the last call: each term, each let of several terms, each constraint's
        value, surrogate, violation and multiplier, each moving weight (``weight/<loss>``: a schedule's
        at the step the call used; ``uncertainty``'s and ``dwa``'s as they are now) and ``total``.
        The keys are fixed when the module is built (the same on every rank and at every step)."""
        last = self._last[0]
        terms = {label: value.detach() for label, value in zip(self._last_labels, last)}
        if self._weights and len(last) == len(self._last_labels) + 1:  # (a pickle of older code kept no step)
            total = terms.pop(TOTAL_LABEL)
            with torch.no_grad():
                for label, weight in self._weights:
                    terms[label] = torch.as_tensor(weight((), (), last[-1])).detach()
            terms[TOTAL_LABEL] = total
        return terms

    def term_losses(
        self, pred: torch.Tensor | None = None, target: torch.Tensor | None = None, **inputs: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Each term's own value, not detached and not weighed, by its label (as in ``last_terms``),
        in source order: the losses a Jacobian-descent or PCGrad-style aggregator takes
        (``torchjd.backward(list(loss_fn.term_losses(...).values()), aggregator)``). It is one call of
        the loss: the step counter, multipliers and ``dwa`` history advance as in ``loss_fn(...)``."""
        self(pred, target, **inputs)
        return {label: value for label, value in zip(self._last_labels, self._last[0][:len(self.terms)])}

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
            self._check_declared(tensors)
        return tensors

    # -- what the straight-line forward calls (lossdsl.codegen) --

    def _bad_input(self, position: int, pred: object, target: object, given: dict[str, object]) -> typing.NoReturn:
        """Input ``position`` is missing or no tensor: the reference path's errors (E401, E402)."""
        given = dict(given)
        if pred is not None:
            given["pred"] = pred
        if target is not None:
            given["target"] = target
        self._gather(given)
        raise AssertionError("unreachable: _gather accepted an input the forward refused")

    def _check_declared(self, tensors: Sequence[torch.Tensor]) -> None:
        sizes: dict[str, tuple[int, str]] = {}  # symbolic dimension -> (size, the input that set it)
        for i, declaration in self._declared:
            declaration.check(tensors[i], sizes)

    def _specialise(self, key: tuple, tensors: tuple[torch.Tensor, ...]) -> tuple[Callable[..., torch.Tensor], ...]:
        """Each unfused term's forward for this signature (``Term.specialise``), kept for the next calls."""
        if len(self._specialised) >= codegen.MAX_SIGNATURES:
            self._specialised.clear()
        fused = {index for group in codegen._fusion_groups(self)[0] for index in group}
        functions = []
        for index, (term, positions) in enumerate(zip(self.terms, self._term_inputs)):
            if index in fused:
                continue
            arguments = [tensors[i] for i in positions]
            try:
                functions.append(term.specialise(*arguments))
            except (IndexError, RuntimeError) as exc:
                if isinstance(exc, _NOT_INPUT_ERRORS):
                    raise
                raise self._torch_error(index, arguments, exc) from None
        functions = tuple(functions)
        # Not kept while a term still has a lazy buffer to size (a refused first call of
        # ce(weight=balanced)): its specialise fell back to forward, and the next call may size it.
        if not any(isinstance(b, torch.nn.parameter.UninitializedBuffer) for b in self.buffers()):
            self._specialised[key] = functions
        return functions

    def _replicate_for_data_parallel(self) -> LossModule:
        """``nn.DataParallel``'s replica shares this module's ``__dict__``, so its generated forward
        would run on this module's terms and state: the replica takes the reference path."""
        replica = super()._replicate_for_data_parallel()
        replica.__dict__.pop("_generated_forward", None)
        replica._specialised = {}
        return replica

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - nn.Module's
        self._specialised.clear()  # .to(), .half(), ...: a specialised forward may hold a buffer's old form
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - nn.Module's
        self._specialised.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def _advance_step(self) -> None:
        """After a training-mode call of a spec with schedules: the step counter moves on."""
        if not _is_compiling() and torch.is_inference_mode_enabled():
            # no backward to come, and a new tensor made here would be an inference tensor
            if self._weights:  # the step kept for last_terms is this one, which += changes
                self._last[0] = (*self._last[0][:-1], self.step_count.clone())
            self.step_count += 1
        else:
            # A new tensor, not += 1: under torch.compile the backward recomputes the schedules from
            # the counter, and read the advanced one (warmup(3) at step 0 passed 1/3 of the gradient).
            self.step_count = self.step_count + 1

    def _call_term(self, index: int, term: Callable[..., torch.Tensor], arguments: list[torch.Tensor], step: torch.Tensor | None,
                   *extra: torch.Tensor) -> torch.Tensor:
        """Term ``index`` on its inputs: silenced while its weights are 0, torch's errors as E402."""
        if self._silencers[index] is not None:  # under a weight that can be 0: no gradient while it is
            arguments = _silence(arguments, self._silencers[index](step))
        try:  # free when nothing is raised: the happy path gains no check and no sync
            return term(*arguments, *extra)
        except (IndexError, RuntimeError) as exc:
            if isinstance(exc, _NOT_INPUT_ERRORS):  # out of memory is the machine's, not the input's
                raise
            raise self._torch_error(index, arguments, exc) from None

    def _torch_error(self, index: int, arguments: list[torch.Tensor], exc: Exception) -> LossSpecError:
        """torch's error inside a term (an index out of range, mostly) as E402 naming the term's
        index inputs (its integer and bool tensors; all its inputs when it has none) and its place."""
        term = self.plan.terms[index]
        names = [name for name, tensor in zip(term.inputs, arguments) if not tensor.is_floating_point()]
        names = names or list(term.inputs)
        subject = f"input '{names[0]}' of " if len(names) == 1 else "".join(
            ["inputs ", ", ".join(f"'{n}'" for n in names), " of "] if names else [])  # l2() reads none
        lines = str(exc).strip().splitlines()
        problem = f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"
        hint = None
        if any(word in problem.lower() for word in ("index", "bounds", "range")):
            hint = ("class indices lie in [0, C) or equal ignore_index; with groups=K, group codes lie in [0, K) "
                    "(leave groups= out for any codes)")
        return LossSpecError([Diagnostic("E402", f"{subject}{term.where}: torch raised {problem}", hint=hint)])

    def _check_finite(self, values: list[torch.Tensor], arguments: list[list[torch.Tensor]]) -> None:
        """``check_finite``: the first term whose value is NaN or infinite is E405, with its inputs that are."""
        for term, value, tensors in zip(self.plan.terms, values, arguments):
            if bool(torch.isfinite(value).all()):  # a host synchronisation: opt-in
                continue
            kind = "NaN" if bool(torch.isnan(value).any()) else "infinite"
            bad = [
                name for name, tensor in zip(term.inputs, tensors)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
            ]
            listed = ", ".join(f"'{n}'" for n in bad)
            cause = f"; its input{'s' * (len(bad) > 1)} {listed} hold{'s' * (len(bad) == 1)} NaN or inf" if bad else ""
            raise LossSpecError(f"{term.where} is {kind}{cause}", code="E405")

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
    def audit_values(
        self, inputs: dict[str, torch.Tensor], chunk_size: int
    ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]], int]:
        """``lossdsl.audit``'s numbers, on the device: each term's audited value over all of
        ``inputs`` (a term with ``audit`` sums its groups ``chunk_size`` rows at a time), each
        constraint's (value, bound) built from them, and the number of rows. Eval mode, no grad;
        nothing in the module changes."""
        tensors = self._gather(inputs)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                values = [self._audit_term(index, [tensors[i] for i in positions], chunk_size)
                          for index, positions in enumerate(self._term_inputs)]
                step = self.step_count if self._scheduled else None
                let_values: list[torch.Tensor] = []
                for let in self._lets:
                    let_values.append(let(values, let_values, step))
                pairs = [(value_of(values, let_values, step), bound_of(values, let_values, step))
                         for value_of, bound_of, *_ in self._constraints]
        finally:
            self.train(was_training)
        rows = next((t.shape[0] for t in tensors if t.dim()), 1) if tensors else 0
        return values, pairs, rows

    def _audit_term(self, index: int, arguments: list[torch.Tensor], chunk_size: int) -> torch.Tensor:
        term = self.terms[index]
        audit_term = getattr(term, "audit", None)
        try:
            if audit_term is not None:
                return audit_term(*arguments, chunk_size=chunk_size)
            value = term(*arguments)
        except (IndexError, RuntimeError) as exc:
            if isinstance(exc, LossSpecError):
                raise
            raise self._torch_error(index, arguments, exc) from None
        return value[0] if isinstance(value, tuple) else value

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
        return type(self)(bind(self.plan, self._param_values, {**(values or {}), **params}))

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
        their class weights, 0 when all are ignored, so one target's class weight cancels, as in
        ``F.cross_entropy(weight=w)`` on that sample alone; ``sum``: their sum), times the sample's
        ``sample_weight`` when the term has one. Weights, params and schedules apply as in the
        forward, at the current step. Nothing is updated: the step counter does not move and
        ``ce(weight=balanced)`` reads its class counts without adding the batch. Differentiable.
        A spec with a batch-level term (fairness, dice(batch=true), soft_f1, l1/l2, custom terms) or a
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
        step = self.step_count if self._scheduled else None
        values: list[torch.Tensor] = []
        for index, (term, plan, positions) in enumerate(zip(self.terms, self.plan.terms, self._term_inputs)):
            given = [tensors[i] for i in positions]
            weighted = getattr(plan.params, "sample_weight", None) is not None
            ones: tuple[torch.Tensor, ...] = ()
            if term.per_sample and not weighted:  # such a forward reduces through reduce when weighted
                first = given[0]
                n = first.shape[0] if first.dim() else 1
                dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
                ones = (torch.ones(n, dtype=dtype, device=first.device),)
            training = term.training
            term.training = False  # no counts added
            try:
                sums = self._call_term(index, term.per_sample_parts, given, step, *ones)  # [N, 2]: numerator, denominator
            finally:
                term.training = training
            value = weighted_mean(sums[:, 0], sums[:, 1])
            if weighted:
                value = value * given[-1].to(value.dtype)
            if values and value.shape != values[0].shape:
                raise LossSpecError(f"per_sample(): {plan.where} has {value.shape[0]} samples but "
                                    f"{self.plan.terms[0].where} has {values[0].shape[0]}", code="E402")
            values.append(value)
        training = [weighting.training for weighting in self._weightings]
        for weighting in self._weightings:
            weighting.training = False  # dwa() records no step
        try:
            let_values: list[torch.Tensor] = []
            for let in self._lets:
                let_values.append(let(values, let_values, step))
            return self._objective(values, let_values, step)
        finally:
            for weighting, mode in zip(self._weightings, training):
                weighting.training = mode

    def extra_repr(self) -> str:
        objective = self.plan.spec.objective
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




class _Declaration:
    """Checks one input against its ``inputs:`` declaration at call time (shapes and dtypes only: no sync)."""

    def __init__(self, decl: ast.InputDecl):
        self.name, self.kind, self.shape = decl.name, decl.type, decl.shape
        filename, line = (decl.span.filename, decl.span.line) if decl.span else (None, "?")
        self.where = f"declared {decl.type}{_shape_text(decl.shape)} at {filename or '<spec>'}:{line}"

    def check(self, tensor: torch.Tensor, sizes: dict[str, tuple[int, str]]) -> None:
        if self.kind in kinds.FLOAT and not tensor.is_floating_point():
            self.fail(f"expected a floating-point tensor, got {tensor.dtype}")
        if self.kind in kinds.INDEX and (tensor.is_floating_point() or tensor.is_complex()):
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

    def __init__(self, term_index: dict[int, int], let_index: dict[str, int], params: Mapping[str, float],
                 intervals: folding.Intervals):
        self.term_index, self.let_index, self.params = term_index, let_index, params
        self.intervals = intervals  # bind's: the numbers' values, folded and checked
        self.schedules = 0
        self.weightings: list[Weighting] = []  # uncertainty(...), dwa(...): one module each
        self.weights: dict[int, Combine] = {}  # the weights that move (schedules), for ``silencers``
        self.moving: list[tuple[ObjectiveExpr, Combine]] = []  # (the loss, its moving weight), for last_terms
        # What the straight-line forward (``lossdsl.codegen``) reads, by node id: each node's closure,
        # the numbers folded, the number arithmetic that is not folded, and each Number * Loss's
        # (number first?, the number when fixed).
        self.closures: dict[int, Combine] = {}
        self.constants: dict[int, float] = {}
        self.numbers: set[int] = set()
        self.weighings: dict[int, tuple[bool, float | None]] = {}

    def terms_in(self, expr: ObjectiveExpr, plan: Plan) -> set[int]:
        """The terms one expression reaches (through lets too)."""
        return self._reached([expr], {let.name: let.value for let in plan.lets})

    def terms_reached(self, plan: Plan) -> tuple[set[int], set[int]]:
        """The terms the objective reaches and those the constraints reach (through lets too)."""
        lets = {let.name: let.value for let in plan.lets}
        objective = self._reached([plan.objective] if plan.objective is not None else [], lets)
        constraints = self._reached([e for c in plan.constraints for e in (c.value, c.bound)], lets)
        return objective, constraints

    def _reached(self, roots: list[ObjectiveExpr], lets: dict[str, ObjectiveExpr]) -> set[int]:
        """The terms in ``roots``; each let is walked once (linear in the spec)."""
        found: set[int] = set()
        seen: set[str] = set()
        pending = list(roots)
        while pending:
            for expr in pending.pop().find_all((TermValue, LetValue)):
                if isinstance(expr, TermValue):
                    found.add(self.term_index[id(expr.term)])
                elif expr.name not in seen and expr.name in lets:
                    seen.add(expr.name)
                    pending.append(lets[expr.name])
        return found

    def __call__(self, expr: ObjectiveExpr) -> Combine:
        combine = self._resolve(expr)
        self.closures[id(expr)] = combine
        return combine

    def _resolve(self, expr: ObjectiveExpr) -> Combine:
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
        if isinstance(expr, Weighted):
            model, module_class = WEIGHTINGS[expr.kind]
            weighting = module_class(expr.params, len(expr.operands), _weighting_where(expr))
            self.weightings.append(weighting)
            for i, operand in enumerate(expr.operands):  # last_terms' weight/<loss>: the weights now
                self.moving.append((operand, lambda terms, lets, step, w=weighting, i=i: w.weights()[i]))
            operands = [self(operand) for operand in expr.operands]
            return lambda terms, lets, step: weighting([operand(terms, lets, step) for operand in operands])
        value = self.constant(expr)
        if value is not None:
            self.constants[id(expr)] = value
            return lambda terms, lets, step: value
        if isinstance(expr, Negate):
            operand = self(expr.operand)
            return lambda terms, lets, step: -operand(terms, lets, step)
        assert isinstance(expr, Arithmetic)
        is_number = folding.is_number(expr, self.params, self.intervals)  # (bind checked divisors and sizes)
        op = ARITHMETIC[expr.op].function
        left, right = self(expr.left), self(expr.right)
        if is_number:
            self.numbers.add(id(expr))
        if expr.op == "*" and not is_number:
            return self._weigh(expr, left, right)
        return lambda terms, lets, step: op(left(terms, lets, step), right(terms, lets, step))

    def _weigh(self, expr: Arithmetic, left: Combine, right: Combine) -> Combine:
        """Number * Loss (either way round). A weight of 0 silences the loss: 0, not 0 * inf = NaN.
        (Its gradient is cut at the term's inputs: see ``silencers``.)"""
        number_first = folding.is_number(expr.left, self.params, self.intervals)
        number, loss = (left, right) if number_first else (right, left)
        fixed = self.constant(expr.left if number_first else expr.right)
        self.weighings[id(expr)] = (number_first, fixed)
        if fixed == 0:  # a literal or a param of 0: still in the graph, so gradients are 0 (as 0 * loss), not None
            return lambda terms, lets, step: _zero_keeping_graph(loss(terms, lets, step))
        if fixed is not None:
            return lambda terms, lets, step: fixed * loss(terms, lets, step)
        self.moving.append((expr.right if number_first else expr.left, number))

        def weighed(terms: Values, lets: Values, step: torch.Tensor | None) -> torch.Tensor:
            weight = number(terms, lets, step)
            return torch.where(weight == 0, 0.0, weight * loss(terms, lets, step))  # no sync

        return weighed

    def silencers(self, plan: Plan) -> tuple[Callable[[torch.Tensor | None], torch.Tensor | bool] | None, ...]:
        """Per term: None, or a function of the step that is True while the term's every use in the
        objective is weighed by a number that is 0 (``warmup(50) * kl`` at step 0, ``lam * fair`` with
        lam = 0). The forward then passes the term inputs without their gradient: the weighed value
        is 0, but the term's own backward would still give 0 * inf = NaN where its derivative is inf.
        A term a constraint reads is never silenced (its multiplier weighs it, not a number)."""
        let_uses: dict[str, _Uses] = {}
        for let in plan.lets:  # in dependency order: each let's lets come first
            let_uses[let.name] = self._uses(let.value, let_uses) or {}
        uses = self._uses(plan.objective, let_uses) or {}
        for constraint in plan.constraints:
            for expr in (constraint.value, constraint.bound):
                uses = _merge_uses(uses, {term: None for term in self._uses(expr, let_uses) or {}})
        silencers: list = [None] * len(self.term_index)
        for term, weights in uses.items():
            if weights is not None:
                silencers[term] = self._silencer(weights)
        return tuple(silencers)

    def _uses(self, expr: ObjectiveExpr, let_uses: dict[str, _Uses]) -> _Uses | None:
        """The terms in ``expr``, each with the weights that can be 0 over each of its uses; None for a number."""
        if isinstance(expr, TermValue):
            return {self.term_index[id(expr.term)]: None}
        if isinstance(expr, LetValue):
            return let_uses[expr.name]
        if isinstance(expr, Negate):
            return self._uses(expr.operand, let_uses)
        if isinstance(expr, Weighted):  # its weights are never 0: the uses inside it decide
            uses: _Uses = {}
            for operand in expr.operands:
                uses = _merge_uses(uses, self._uses(operand, let_uses) or {})
            return uses
        if not isinstance(expr, Arithmetic):
            return None  # a number
        left, right = self._uses(expr.left, let_uses), self._uses(expr.right, let_uses)
        if left is None and right is None:
            return None
        if left is not None and right is not None:
            return _merge_uses(left, right)
        loss, weight = (right, expr.left) if left is None else (left, expr.right)
        if expr.op == "/":  # a divisor is never 0
            return loss
        fixed = self.constant(weight)
        if fixed is not None:  # 0: every use is silent; any other number silences nothing
            return {term: frozenset() for term in loss} if fixed == 0 else loss
        self.weights[id(weight)] = self(weight)
        key = frozenset({id(weight)})
        return {
            term: _bounded(frozenset({key}) if weights is None else frozenset(w | key for w in weights))
            for term, weights in loss.items()
        }

    def _silencer(self, weights: frozenset[frozenset[int]]) -> Callable[[torch.Tensor | None], torch.Tensor | bool]:
        """True (a bool tensor) while each use has a weight at 0; a term whose every use is silent always: True."""
        if not weights:
            return lambda step: True
        uses = [[self.weights[key] for key in use] for use in weights]

        def silent(step: torch.Tensor | None) -> torch.Tensor:
            result = None
            for use in uses:
                zero = None
                for weight in use:
                    is_zero = weight((), (), step) == 0
                    zero = is_zero if zero is None else zero | is_zero
                result = zero if result is None else result & zero
            return result

        return silent

    def constant(self, expr: ObjectiveExpr) -> float | None:
        """The value of number arithmetic over params, computed once here; None for losses and schedules."""
        return folding.constant(expr, self.params, self.intervals)


def _weight_labels(moving: list[tuple[ObjectiveExpr, Combine]]) -> tuple[tuple[str, Combine], ...]:
    """``weight/<loss>`` for each moving weight: the loss's label (a term's, a let's) or its arithmetic;
    a loss weighed twice is numbered (``weight/kl``, ``weight/kl_2``)."""
    labels: list[tuple[str, Combine]] = []
    seen: dict[str, int] = {}
    for loss, weight in moving:
        label = f"weight/{_expr_label(loss)}"
        seen[label] = seen.get(label, 0) + 1
        labels.append((label if seen[label] == 1 else f"{label}_{seen[label]}", weight))
    return tuple(labels)


def _expr_label(expr: ObjectiveExpr) -> str:
    """A short text of an objective expression: labels, names and numbers, arithmetic in parentheses."""
    if isinstance(expr, TermValue):
        return expr.term.label
    if isinstance(expr, LetValue):
        return expr.name
    if isinstance(expr, Negate):
        return f"-{_expr_label(expr.operand)}"
    if isinstance(expr, Arithmetic):
        return f"({_expr_label(expr.left)}{expr.op}{_expr_label(expr.right)})"
    if isinstance(expr, (ScheduleValue, Weighted)):
        return expr.kind
    return str(getattr(expr, "name", getattr(expr, "value", "?")))


def _weighting_where(expr: Weighted) -> str:
    """``uncertainty() at spec:3:8 (weighing mse, mse_2)``: the place and the terms it weighs, for warnings."""
    found = (node for operand in expr.operands for node in operand.find_all((TermValue, LetValue)))
    weighed = ", ".join(dict.fromkeys(node.term.label if isinstance(node, TermValue) else node.name for node in found))
    return f"{expr.where} (weighing {weighed})"


#: Per term index: None when some use of the term is under no weight that can be 0, else the set of
#: its uses, each the set of its weights that move (by id); an empty set: every use is weighed by 0.
_Uses = dict[int, "frozenset[frozenset[int]] | None"]
_MAX_USES = 16  # beyond this a term is simply not silenced (a spec that large weighs little at 0)


def _merge_uses(a: _Uses, b: _Uses) -> _Uses:
    merged = dict(a)
    for term, weights in b.items():
        if term not in merged:
            merged[term] = weights
        else:
            other = merged[term]
            merged[term] = None if weights is None or other is None else _bounded(other | weights)
    return merged


def _bounded(weights: frozenset[frozenset[int]]) -> frozenset[frozenset[int]] | None:
    if len(weights) > _MAX_USES or any(len(use) > _MAX_USES for use in weights):
        return None
    return weights


def _silence(arguments: list[torch.Tensor], silent: torch.Tensor | bool) -> list[torch.Tensor]:
    """The term's inputs, passing no gradient where ``silent``: ``where`` gives the masked branch a
    zero gradient without multiplying, so a NaN from inside the term does not reach the model."""
    if silent is True:  # kept in the graph: the inputs get gradient 0, not None, as under 0 * loss
        silent = torch.ones((), dtype=torch.bool, device=arguments[0].device) if arguments else True
    if silent is True:
        return arguments
    return [torch.where(silent, tensor.detach(), tensor) if tensor.requires_grad else tensor for tensor in arguments]


def _zero_keeping_graph(value: torch.Tensor) -> torch.Tensor:
    """0 in ``value``'s shape, with gradient 0 to it (``0 * value`` would be NaN for an infinite value)."""
    return torch.where(torch.ones_like(value, dtype=torch.bool), 0.0, value)
