"""Synthetic inputs from an ``inputs:`` block, for ``lossdsl explain`` and ``lossdsl verify``."""

from __future__ import annotations

import torch

from .errors import Diagnostic, LossSpecError
from .plan import Plan

#: Sizes given to symbolic dimensions: N the batch, C 3, anything else 4.
DEFAULT_SIZES = {"N": 8, "C": 3}


def synthetic_inputs(
    plan: Plan, batch: int = 8, dtype: torch.dtype = torch.float32, scale: float = 1.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One tensor per declared input, of its kind and shape. ``scale`` multiplies logits (extremes)."""
    if len(plan.declared) != len(plan.inputs):
        missing = [name for name in plan.inputs if name not in {d.name for d in plan.declared}]
        raise LossSpecError(
            [Diagnostic("E108", f"synthetic inputs need an inputs: block declaring {', '.join(missing)}",
                        hint="declare every input with its kind and shape, e.g. pred: logits[N, C]")]
        )
    generator = torch.Generator().manual_seed(seed)
    sizes = {**DEFAULT_SIZES, "N": batch}

    def shape_of(decl) -> tuple[int, ...]:  # noqa: ANN001
        return tuple(d if isinstance(d, int) else sizes.get(d, 4) for d in (decl.shape or ("N",)))

    # Class labels index the class dimension of the logits (two classes for binary logits).
    multiclass = [shape_of(d) for d in plan.declared if d.type == "logits" and len(shape_of(d)) > 1]
    classes = multiclass[0][1] if multiclass else 2
    tensors = {}
    for decl in plan.declared:
        shape = shape_of(decl)
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
