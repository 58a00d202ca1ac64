"""Group distributionally robust optimisation: ``group_dro(ce(), group=g, groups=K)``.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.group_dro``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, PositiveInt, model_validator

from ...declarations import INPUT, MAX_GROUPS, InnerForms, InnerLoss, Kinds, SampleWeight, TermParams, declare


class GroupDROParams(TermParams):
    positional = ("loss",)
    loss: Annotated[InnerLoss, InnerForms(("group_dro",))] = Field(
        description="the loss term averaged per group, with its own arguments: ce(), huber(delta=2), ... "
        "(a term with one value per sample, as group_loss takes)"
    )
    group: Annotated[str, INPUT, Kinds(("group",))] = Field(description="the input holding integer group codes [N]")
    groups: PositiveInt | None = Field(
        None, le=MAX_GROUPS,
        description="number of groups (codes in [0, groups)); required, or declared as 'group[N] of K': "
        "the term keeps one weight per group",
    )
    eta: float = Field(0.01, gt=0, le=1e6, description="the step size of the group weights' update, q_g <- q_g exp(eta l_g)")
    adjust: float = Field(
        0.0, ge=0, le=1e6,
        description="C of the generalisation adjustment: the update reads l_g + C / sqrt(n_g), n_g the "
        "group's size (from loss_fn.fit, else the batch's count)",
    )
    sync: bool = Field(
        True, description="under torch.distributed, sum the group losses over all ranks, so the ranks keep the same weights"
    )
    sample_weight: SampleWeight = None

    def nested_terms(self) -> tuple[Any, ...]:
        return (self.loss.inner,)

    @model_validator(mode="after")
    def _needs_a_count(self) -> GroupDROParams:
        if self.groups is None:
            raise ValueError(f"group_dro() keeps one weight per group: give groups=K, or declare "
                             f"'{self.group}[N] of K' in an inputs: block")
        if self.loss.inner.term.batch_dimension != 0:
            raise ValueError(f"group_dro() groups the rows of its loss's first input; {self.loss.inner.term.name}() "
                             "has its samples along another dimension")
        return self

    def state_size(self, in_constraint: bool = True) -> int:
        """The group weights and the groups' sizes (wherever the term is read)."""
        return 2 * (self.groups or 0)

    def input_names(self) -> tuple[str, ...]:
        """The inner term's inputs, the group input, then ``sample_weight`` when given."""
        names = (*self.loss.inner.inputs, self.group)
        return (*names, self.sample_weight) if self.sample_weight else names

    def input_roles(self) -> tuple[str, ...]:
        return ("group", "sample_weight") if self.sample_weight else ("group",)


declare(
    "group_dro",
    GroupDROParams,
    "Group DRO (Sagawa et al. 2020): the groups' mean losses weighted by q, which moves towards the worst groups.",
    example="group_dro(ce(), group=g, groups=4, eta=0.01)",
    implementation="lossdsl.library.group_dro:GroupDRO",
)
