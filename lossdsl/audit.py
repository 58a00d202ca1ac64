"""``lossdsl.audit``: every term's and constraint's exact value over a whole data set, in one call.

What a constraint promises is judged on the audited numbers: fairness rates from hard predictions
(fairlearn's metrics), over all the rows given, not one batch's soft rates. The terms are summed
chunk by chunk on the inputs' device, and the values are read to the host once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by audit() itself: ``import lossdsl`` stays free of it
    import torch

    from .runtime import LossModule


@dataclass(frozen=True)
class ConstraintAudit:
    """One ``subject to``: its audited value, its bound, and whether the value keeps it."""

    name: str
    value: float
    op: str
    bound: float
    holds: bool

    @property
    def excess(self) -> float:
        """How far past the bound (negative: the slack); ``|value - bound|`` for ``==``."""
        if self.op == "==":
            return abs(self.value - self.bound)
        return self.bound - self.value if self.op == ">=" else self.value - self.bound


@dataclass(frozen=True)
class AuditReport:
    """``terms``: each term's audited value by its ``last_terms`` label; ``constraints``: by name."""

    terms: dict[str, float]
    constraints: dict[str, ConstraintAudit]
    rows: int

    @property
    def holds(self) -> bool:
        """Whether every constraint holds on the data."""
        return all(c.holds for c in self.constraints.values())

    def __str__(self) -> str:
        lines = [f"audit over {self.rows} rows"]
        width = max((len(name) for name in (*self.terms, *self.constraints)), default=4)
        for label, value in self.terms.items():
            lines.append(f"  {label:<{width}}  {value:.6g}")
        for c in self.constraints.values():
            verdict = "holds" if c.holds else f"VIOLATED by {c.excess:.4g}"
            lines.append(f"  {c.name:<{width}}  {c.value:.6g} {c.op} {c.bound:g}: {verdict}")
        return "\n".join(lines)


#: An equality holds within this relative tolerance (the values are float32 sums).
EQUALITY_TOLERANCE = 1e-6


def audit(
    loss_fn: LossModule,
    pred: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    *,
    chunk_size: int = 65536,
    **inputs: torch.Tensor,
) -> AuditReport:
    """Each term's and each constraint's value over a whole data set: the inputs as for a call of
    ``loss_fn`` (the model's outputs on every row, the labels, the group codes...).

    Fairness terms give their audited value: rates from hard predictions ``pred > 0``, summed per
    group over all rows (``chunk_size`` at a time), equal to fairlearn's metric on the same
    predictions; no window and no batch. Other terms are computed once over all rows in eval
    mode. Constraints compare their value (built from the terms' audited values) with their bound.
    Nothing in ``loss_fn`` changes (its multipliers, windows and step counter stay as they are).
    """
    import torch

    from .runtime import LossModule

    if not isinstance(loss_fn, LossModule):
        raise TypeError(f"audit() takes a compiled loss (lossdsl.compile(...)), got {type(loss_fn).__name__}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise TypeError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if pred is not None:
        inputs["pred"] = pred
    if target is not None:
        inputs["target"] = target
    values, pairs, rows = loss_fn.audit_values(inputs, chunk_size)
    # One read to the host for everything.
    numbers = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()).cpu()
                           for v in (*values, *(x for pair in pairs for x in pair))]).tolist()
    term_values = dict(zip((t.label for t in loss_fn.plan.terms), numbers[: len(values)]))
    constraints = {}
    for index, constraint in enumerate(loss_fn.plan.constraints):
        value, bound = numbers[len(values) + 2 * index], numbers[len(values) + 2 * index + 1]
        if constraint.op == "<=":
            holds = value <= bound
        elif constraint.op == ">=":
            holds = value >= bound
        else:
            holds = abs(value - bound) <= EQUALITY_TOLERANCE * max(1.0, abs(bound))
        constraints[constraint.name] = ConstraintAudit(constraint.name, value, constraint.op, bound, holds)
    return AuditReport(term_values, constraints, rows)
