"""Synthetic inputs for ``lossdsl explain`` and ``lossdsl verify``: from the ``inputs:`` block, or
inferred from the terms that read each input."""

from __future__ import annotations

import math

import torch

from . import ast
from .errors import LossSpecError
from .plan import Plan

#: Sizes given to symbolic dimensions: N the batch, C 3, anything else 4.
DEFAULT_SIZES = {"N": 8, "C": 3}
#: The largest synthetic tensor: declared sizes are taken as written.
MAX_ELEMENTS = 10**7


def declarations(plan: Plan) -> list[ast.InputDecl]:
    """The declared inputs, and for the rest a declaration inferred from the terms that read them:
    the first kind the reading parameter accepts (``real`` inside expressions), shaped ``[N]``
    (``[N, D]`` for embeddings) unless the term gives a shape for that parameter."""
    declared = {decl.name: decl for decl in plan.declared}
    inferred: dict[str, ast.InputDecl] = {}
    terms = [nested for term in plan.terms for nested in (*term.params.nested_terms(), term)]
    for term in terms:
        shapes = dict(term.term.shapes)
        roles = {getattr(term.params, role): role for role in term.params.input_roles()}
        for name in term.inputs:
            if name in declared or name in inferred:
                continue
            role = roles.get(name)
            kinds = term.params.kinds(role) if role else None
            kind = kinds[0] if kinds else ("weight" if role == "sample_weight" else "real")
            shape = shapes.get(role) or (("N", "D") if kind == "embedding" else ("N",))
            groups = getattr(term.params, "groups", None) if kind == "group" else None  # codes in [0, groups)
            inferred[name] = ast.InputDecl(name=name, type=kind, shape=shape, groups=groups)
    return [declared.get(name) or inferred[name] for name in plan.inputs]


def synthetic_inputs(
    plan: Plan, batch: int = 8, dtype: torch.dtype = torch.float32, scale: float = 1.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One tensor per input, of its declared (or inferred) kind and shape; ``scale`` multiplies logits
    and reals (for extremes)."""
    decls = declarations(plan)
    generator = torch.Generator().manual_seed(seed)
    sizes = {**DEFAULT_SIZES, "N": batch}

    def shape_of(decl) -> tuple[int, ...]:  # noqa: ANN001
        return tuple(d if isinstance(d, int) else sizes.get(d, 4) for d in (decl.shape or ("N",)))

    # Class labels index the class dimension of the logits (two classes for binary logits).
    multiclass = [shape_of(d) for d in decls if d.type == "logits" and len(shape_of(d)) > 1]
    classes = multiclass[0][1] if multiclass else 2
    tensors = {}
    for decl in decls:
        shape = shape_of(decl)
        if math.prod(shape) > MAX_ELEMENTS:
            raise LossSpecError(
                f"input '{decl.name}' of shape {shape} is too large for synthetic inputs "
                f"(at most {MAX_ELEMENTS:,} elements)", code="E402",
            )
        kind = decl.type
        if kind == "logits":
            value = torch.randn(shape, generator=generator, dtype=dtype) * scale
        elif kind == "probs":
            raw = torch.randn(shape, generator=generator, dtype=dtype)
            value = raw.softmax(dim=1) if len(shape) > 1 else raw.sigmoid()
        elif kind == "labels":
            value = torch.randint(0, classes, shape, generator=generator)
        elif kind in ("binary", "mask"):
            value = torch.randint(0, 2, shape, generator=generator)
        elif kind == "multihot":
            value = torch.randint(0, 2, shape, generator=generator).to(dtype)
        elif kind == "group":
            value = torch.randint(0, decl.groups or 3, shape, generator=generator)
        elif kind == "weight":
            value = torch.rand(shape, generator=generator, dtype=dtype) + 0.5
        else:  # real, embedding
            value = torch.randn(shape, generator=generator, dtype=dtype) * scale
        tensors[decl.name] = value
    return tensors
