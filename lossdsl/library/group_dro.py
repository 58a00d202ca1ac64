"""Group distributionally robust optimisation: ``group_dro(ce(), group=g, groups=K)``.

Sagawa et al. (2020), "Distributionally Robust Neural Networks for Group Shifts": the objective is
a weighted sum of the groups' mean losses, the weights ``q`` (a buffer, one per group) moving
towards the groups that do worst by exponentiated-gradient ascent. Group means use one
``index_add`` over the inner term's per-sample parts, in float64, as ``fairness(group_loss(INNER))`` does.
"""

from __future__ import annotations


import torch

from .. import distributed, parity
from ..registry import Term, implements, safe_divide
from .group_fairness import _SUM_DTYPE, _is_column, _summed
from .params.group_dro import GroupDROParams


def group_dro_reference(groups: int, eta: float) -> parity.Reference:
    """group_dro(mse) on its first training call, hand-written: per-group mean squared errors by
    index_add in float64, q = the uniform weights times exp(eta l_g) over the groups present, normalised;
    sum q l."""

    def reference(pred: torch.Tensor, target: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        squared = (pred - target).square().double()
        sums = squared.new_zeros(groups, 2).index_add_(0, g, torch.stack([squared, torch.ones_like(squared)], dim=1))
        present = sums[:, 1] > 0
        means = torch.where(present, sums[:, 0] / sums[:, 1].clamp(min=1), torch.zeros_like(sums[:, 0]))
        unnormalised = torch.where(present, torch.exp(eta * means.detach()), torch.zeros_like(means)) / groups
        q = unnormalised / unnormalised.sum() * (present.sum() / groups)  # the present groups keep their mass
        q = torch.where(present, q, torch.full_like(q, 1 / groups))
        return (q * means).sum().to(pred.dtype)

    return reference


def _group_dro_cases(s: parity.Sizes) -> list[parity.Case]:
    n, k = s.n, s.groups
    return [
        parity.Case(f"group_dro(mse, group=g, groups={k}, eta=0.5)", parity.shape(n),
                    parity.inputs(pred=parity.randn(n), target=parity.randn(n), g=parity.labels(n, classes=k)),
                    group_dro_reference(k, 0.5), note="Sagawa et al.'s update, hand-written", variant=f"{k} groups"),
    ]


@implements("group_dro", cases=_group_dro_cases)
class GroupDRO(Term):
    """Online group DRO: ``sum_g q_g l_g``, ``l_g`` the group's mean loss, ``q`` adversarial weights.

    - ``l_g`` is the inner term's mean over the batch's samples of group ``g`` (its per-sample
      parts summed with one ``index_add``, exactly as ``fairness(group_loss(INNER))`` averages a
      group: ce's class weights and ignored targets included; ``sample_weight`` weighs the samples).
      The sums, the means and the objective are in float64, cast to the prediction's dtype.
    - The weights ``q`` (the buffer ``group_weights``, uniform at first, saved in ``state_dict``)
      take one step of exponentiated-gradient ascent per training-mode call, before the loss is
      formed (Sagawa et al.'s Algorithm 1): ``q_g <- q_g exp(eta (l_g + C / sqrt(n_g)))``,
      normalised. The update reads detached losses: the model's gradient is ``sum_g q_g grad l_g``.
      In eval mode ``q`` stays as it is.
    - ``adjust=C`` adds Sagawa et al.'s generalisation adjustment ``C / sqrt(n_g)`` to the losses
      the update reads (not to the objective): ``n_g`` is the group's size in the training data
      once ``loss_fn.fit(g=codes)`` has seen it (the buffer ``group_sizes``), else its count in the
      batch.
    - A group absent from a batch keeps its weight: the groups present share the mass they had,
      renormalised among themselves (Sagawa et al.'s code renormalises every group; the two agree
      when every group is present). Its loss counts as 0 in the objective. No NaN: an empty batch
      gives 0 and leaves ``q`` as it was; a batch whose losses are NaN or inf gives NaN (or inf)
      and leaves ``q`` as it was.
    - The group count is required (``groups=K`` or ``group[N] of K``): codes lie in ``[0, K)``,
      not checked ahead (no host synchronisation); on the CPU a code outside is E402.
    - Under ``torch.distributed`` the per-group sums are all-reduced (differentiably, as
      ``fairness`` does) before the means are formed: every rank computes the global batch's
      losses and takes the same step of ``q``, so the ranks' weights stay equal; ``sync=false``
      keeps each rank's own.
    - The update is in log space, ``log q + eta l`` then a log-softmax: a large ``eta * l`` never
      overflows ``exp``.
    """

    def __init__(self, params: GroupDROParams):
        super().__init__()
        inner = params.loss.inner
        self.inner = inner.term.module(inner.params)
        self.inner.bind_context(inner.where, inner.inputs)
        self.num_inner_inputs = len(inner.inputs)
        self.num_groups = params.groups
        self.eta = params.eta
        self.adjust = params.adjust
        self.sync = params.sync
        self.weighted = params.sample_weight is not None
        k = params.groups
        self.register_buffer("group_weights", torch.full((k,), 1.0 / k, dtype=torch.float64))
        # The groups' sizes in the training data, from fit (zeros until then: the batch's counts serve).
        self.register_buffer("group_sizes", torch.zeros(k, dtype=torch.float64))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The inner term's inputs, the group codes, ``sample_weight`` (when given)."""
        inner_inputs = inputs[: self.num_inner_inputs]
        group = inputs[self.num_inner_inputs]
        first = inner_inputs[0]
        n = first.shape[0] if first.dim() else 1
        if not _is_column(group, n):
            self.fail(self.num_inner_inputs, f"expected group codes of shape ({n},), got {tuple(group.shape)}")
        if group.is_floating_point() or group.is_complex():
            self.fail(self.num_inner_inputs, f"expected integer group codes, got {group.dtype}")
        codes = (group if group.dim() == 1 else group[:, 0]).long()
        dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        parts = self.inner.per_sample_parts(*inner_inputs, torch.ones(n, dtype=dtype, device=first.device))  # [N, 2]
        parts = parts.to(_SUM_DTYPE)  # summed as fairness sums its groups (a float32 sum drifts with N)
        if self.weighted:
            weight = self.expect_sample_weight(len(inputs) - 1, inputs[-1], n, parts.dtype)
            parts = parts * weight[:, None]
        sums = _summed(parts.T, codes, self.num_groups)
        if self.sync and distributed.active():
            sums = distributed.all_reduce_sum(sums)
        present = sums[:, 1] > 0
        losses = safe_divide(sums[:, 0], sums[:, 1], present).masked_fill(~present, 0.0)
        weights = self.group_weights
        if self.training:
            weights = self._updated_weights(losses.detach(), sums[:, 1].detach(), present)
        value = (weights.to(losses.dtype) * losses).sum()
        return torch.where(sums.isnan().any(), float("nan"), value).to(first.dtype if first.is_floating_point() else value.dtype)

    def _updated_weights(self, losses: torch.Tensor, counts: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """One exponentiated-gradient step of ``q`` over the groups present; stored, and returned."""
        old = self.group_weights
        losses = losses.to(old.dtype)
        if self.adjust:
            sizes = torch.where(self.group_sizes > 0, self.group_sizes, counts.to(old.dtype))
            losses = losses + self.adjust / sizes.clamp(min=1).sqrt()
        mass = old.masked_fill(~present, 0.0).sum()  # what the groups present share
        logits = (old.log() + self.eta * losses).masked_fill(~present, float("-inf"))
        shares = torch.softmax(logits, dim=0)  # 0 for the groups absent
        new = torch.where(present, mass * shares, old)
        # No group present, or a NaN/inf loss: q as it was (no sync: a where over the whole vector).
        keep = ~(new.isfinite().all() & present.any())
        new = torch.where(keep, old, new)
        self.group_weights.copy_(new)
        return new

    def fit(self, *inputs: torch.Tensor | None) -> None:
        """``LossModule.fit(g=codes, ...)``: the groups' sizes in the training data (for ``adjust``);
        the inner term's own fit (``ce(weight=balanced)``'s class counts)."""
        fit = getattr(self.inner, "fit", None)
        if fit is not None:
            fit(*inputs[: self.num_inner_inputs])
        group = inputs[self.num_inner_inputs] if len(inputs) > self.num_inner_inputs else None
        if group is None:
            return
        codes = (group if group.dim() == 1 else group.reshape(group.shape[0], -1)[:, 0]).long()
        counts = torch.bincount(codes, minlength=self.num_groups)[: self.num_groups]
        self.group_sizes.copy_(counts.to(self.group_sizes.dtype))
