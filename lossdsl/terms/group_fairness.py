"""Group-fairness penalties: ``fairness(STAT, group=G)``.

Rates are soft: computed per group from predicted probabilities, so they are
differentiable; on hard 0/1 predictions they equal fairlearn's metrics. Group
statistics are summed with one ``index_add`` over group slots, with no Python
loop over groups and no host synchronisation.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt

from ..registry import InputOf, SampleWeight, Term, TermParams, register

Statistic = Literal["dp_gap", "tpr_gap", "fpr_gap", "eo_gap"]


class FairnessParams(TermParams):
    positional = ("stat",)
    stat: Statistic = Field(
        description="dp_gap (selection rate), tpr_gap (equal opportunity), fpr_gap, eo_gap (worse of tpr and fpr gaps)"
    )
    group: InputOf("group") = Field(description="the input holding integer group codes [N]")
    groups: PositiveInt | None = Field(
        None, description="number of groups when known (codes in [0, groups)); cheaper than ranking the codes"
    )
    pred: InputOf("logits") = Field("pred", description="binary logits [N] or [N, 1] (sigmoid), or [N, 2] (softmax, class 1)")
    target: InputOf("binary", "labels") = Field("target", description="0/1 labels [N]; not read by dp_gap")
    sample_weight: SampleWeight = None

    def input_roles(self) -> tuple[str, ...]:
        roles = ("pred", "group") if self.stat == "dp_gap" else ("pred", "group", "target")
        return (*roles, "sample_weight") if self.sample_weight else roles


# Columns summed per group, as (numerator, denominator) pairs, by statistic.
_RATES = {
    "dp_gap": ("selection",),
    "tpr_gap": ("tpr",),
    "fpr_gap": ("fpr",),
    "eo_gap": ("tpr", "fpr"),
}


@register(
    "fairness",
    FairnessParams,
    "Group-fairness penalty: the gap between the largest and smallest group rate, from soft predictions.",
    example="fairness(eo_gap, group=race, groups=5)",
    noun="statistic",
)
class Fairness(Term):
    """Largest minus smallest group rate (fairlearn's ``between_groups`` difference).

    - With ``p`` the predicted probability of class 1 (``sigmoid(pred)``, or ``softmax(pred)[:, 1]``
      for ``[N, 2]``) and ``y`` the label, the per-group rates are soft: selection rate
      ``sum(p) / n_g`` (``dp_gap``), true-positive rate ``sum(p y) / sum(y)`` (``tpr_gap``),
      false-positive rate ``sum(p (1 - y)) / sum(1 - y)`` (``fpr_gap``); ``eo_gap`` is the larger of
      the tpr and fpr gaps. On hard 0/1 predictions these equal fairlearn's
      ``demographic_parity_difference``, ``true_positive_rate_difference``,
      ``false_positive_rate_difference`` and ``equalized_odds_difference``; on logits they are
      differentiable.
    - A group whose rate is undefined in the batch (absent, or without positives for tpr, without
      negatives for fpr) is left out; with fewer than two groups left the gap is 0, never NaN.
      fairlearn instead scores an undefined rate as 0, so with such a group the two differ.
    - Group codes are an integer (or bool) tensor ``[N]`` or ``[N, 1]``. Without ``groups``, the
      codes are ranked within the batch (sort, then ``index_add`` into N slots): any codes work,
      sparse, negative or large. With ``groups=K`` they index K slots directly (cheaper) and must
      lie in ``[0, K)``, which is not checked (that would synchronise with the device).
    - Group sums use one ``index_add``: no Python loop over groups, no host synchronisation.
      ``sample_weight`` weighs each sample in the group sums, as fairlearn's ``sample_weight``
      does. An empty batch gives 0.
    """

    def __init__(self, params: FairnessParams):
        super().__init__()
        self.rates = _RATES[params.stat]
        self.num_groups = params.groups
        self.dp = params.stat == "dp_gap"
        self.weighted = params.sample_weight is not None

    def forward(self, pred: torch.Tensor, group: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        """``rest`` is ``target`` (unless dp_gap), then ``sample_weight`` (when given)."""
        target = None if self.dp else rest[0]
        sample_weight = rest[-1] if self.weighted else None
        prob = self._positive_probability(pred)
        n = prob.shape[0]
        if group.shape not in ((n,), (n, 1)):
            self.fail(1, f"expected group codes of shape ({n},), got {tuple(group.shape)}")
        if group.is_floating_point() or group.is_complex():
            self.fail(1, f"expected integer group codes, got {group.dtype}")
        if target is not None:
            if target.shape not in ((n,), (n, 1)):
                self.fail(2, f"expected 0/1 labels of shape ({n},), got {tuple(target.shape)}")
            positive = (target if target.dim() == 1 else target[:, 0]).to(prob.dtype)
            negative = 1 - positive
        if n == 0:
            return prob.sum()
        columns: list[torch.Tensor] = []  # numerator, denominator per rate
        for rate in self.rates:
            if rate == "selection":
                columns += [prob, torch.ones_like(prob)]
            elif rate == "tpr":
                columns += [prob * positive, positive]
            else:
                columns += [prob * negative, negative]
        if sample_weight is not None:
            weight = self.expect_sample_weight(len(self.input_names) - 1, sample_weight, n, prob.dtype)
            columns = [column * weight for column in columns]
        slots, num_slots = self._slots(group if group.dim() == 1 else group[:, 0])
        sums = prob.new_zeros(num_slots, len(columns)).index_add_(0, slots, torch.stack(columns, dim=1))
        gaps = [_gap(sums[:, 2 * i], sums[:, 2 * i + 1]) for i in range(len(self.rates))]
        return gaps[0] if len(gaps) == 1 else torch.maximum(gaps[0], gaps[1])

    def _positive_probability(self, pred: torch.Tensor) -> torch.Tensor:
        self.expect_float(0, pred)
        if pred.dim() == 1:
            return torch.sigmoid(pred)
        if pred.dim() == 2 and pred.shape[1] == 1:
            return torch.sigmoid(pred[:, 0])
        if pred.dim() == 2 and pred.shape[1] == 2:
            return torch.sigmoid(pred[:, 1] - pred[:, 0])  # softmax(pred)[:, 1]
        self.fail(0, f"fairness() needs binary logits [N], [N, 1] or [N, 2], got shape {tuple(pred.shape)}")

    def _slots(self, codes: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Each sample's group slot, and the number of slots: static shapes, no sync."""
        if self.num_groups is not None:
            return codes.long(), self.num_groups
        # Rank the codes within the batch: a batch of N holds at most N groups.
        sorted_codes, order = torch.sort(codes)
        starts = torch.ones_like(sorted_codes, dtype=torch.long)
        starts[1:] = (sorted_codes[1:] != sorted_codes[:-1]).long()
        ranks = starts.cumsum(0) - 1
        return torch.empty_like(ranks).scatter_(0, order, ranks), codes.shape[0]


def _gap(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Largest minus smallest rate over the slots where the rate is defined; 0 if fewer than two."""
    defined = denominator > 0
    rate = numerator / torch.where(defined, denominator, torch.ones_like(denominator))
    # Rates lie in [0, 1]: the fill values never win and take no gradient.
    largest = rate.masked_fill(~defined, -1.0).amax()
    smallest = rate.masked_fill(~defined, 2.0).amin()
    return torch.where(defined.sum() >= 2, largest - smallest, torch.zeros_like(largest))
