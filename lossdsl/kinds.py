"""The input kinds an ``inputs:`` block may declare, one table: what each holds, the dtype a call
must pass, whether a model produces it (``lossdsl verify`` differentiates those), and how
``lossdsl verify``/``explain`` synthesise a tensor of it.

A new kind is one row here: the checker's list of kinds, the call-time dtype check, verify's learned
inputs and the synthetic inputs all read this table. (No torch at import: the checker reads the names.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Synthesis:
    """What a synthetic tensor of a kind needs: its shape, the random generator, the floating dtype,
    the scale of logits and reals, the classes labels may index, and the groups codes may take."""

    shape: tuple[int, ...]
    generator: torch.Generator
    dtype: torch.dtype
    scale: float
    classes: int
    groups: int


@dataclass(frozen=True)
class InputKind:
    name: str
    #: "float": a call must pass a floating-point tensor; "index": an integer one; "any": either.
    dtype: str
    #: Whether a model produces it, so that a check differentiates the loss with respect to it.
    learned: bool
    synthesise: Callable[[Synthesis], Any]
    description: str


def _normal(s: Synthesis) -> torch.Tensor:
    import torch

    return torch.randn(s.shape, generator=s.generator, dtype=s.dtype) * s.scale


def _probs(s: Synthesis) -> torch.Tensor:
    import torch

    raw = torch.randn(s.shape, generator=s.generator, dtype=s.dtype)
    return raw.softmax(dim=1) if len(s.shape) > 1 else raw.sigmoid()


def _codes(high: Callable[[Synthesis], int]) -> Callable[[Synthesis], Any]:
    def synthesise(s: Synthesis) -> torch.Tensor:
        import torch

        return torch.randint(0, high(s), s.shape, generator=s.generator)

    return synthesise


def _multihot(s: Synthesis) -> torch.Tensor:
    import torch

    return torch.randint(0, 2, s.shape, generator=s.generator).to(s.dtype)


def _weight(s: Synthesis) -> torch.Tensor:
    import torch

    return torch.rand(s.shape, generator=s.generator, dtype=s.dtype) + 0.5


KINDS: dict[str, InputKind] = {
    kind.name: kind
    for kind in (
        InputKind("logits", "float", True, _normal, "unnormalised scores (the default for pred)"),
        InputKind("probs", "float", False, _probs, "probabilities (softmax over dim 1, or sigmoid)"),
        InputKind("labels", "index", False, _codes(lambda s: s.classes), "class indices"),
        InputKind("binary", "any", False, _codes(lambda s: 2), "0/1 targets"),
        InputKind("multihot", "any", False, _multihot, "several 0/1 labels per sample"),
        InputKind("real", "float", True, _normal, "real values (regression)"),
        InputKind("group", "index", False, _codes(lambda s: s.groups), "group codes (fairness)"),
        InputKind("weight", "float", False, _weight, "per-sample weights"),
        InputKind("mask", "any", False, _codes(lambda s: 2), "0/1 masks (segmentation)"),
        InputKind("embedding", "float", True, _normal, "embedding vectors [N, D] (metric learning)"),
    )
}

NAMES: tuple[str, ...] = tuple(KINDS)
FLOAT = frozenset(name for name, kind in KINDS.items() if kind.dtype == "float")
INDEX = frozenset(name for name, kind in KINDS.items() if kind.dtype == "index")
LEARNED = frozenset(name for name, kind in KINDS.items() if kind.learned)
