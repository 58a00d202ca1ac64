"""Synthetic inputs for ``lossdsl explain`` and ``lossdsl verify``: from the ``inputs:`` block, or
inferred from the terms that read each input.

Each term gives the layouts its inputs may take (``TermDef.layouts``: shapes, and the kinds that fit
them, which may follow its arguments: three class weights mean logits [N, 3], a list of four
``pos_weight`` entries pred [N, 4]). One layout is picked per term, the most preferred first, so that
an input several terms read gets one shape and a kind each of them accepts (``dice() + bce()``:
float masks of the logits' shape); declared inputs keep their declaration.

A layout also says what the values need (``registry.Fit``): which dimension of the scores counts the
classes that labels beside them index (dim 1 unless it says: V of token logits [B, T, V]), and
which integer inputs hold lengths along another input's dimension (``ctc``'s input lengths, T of
log_probs [T, N, C]). A scalar declared ``NAME: KIND[]`` is a 0-dimensional tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ast
from .errors import LossSpecError
from .kinds import INDEX, KINDS, Synthesis
from .plan import Plan, TermPlan
from .registry import Fit

#: Sizes given to symbolic dimensions: N the batch, C 3, anything else 4.
DEFAULT_SIZES = {"N": 8, "C": 3}
OTHER_SIZE = 4
#: The largest synthetic tensor: declared sizes are taken as written.
MAX_ELEMENTS = 10**7
#: Layouts tried before giving up on agreement (each term then takes its first).
MAX_TRIES = 20_000
#: The kinds whose second dimension counts the classes that labels beside them index.
_SCORES = ("logits", "probs")


@dataclass(frozen=True)
class _Need:
    """What one term's layout needs of one input: a symbolic shape and the kinds that fit (None: any);
    in the layout a term chose, also the dimension counting the classes (``Fit.classes``) and, for
    lengths, (the input they measure, its dimension, whether every length is that dimension's size)."""

    shape: tuple[str | int, ...]
    kinds: tuple[str, ...] | None
    classes: int | None = None
    lengths: tuple[str, int, bool] | None = None


def _reading_terms(plan: Plan) -> list[TermPlan]:
    """Every term that reads inputs, the terms nested in others (``group_loss(mse)``) included."""
    return [nested for term in plan.terms for nested in (*term.params.nested_terms(), term)]


def _needs(term: TermPlan, layout: dict) -> dict[str, _Need]:
    """The inputs a term reads through its input parameters, as one of its layouts shapes them.
    Inputs read inside a condition or expression (``soft_bound(y <= 1)``) take any shape."""
    needs = {}
    for role in term.params.input_roles():
        value = getattr(term.params, role)
        accepted = term.params.kinds(role)
        entry = layout.get(role)
        classes = lengths = None
        if isinstance(entry, Fit):
            shape, classes = entry.shape, entry.classes
            kinds = tuple(k for k in (accepted or entry.kinds) if k in entry.kinds) if entry.kinds else accepted
            measured = getattr(term.params, entry.lengths.of, None) if entry.lengths else None
            if isinstance(measured, str):  # the role's input name
                lengths = (measured, entry.lengths.dim, entry.lengths.full)
        else:
            shape, kinds = entry, accepted
        if shape is None:
            shape = ("N", "D") if kinds and kinds[0] == "embedding" else ("N",)
        for name in value if isinstance(value, tuple) else (value,):
            needs[name] = _Need(tuple(shape), kinds, classes, lengths)
    return needs


def _declared_shape(decl: ast.InputDecl) -> tuple[str | int, ...]:
    """A declaration's shape: [N] when it gives none, () for a scalar (``count: weight[]``)."""
    return ("N",) if decl.shape is None else tuple(decl.shape)


def _sized(shape: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Every dimension a number but the batch N: C 3, the other symbols 4."""
    return tuple(d if d == "N" or isinstance(d, int) else DEFAULT_SIZES.get(d, OTHER_SIZE) for d in shape)


def _merge(kinds: tuple[str, ...] | None, other: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if kinds is None or other is None:
        return other if kinds is None else kinds
    return tuple(k for k in kinds if k in other)


# A layout's symbol (C, D, ...) while the search runs: (symbol, the index of the term whose layout
# wrote it), so that the C of one term's layout is not another's until unification makes it so.
_Var = tuple[str, int]


class _Search:
    """Picks one layout per term so that the inputs they share agree; see ``_solve``."""

    def __init__(self, fixed: dict[str, _Need]):
        self.assigned: dict[str, _Need] = dict(fixed)
        self.bound: dict[_Var, object] = {}  # a symbol -> a size, "N" excluded, or another symbol

    def resolve(self, dim: object) -> object:
        while isinstance(dim, tuple) and dim in self.bound:
            dim = self.bound[dim]
        return dim

    def add(self, term: int, needs: dict[str, _Need]) -> tuple[dict, list] | None:
        """Add a term's layout; return what to undo, or None (nothing changed) if it contradicts."""
        symbolic = {name: _Need(tuple(d if d == "N" or isinstance(d, int) else (d, term) for d in need.shape),
                                need.kinds) for name, need in needs.items()}
        previous: dict[str, _Need | None] = {}
        bound: list[_Var] = []
        for name, need in symbolic.items():
            have = self.assigned.get(name)
            kinds = need.kinds if have is None else _merge(have.kinds, need.kinds)
            if have is not None and (kinds == () or not self._unify(need.shape, have.shape, bound)):
                self.undo(previous, bound)
                return None
            previous[name] = have
            self.assigned[name] = _Need(need.shape if have is None else have.shape, kinds)
        return previous, bound

    def _unify(self, shape: tuple, have: tuple, bound: list[_Var]) -> bool:
        if len(shape) != len(have):
            return False
        for dim, other in zip(shape, have):
            dim, other = self.resolve(dim), self.resolve(other)
            if dim == other:
                continue
            if isinstance(dim, tuple) and other != "N":
                self.bound[dim] = other
                bound.append(dim)
            elif isinstance(other, tuple) and dim != "N":
                self.bound[other] = dim
                bound.append(other)
            else:  # two sizes, or a size against the batch
                return False
        return True

    def undo(self, previous: dict[str, _Need | None], bound: list[_Var]) -> None:
        for var in bound:
            del self.bound[var]
        for name, need in previous.items():
            if need is None:
                del self.assigned[name]
            else:
                self.assigned[name] = need

    def sized(self) -> dict[str, _Need]:
        """The needs with every symbol a number: as unified, else its default (C 3, others 4)."""
        def size(dim: object) -> object:
            dim = self.resolve(dim)
            return DEFAULT_SIZES.get(dim[0], OTHER_SIZE) if isinstance(dim, tuple) else dim

        return {name: _Need(tuple(size(d) for d in need.shape), need.kinds) for name, need in self.assigned.items()}


def _solve(plan: Plan) -> tuple[dict[str, _Need], list[dict[str, _Need]]]:
    """Each input's need (shape and kinds), and each reading term's chosen layout as needs.

    A depth-first search over the terms' layouts in order of preference, keeping each input's
    shape equal (a layout's symbols unify with the sizes and symbols of the others: ``focal()``'s
    [N, C] takes the 2 of ``bce(pos_weight=[1, 2])``'s [N, 2]) and its kinds shared by every term
    that reads it. When no layouts agree (or the search runs long), every term takes its first,
    and the call then reports what does not fit.
    """
    terms = _reading_terms(plan)
    options = [[_needs(term, dict(layout)) for layout in term.term.layouts(term.params)] for term in terms]
    fixed = {decl.name: _Need(_sized(_declared_shape(decl)), (decl.type,)) for decl in plan.declared}
    search = _Search(fixed)
    chosen: list[int] = []
    undo: list[tuple[dict, list]] = []
    tries = start = 0
    while len(chosen) < len(terms) and tries < MAX_TRIES:
        index = len(chosen)
        for option in range(start, len(options[index])):
            tries += 1
            changes = search.add(index, options[index][option])
            if changes is not None:
                undo.append(changes)
                chosen.append(option)
                start = 0
                break
        else:  # no layout of this term fits: take the previous term's next one
            if not chosen:
                break
            search.undo(*undo.pop())
            start = chosen.pop() + 1
    if len(chosen) == len(terms):
        return search.sized(), [layouts[option] for layouts, option in zip(options, chosen)]
    assigned = dict(fixed)  # no agreement: first layouts, the first reader's need for each input
    for layouts in options:
        for name, need in layouts[0].items():
            assigned.setdefault(name, _Need(_sized(need.shape), need.kinds))
    return assigned, [layouts[0] for layouts in options]


def declarations(plan: Plan) -> list[ast.InputDecl]:
    """The declared inputs, and for the rest a declaration inferred from the terms that read them:
    the shape of the layouts picked (``[N]`` for inputs no term shapes), the first kind every
    reader accepts (``real`` for inputs read inside expressions)."""
    return _declarations(plan)[0]


def _declarations(plan: Plan) -> tuple[list[ast.InputDecl], list[dict[str, _Need]]]:
    """``declarations``, and each reading term's chosen layout (as in ``_solve``)."""
    declared = {decl.name: decl for decl in plan.declared}
    needs, chosen = _solve(plan)
    result = []
    for name in plan.inputs:
        if name in declared:
            result.append(declared[name])
            continue
        need = needs.get(name, _Need(("N",), None))
        kind = need.kinds[0] if need.kinds else "real"
        groups = None
        if kind == "group":  # codes in [0, groups) of every term that counts them
            counts = [getattr(term.params, "groups", None) for term, layout in zip(_reading_terms(plan), chosen)
                      if name in layout]
            groups = min((c for c in counts if c), default=None)
        result.append(ast.InputDecl(name=name, type=kind, shape=need.shape, groups=groups))
    return result, chosen


def synthetic_inputs(
    plan: Plan, batch: int = 8, dtype: torch.dtype = torch.float32, scale: float = 1.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One tensor per input, of its declared (or inferred) kind and shape; ``scale`` multiplies logits
    and reals (for extremes)."""
    decls, chosen = _declarations(plan)
    generator = torch.Generator().manual_seed(seed)
    shapes = {decl.name: tuple(batch if d == "N" else d for d in _sized(_declared_shape(decl))) for decl in decls}
    kinds = {decl.name: decl.type for decl in decls}
    classes = _class_counts(plan, chosen, shapes, kinds)
    lengths = _length_bounds(chosen, shapes, kinds)
    tensors = {}
    for decl in decls:
        shape = shapes[decl.name]
        if math.prod(shape) > MAX_ELEMENTS:
            raise LossSpecError(
                f"input '{decl.name}' of shape {shape} is too large for synthetic inputs "
                f"(at most {MAX_ELEMENTS:,} elements)", code="E402",
            )
        if decl.name in lengths:  # lengths along another input's dimension (ctc's frames, target lengths)
            most, full = lengths[decl.name]
            low = most if full else min(1, most)
            tensors[decl.name] = torch.randint(low, most + 1, shape, generator=generator)
            continue
        need = Synthesis(shape, generator, dtype, scale, classes.get(decl.name, 2), decl.groups or 3)
        value = KINDS[decl.type].synthesise(need)
        tensors[decl.name] = value
    return tensors


def _class_counts(plan: Plan, chosen: list[dict[str, _Need]], shapes: dict[str, tuple[int, ...]],
                  kinds: dict[str, str]) -> dict[str, int]:
    """How many classes each labels input may index: the fewest among the terms that read it, each
    the size of the class dimension of the scores beside the labels (as the term's layout gives it,
    ``Fit.classes``; else the second of logits or probs [N, C, ...]; 2 beside binary scores [N])."""
    counts: dict[str, int] = {}
    for term, layout in zip(_reading_terms(plan), chosen):
        names = term.inputs
        scores = []
        for name in names:
            shape, need = shapes.get(name, ()), layout.get(name)
            dim = need.classes if need is not None and need.classes is not None else (
                1 if kinds.get(name) in _SCORES else None)
            if dim is not None and len(shape) > dim:
                scores.append(shape[dim])
        for name in names:
            if kinds.get(name) == "labels":
                counts[name] = min(counts.get(name, math.inf), min(scores, default=2))
    return counts


def _length_bounds(chosen: list[dict[str, _Need]], shapes: dict[str, tuple[int, ...]],
                   kinds: dict[str, str]) -> dict[str, tuple[int, bool]]:
    """The integer inputs a chosen layout says hold lengths (``Fit.lengths``): the size of the
    dimension they run along (the smallest when several terms say so), and whether each length is
    that size."""
    bounds: dict[str, tuple[int, bool]] = {}
    for layout in chosen:
        for name, need in layout.items():
            if need.lengths is None or kinds.get(name) not in INDEX:
                continue
            measured, dim, full = need.lengths
            shape = shapes.get(measured, ())
            if -len(shape) <= dim < len(shape):
                most = min(shape[dim], bounds.get(name, (math.inf,))[0])
                bounds[name] = (most, full or bounds.get(name, (0, False))[1])
    return bounds
