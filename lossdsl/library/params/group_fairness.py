"""Group-fairness penalties: ``fairness(STAT, group=G)``.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.group_fairness``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PositiveFloat, PositiveInt, model_validator
from pydantic_core import PydanticCustomError

from ...declarations import (
    INPUT,
    InnerForms,
    InnerLoss,
    InputOf,
    Kinds,
    SampleWeight,
    TermParams,
    declare,
)


# Each rate as (numerator column, denominator column), from p (the soft prediction), y (the label).
_RATE_COLUMNS = {
    "dp": ("p", "one"),
    "tpr": ("p*y", "y"),
    "fpr": ("p*(1-y)", "1-y"),
    "fnr": ("(1-p)*y", "y"),
    "tnr": ("(1-p)*(1-y)", "1-y"),
    "error_rate": ("p*(1-y)+(1-p)*y", "one"),
    "mean_pred": ("pred", "one"),
    "ppv": ("p*y", "p"),
    "accuracy": ("p*y+(1-p)*(1-y)", "one"),
}


_STATISTICS = {**{name: (name,) for name in _RATE_COLUMNS}, "eo": ("tpr", "fpr"), "balanced_accuracy": ("tpr", "tnr")}


GROUP_LOSS_FORMS = ("group_loss", "group_loss_gap", "group_loss_ratio")


Statistic = Literal[
    "dp_gap", "tpr_gap", "fpr_gap", "fnr_gap", "tnr_gap", "error_rate_gap", "eo_gap", "mean_pred_gap",
    "ppv_gap", "accuracy_gap", "balanced_accuracy_gap",
    "dp_ratio", "tpr_ratio", "fpr_ratio", "fnr_ratio", "tnr_ratio", "error_rate_ratio", "eo_ratio", "mean_pred_ratio",
    "ppv_ratio", "accuracy_ratio", "balanced_accuracy_ratio",
]


#: The largest ``groups=K`` (codes of int32 range): a batch of fewer rows than K ranks its codes,
#: so K itself sizes no per-call work; window state per group is capped by MAX_GROUP_STATE.
MAX_GROUP_COUNT = 2**31 - 1

#: The momentum of the window over which a constraint's audited rates run by default (about 20 batches).
AUDIT_WINDOW = 0.95


#: float32's smallest normal number, torch.finfo(torch.float32).tiny (1.2e-38), written out: no torch here.
_SMALLEST_TEMPERATURE = 2.0**-126


def _normal_in_float32(t: float) -> float:
    """smoothmax(T) divides by T in float32, where a smaller T is a subnormal (few digits) or 0."""
    if t < _SMALLEST_TEMPERATURE:
        raise PydanticCustomError("greater_than_equal", "Input should be greater than or equal to {ge}",
                                  {"ge": f"{_SMALLEST_TEMPERATURE:.2g} (float32's smallest normal number)"})
    return t


Temperature = Annotated[PositiveFloat, AfterValidator(_normal_in_float32)]


class FairnessParams(TermParams):
    positional = ("stat",)
    stat: Annotated[Statistic | InnerLoss, InnerForms(GROUP_LOSS_FORMS)] = Field(
        description="a rate (dp, tpr, fpr, fnr, tnr, error_rate, mean_pred, ppv (precision), accuracy, "
        "balanced_accuracy (the mean of tpr and tnr); eo = the worse of tpr and fpr) "
        "and a form: _gap (largest minus smallest) or _ratio (1 - smallest / largest); or group_loss(INNER) "
        "(the worst group's mean INNER loss), group_loss_gap(INNER) or group_loss_ratio(INNER)"
    )
    group: Annotated[str | tuple[str, ...], INPUT, Kinds(("group",))] = Field(
        description="the input holding integer group codes [N], or a tuple of them for intersections: (sex, race)"
    )
    groups: PositiveInt | None = Field(
        None, le=MAX_GROUP_COUNT,
        description="number of groups when known (codes in [0, groups)): a batch of at least that many rows sums "
        "into that many slots (cheaper than ranking the codes), a smaller one ranks its codes, so a large count "
        "costs no per-call work of its size (except window=, which keeps state per group)",
    )
    ref: Literal["groups", "overall"] = Field(
        "groups", description="compare the groups with each other, or each group with the whole batch"
    )
    agg: Literal["max", "mean", "worst_case"] | tuple[Literal["smoothmax"], Temperature] | None = Field(
        None,
        description="how disparities combine: max (default), mean (over pairs of groups, or over groups with "
        "ref=overall) or smoothmax(T) (log-mean-exp at temperature T, at least 1.2e-38: a smaller T is 0 or "
        "loses its digits in float32); for eo, worst_case (default) or mean of its tpr and fpr parts",
    )
    hard: bool | None = Field(
        None,
        description="true: rates from hard predictions pred > 0 (the audited value), with the gradient of the "
        "soft ones (straight-through); false: soft rates only. Default: soft, except in a subject to, whose "
        "multiplier then reads the hard (audited) rates while the gradient follows the soft ones",
    )
    sync: bool = Field(
        True,
        description="under torch.distributed, sum the group statistics over all ranks (differentiably), so "
        "every rank computes the global batch's penalty; needs groups=K",
    )
    window: tuple[Literal["ema"], Annotated[float, Field(ge=0, lt=1)]] | None = Field(
        None,
        description="ema(m): rates from running group sums, m * history + (1 - m) * batch (needs groups=K; "
        "ema(0): each batch alone). Default: each batch alone, except in a subject to with a known group "
        "count, whose audited rates run over about one epoch after loss_fn.fit(...), else over "
        f"ema({AUDIT_WINDOW:g})",
    )
    pred: InputOf("logits", "real") = Field(
        "pred", description="binary logits [N] or [N, 1] (sigmoid), or [N, 2] (softmax, class 1); raw values for mean_pred"
    )
    target: InputOf("binary", "labels") = Field("target", description="0/1 labels [N]; not read by dp and mean_pred")
    sample_weight: SampleWeight = None

    @property
    def stat_name(self) -> str:
        """``fpr_gap``, ..., or the group-loss form: ``group_loss``, ``group_loss_gap``, ``group_loss_ratio``."""
        return self.stat.form if isinstance(self.stat, InnerLoss) else self.stat

    @property
    def rate_names(self) -> tuple[str, ...]:
        if isinstance(self.stat, InnerLoss):
            return ()
        return _STATISTICS[self.stat.rsplit("_", 1)[0]]

    def nested_terms(self) -> tuple[Any, ...]:
        return (self.stat.inner,) if isinstance(self.stat, InnerLoss) else ()

    @model_validator(mode="after")
    def _one_count_for_one_column(self) -> FairnessParams:
        if isinstance(self.group, tuple) and self.groups is not None:
            raise ValueError("groups= counts the codes of one group input, not of an intersection")
        if isinstance(self.stat, InnerLoss) and self.stat.inner.term.batch_dimension != 0:
            inner = self.stat.inner.term.name
            raise ValueError(f"group_loss() groups the rows of its inner term's first input; {inner}() has its "
                             "samples along another dimension, so it cannot be grouped here")
        misplaced = sorted(self.model_fields_set & {"pred", "target"}) if isinstance(self.stat, InnerLoss) else []
        if misplaced:
            raise ValueError(f"group_loss() reads the inner term's inputs: give {misplaced[0]}= to it, "
                             f"as in group_loss(mse({misplaced[0]}=...)), not to fairness()")
        if self.hard and (isinstance(self.stat, InnerLoss) or self.stat_name.startswith("mean_pred")):
            raise ValueError("hard=true thresholds predicted probabilities: it applies to the rates, "
                             "not to mean_pred or group_loss")
        if self.stat_name == "group_loss" and self.ref == "overall":
            raise ValueError("group_loss() is the worst group's loss; ref=overall takes group_loss_gap or _ratio")
        is_eo = self.stat_name.startswith("eo_")
        if is_eo and self.agg not in (None, "worst_case", "mean"):
            raise ValueError(f"eo takes agg=worst_case or agg=mean (of its tpr and fpr parts), not {_agg_text(self.agg)}")
        if not is_eo and self.agg == "worst_case":
            raise ValueError("agg=worst_case is eo's; the other statistics take agg=max, mean or smoothmax(T)")
        if isinstance(self.window, tuple) and self.groups is None:
            raise ValueError("window=ema(m) keeps sums per group slot: give the group count, groups=K")
        return self

    def state_size(self, in_constraint: bool = True) -> int:
        """Values of per-group state the module keeps: the ema window's running sums, K x columns
        (``in_constraint``: a term only constraints read, whose audited rates keep a window by default)."""
        if self.groups is None or (self.window is None and (self.hard is False or not in_constraint)):
            return 0
        columns = 2 if isinstance(self.stat, InnerLoss) else 2 * len(self.rate_names)
        return self.groups * columns

    @property
    def group_names(self) -> tuple[str, ...]:
        return self.group if isinstance(self.group, tuple) else (self.group,)

    def input_names(self) -> tuple[str, ...]:
        """``pred``, each group input, then ``target`` and ``sample_weight`` when read; for
        group_loss, the inner term's inputs, each group input, then ``sample_weight``."""
        if isinstance(self.stat, InnerLoss):
            names = [*self.stat.inner.inputs, *self.group_names]
            return (*names, self.sample_weight) if self.sample_weight else tuple(names)
        names = [self.pred, *self.group_names]
        if "target" in self.input_roles():
            names.append(self.target)
        if self.sample_weight:
            names.append(self.sample_weight)
        return tuple(names)

    def input_roles(self) -> tuple[str, ...]:
        if isinstance(self.stat, InnerLoss):  # the inner term checks and reads its own inputs
            return ("group", "sample_weight") if self.sample_weight else ("group",)
        needs_target = any("y" in "".join(_RATE_COLUMNS[rate]) for rate in self.rate_names)
        roles = ("pred", "group", "target") if needs_target else ("pred", "group")
        return (*roles, "sample_weight") if self.sample_weight else roles


def _agg_text(agg: str | tuple[str, float]) -> str:
    return agg if isinstance(agg, str) else f"{agg[0]}({agg[1]:g})"


declare(
    "fairness",
    FairnessParams,
    "Group-fairness penalty: the gap between the largest and smallest group rate, from soft predictions.",
    example="fairness(eo_gap, group=race, groups=5)",
    noun="statistic",
    implementation="lossdsl.library.group_fairness:Fairness",
)
