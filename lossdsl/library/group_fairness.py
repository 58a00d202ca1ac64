"""Group-fairness penalties: ``fairness(STAT, group=G)``.

Rates are soft: computed per group from predicted probabilities, so they are
differentiable; on hard 0/1 predictions they equal fairlearn's metrics. Group
statistics are summed in float64 with one ``index_add`` over group slots, with no Python
loop over groups and no host synchronisation on CUDA (on the CPU the group count is read from the
codes, which costs none there). On the CPU a few groups' sums are read back too, and where every
rate is defined and every sum finite the single-rate gaps skip the guards that then change nothing
(``_lean_gaps``): the one-liner's fpr_gap dispatches the hand-written two-mask gap's 36 ops, not 81.
Beyond 2^14 rows their float64 sums cast 2^16 rows at a time (``_ChunkedRowSums``): the same sums, without a float64
copy of every column (the one-liner's peak at N = 2^20: 28 MiB, not 44).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .. import distributed, parity
from ..errors import LossSpecError
from ..registry import MAX_GROUPS, InnerLoss, Term, host_reads_are_free, implements, safe_divide
from .params.group_fairness import (  # noqa: F401  (re-exported)
    AUDIT_WINDOW,
    GROUP_LOSS_FORMS,
    MAX_GROUP_COUNT,
    _RATE_COLUMNS,
    FairnessParams,
    Statistic,
    Temperature,
)

# Statistics whose per-group rate is the mean of their rates' defined values (sklearn's
# balanced_accuracy_score: the mean recall over the classes present); the others' rates each
# give a disparity, and eo combines the disparities.
_MEAN_OF_RATES = frozenset({"balanced_accuracy"})
# A rate whose denominator is the predicted-positive mass (ppv) counts as undefined below float32's
# smallest normal number: the gradient of numerator / denominator is about 1 / denominator before
# the sigmoid's p (1 - p) scales it back, which overflows to inf (then NaN) for a subnormal mass.
_PREDICTED_MASS_FLOOR = float(torch.finfo(torch.float32).tiny)
# The dtype group sums accumulate in, and the rates and statistic are formed in (the value is cast
# back to the prediction's dtype at the end). A scatter adds each slot's values one after another,
# so a float32 sum of N values drifts by up to N float32 roundings (fpr_gap at N = 2^20 was 3 % off);
# and a gap is a difference of rates near 0.5, so even exactly rounded float32 rates leave it a
# relative 1e-4 off. float64 sums stay within N * 1.1e-16, below float32's last place. On the CPU a
# float64 scatter is no slower than a float32 one; the cost is the cast of the columns each way
# (benchmarks/group_sums.py). Blocked float32 sums (runs of 2048, partials added in float64) cost
# as much and stay float32-accurate per block (3.5e-5 off at N = 4096), and not for ranked slots.
_SUM_DTYPE = torch.float64
# Columns of the labels alone: no gradient reaches the prediction through them.
_LABEL_COLUMNS = frozenset({"one", "y", "1-y"})
# Rows of the CPU's lean sums cast to float64 at a time (_ChunkedRowSums): 512 KiB a column.
_SUM_CHUNK = 65536
# From how many rows the lean sums take _ChunkedRowSums (faster from about 2^14 rows on: it gathers
# only the gradients needed, in the column's dtype; below, its Python layer costs more than that saves).
_CHUNKED_FROM = 16384
# The most group slots the CPU's lean gaps read back (``_lean_gaps``): a read of 2 x K sums per
# statistic, cheap next to the ops it saves for a few groups; more slots take the general ops.
_LEAN_SLOTS = 64
_SMALLEST_POSITIVE = math.ulp(0.0)
# The difference of two rates as a product (one op, and one in the backward, for two selects and a sub).
_PLUS_MINUS = torch.tensor([1.0, -1.0], dtype=_SUM_DTYPE, device="cpu")  # (the lean gaps are the CPU's)
# How each column is computed from (p, y, 1 - y); resolved once per term, so the forward looks nothing up.
_COLUMN = {
    "p": lambda p, y, n: p,
    "pred": lambda p, y, n: p,
    "one": lambda p, y, n: torch.ones_like(p),
    "y": lambda p, y, n: y,
    "1-y": lambda p, y, n: n,
    "p*y": lambda p, y, n: p * y,
    "p*(1-y)": lambda p, y, n: p * n,
    "(1-p)*y": lambda p, y, n: (1 - p) * y,
    "(1-p)*(1-y)": lambda p, y, n: (1 - p) * n,
    "p*(1-y)+(1-p)*y": lambda p, y, n: p * n + (1 - p) * y,
    "p*y+(1-p)*(1-y)": lambda p, y, n: p * y + (1 - p) * n,
}


def _above_zero(values: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """``values > 0`` (or ``>= floor`` for a positive floor), but True for NaN: a guard against 0 / 0
    must not take a NaN for an empty group and hide it (a finite penalty with NaN gradients); NaN in
    gives NaN out."""
    return ~(values < floor) if floor > 0 else ~(values <= 0)


def _mean_of_defined(
    rates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One rate per group, the mean of the given rates where each is defined (balanced accuracy: the
    mean of tpr and tnr, or the one a group has, as sklearn averages the recalls of the classes present).
    Defined where any is; the overall rate likewise (a rate is defined overall where any group has it)."""
    total = count = None
    overall_total = overall_count = None
    for rate, defined, overall in rates:
        share = rate.masked_fill(~defined, 0.0)
        total = share if total is None else total + share
        count = defined.to(rate.dtype) if count is None else count + defined.to(rate.dtype)
        if overall is not None:
            present = defined.any()
            overall_share = torch.where(present, overall, torch.zeros_like(overall))
            overall_total = overall_share if overall_total is None else overall_total + overall_share
            overall_count = present.to(rate.dtype) if overall_count is None else overall_count + present.to(rate.dtype)
    mean = total / count.clamp(min=1)
    overall_mean = None if overall_total is None else overall_total / overall_count.clamp(min=1)
    return mean, count > 0, overall_mean


def _nan_if_any_nan(sums: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """NaN when any group sum is: a NaN prediction, label or weight in a group whose rate is left
    out (undefined, or sorted past the others) would else give a finite value over NaN gradients."""
    return torch.where(sums.isnan().any(), float("nan"), value)


def _is_column(tensor: torch.Tensor, n: int) -> bool:
    """Whether ``tensor`` is ``[n]`` or ``[n, 1]``; written with size comparisons, which torch.compile
    traces under dynamic shapes (a membership test of a shape in tuples is misread there)."""
    if tensor.dim() == 1:
        return tensor.shape[0] == n
    return tensor.dim() == 2 and tensor.shape[0] == n and tensor.shape[1] == 1


def gap_of_sums(sums: torch.Tensor) -> torch.Tensor:
    """Largest minus smallest rate ``sums[:, 0] / sums[:, 1]`` over the groups with a denominator
    (a reference: written apart from the term's own helpers)."""
    defined = sums[:, 1] > 0
    denominator = torch.where(defined, sums[:, 1], torch.ones_like(sums[:, 1]))
    rate = sums[:, 0] / denominator
    gap = rate.masked_fill(~defined, -1.0).amax() - rate.masked_fill(~defined, 2.0).amin()
    return torch.where(defined.sum() >= 2, gap, torch.zeros_like(gap))


def fpr_gap_ranked(pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
    """fairness(fpr_gap, group=sex) hand-written: soft false-positive rate per group (codes ranked in
    the batch by a sort, summed in float64 with index_add_), largest minus smallest; 0 with fewer than
    two groups."""
    n = pred.shape[0]
    prob = torch.sigmoid(pred).double()
    negative = 1 - target.double()
    sorted_codes, order = torch.sort(sex)
    starts = torch.ones_like(sorted_codes, dtype=torch.long)
    starts[1:] = (sorted_codes[1:] != sorted_codes[:-1]).long()
    slots = torch.empty_like(order).scatter_(0, order, starts.cumsum(0) - 1)
    sums = prob.new_zeros(n, 2).index_add_(0, slots, torch.stack([prob * negative, negative], dim=1))
    return gap_of_sums(sums).to(pred.dtype)


def _fpr_gap_known_groups(groups: int) -> parity.Reference:
    def reference(pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(pred).double()  # summed in float64, as the term sums
        negative = 1 - target.double()
        sums = prob.new_zeros(groups, 2).index_add_(0, sex, torch.stack([prob * negative, negative], dim=1))
        return gap_of_sums(sums).to(pred.dtype)

    return reference


def _worst_group_mse(groups: int) -> parity.Reference:
    """group_loss(mse) with known groups: the largest per-group mean squared error, by index_add in float64."""

    def reference(pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        squared = (pred - target).square().double()
        sums = squared.new_zeros(groups, 2).index_add_(0, sex, torch.stack([squared, torch.ones_like(squared)], dim=1))
        defined = sums[:, 1] > 0
        denominator = torch.where(defined, sums[:, 1], torch.ones_like(sums[:, 1]))
        means = sums[:, 0] / denominator
        return means.masked_fill(~defined, float("-inf")).amax().to(pred.dtype)

    return reference


def _fairness_cases(s: parity.Sizes) -> list[parity.Case]:
    """References: the gap of soft group rates by index_add in float64 (codes ranked by a sort, or
    known groups), and the worst group's mean loss."""
    n, k, many = s.n, s.groups, s.many_groups
    binary = {"pred": parity.randn(n), "target": parity.flags(n, dtype=torch.long)}
    return [
        parity.Case("fairness(fpr_gap, group=sex)", parity.shape(n), parity.inputs(**binary, sex=parity.labels(n, classes=k)),
                    fpr_gap_ranked, note="benchmarks/overhead.py's hand-written gap", variant=f"{k} groups"),
        parity.Case(f"fairness(fpr_gap, group=sex, groups={k})", parity.shape(n),
                    parity.inputs(**binary, sex=parity.labels(n, classes=k)), _fpr_gap_known_groups(k), variant=f"{k} groups"),
        parity.Case("fairness(fpr_gap, group=sex)", parity.shape(n),
                    parity.inputs(**binary, sex=lambda g: 37 * torch.randint(0, many, (n,), generator=g)),
                    fpr_gap_ranked, variant=f"{many} sparse groups"),
        parity.Case(f"fairness(group_loss(mse), group=sex, groups={k})", parity.shape(n),
                    parity.inputs(pred=parity.randn(n), target=parity.randn(n), sex=parity.labels(n, classes=k)),
                    _worst_group_mse(k), variant=f"group_loss, {k} groups"),
    ]


@implements("fairness", cases=_fairness_cases)
class Fairness(Term):
    """A disparity between group rates, from soft predictions; fairlearn's metrics on hard ones.

    - With ``p`` the predicted probability of class 1 (``sigmoid(pred)``, or ``softmax(pred)[:, 1]``
      for ``[N, 2]``) and ``y`` the label, the per-group rates are soft: ``dp`` the selection rate
      ``sum(p) / n_g``, ``tpr`` ``sum(p y) / sum(y)``, ``fpr`` ``sum(p (1 - y)) / sum(1 - y)``,
      ``fnr`` and ``tnr`` their complements, ``error_rate`` ``sum(p (1 - y) + (1 - p) y) / n_g``,
      ``accuracy`` its complement ``sum(p y + (1 - p) (1 - y)) / n_g`` (sklearn's ``accuracy_score``),
      ``ppv`` the precision ``sum(p y) / sum(p)`` (``precision_score``: true over predicted
      positives), ``balanced_accuracy`` the mean of the group's ``tpr`` and ``tnr``, or the one it
      has when its labels are all one class (``balanced_accuracy_score``, which averages the recalls
      of the classes present), and ``mean_pred`` the mean of the raw ``pred`` (regression; no sigmoid).
    - The form: ``_gap`` is the largest minus the smallest group rate (fairlearn's
      ``difference(method="between_groups")``), ``_ratio`` is one minus the smallest over the
      largest (``1 - ratio(method="between_groups")``; for non-negative rates). With
      ``ref=overall`` each group is compared with the whole batch instead: ``_gap`` is the largest
      ``|rate_g - overall|`` and ``_ratio`` one minus the smallest ``min(g, o) / max(g, o)``
      (fairlearn's ``method="to_overall"``). ``eo`` takes the worse of its tpr and fpr values
      (fairlearn's ``equalized_odds_difference`` and ``_ratio``, ``agg="worst_case"``).
    - ``agg`` says how the disparities combine. ``max`` (the default) is fairlearn's value above.
      ``mean`` averages over all pairs of groups (for two groups it equals ``max``; with
      ``ref=overall``, over the groups' distances to the overall value). ``smoothmax(T)``
      replaces each largest value by its log-mean-exp ``T log mean exp(v / T)`` and each smallest
      by the mirror image: a smooth penalty that gives every group a gradient, is never above
      ``max`` (with ``ref=overall``, never below ``mean``), and tends to ``max`` as ``T`` goes to 0. For ``eo``, ``agg`` combines the
      tpr and fpr parts as fairlearn's ``agg``: ``worst_case`` (the default) or ``mean``.
    - ``group_loss(INNER)`` is bounded group loss: ``INNER`` (a loss term with one value per
      sample, listed in docs/fairness.md from the registry; with its own arguments,
      ``group_loss(huber(delta=2))``) is averaged
      within each group, exactly as the term averages a batch (ce's class weights and ignored
      targets included), and the worst group's mean is the penalty; ``agg=mean`` averages the
      groups' means instead and ``smoothmax(T)`` softens the worst. ``group_loss_gap(INNER)`` and
      ``group_loss_ratio(INNER)`` are the largest minus the smallest group mean and one minus
      their ratio, with ``ref`` and ``agg`` as for the rates. The inner term reads its own inputs
      (``pred`` and ``target`` by default); give ``sample_weight`` to ``fairness``. With one group,
      ``group_loss(INNER)`` equals ``INNER`` on the batch. Equal to fairlearn's
      ``MetricFrame(metrics=mean_squared_error, ...)`` ``group_max()``, ``difference()`` and ``ratio()``.
    - On hard 0/1 predictions every statistic, form and ``ref`` equals fairlearn's
      ``MetricFrame(...).difference()`` / ``1 - ratio()``, sample weights included.
    - A group whose rate is undefined in the batch (absent, or without positives for tpr/fnr,
      without negatives for fpr/tnr, without predicted positives for ppv) is left out; with fewer
      than two groups left the value is 0, never NaN; equal rates of 0 give a ratio penalty of 0
      (fairlearn: NaN). fairlearn instead scores an undefined rate as 0 (for ppv, sklearn's
      ``precision_score`` with its default ``zero_division``), so with such a group the two differ;
      lossdsl's value is fairlearn's with ``precision_score(zero_division=np.nan)``, whose NaN groups
      ``difference()`` and ``ratio()`` skip. The soft ppv's denominator is the predicted-positive
      mass ``sum(p)``, which hard predictions may leave empty while the soft one keeps a value (the
      group's labels weighted by ``p``); a mass below float32's smallest normal number (1.2e-38, with
      tiny sample weights or saturated logits) counts as empty, as its gradient would overflow. NaN
      in gives NaN out: a NaN prediction, label or weight is never taken for an empty group.
    - Group codes are an integer (or bool) tensor ``[N]`` or ``[N, 1]``; ``group=(sex, race)``
      makes each combination of codes a group (an intersection, as fairlearn's several
      sensitive features). Without ``groups``, on the CPU (outside torch.compile), where reading
      a value costs no synchronisation, the count is read from the data (the largest code plus
      one) and the codes index that many slots, as with a known count; on CUDA, under
      torch.compile, and for negative codes or codes sparser than the batch's rows, they are
      ranked within the batch (sort, then ``index_add`` into N slots): any codes work, sparse,
      negative or large. Both give the same value. With ``groups=K`` (one group input only) they
      index K slots directly when the batch has at least K rows or the K slots are needed (a
      window, torch.distributed), else the batch's codes are counted or ranked as without it, so
      a large K costs no per-call work of its size. They must lie in ``[0, K)``, which is not
      checked ahead on CUDA (that would synchronise with the device): on the CPU a code outside
      is E402 naming the group input, on CUDA torch's device-side assert (K slots) or nothing.
    - Group sums use one ``index_add``: no Python loop over groups, no host synchronisation on CUDA.
      They accumulate in float64, and the rates and statistic are formed in float64 and cast to the
      prediction's dtype: a float32 scatter adds each group's values one after another, which at
      N = 2^20 put fpr_gap 3 % off.
      ``sample_weight`` weighs each sample in the group sums, as fairlearn's ``sample_weight``
      does. An empty batch gives 0.
    - Under ``torch.distributed`` (an initialised process group of several ranks) the group sums
      are all-reduced with the differentiable collective before the rates are formed, so every
      rank computes the penalty of the global batch; its backward all-reduces the gradient as
      well, so after DDP averages the parameter gradients they equal the single-process gradient
      on the concatenated batch. The ranks must agree on the group slots: ``groups=K`` (or
      ``group[N] of K``) is required, else E403; ``sync=false`` keeps each rank's own batch.
    - ``hard=true`` computes the rates from hard predictions ``pred > 0`` in the forward pass, so
      the value (in ``last_terms``) is fairlearn's number for the batch, while the backward pass
      uses the gradient of ``sigmoid(pred)`` (straight-through). A soft gap can be near 0 while the
      hard one is not (one group's positives sit further from the threshold).
    - In a ``subject to`` (a term only constraints read) with ``hard`` not given, the value is the
      audited one: the statistic of hard rates, with the gradient of the batch's soft statistic
      (``hard_gap + (soft_gap - soft_gap.detach())``: the window lags the model, so the groups and
      the sign the gradient pushes come from the current batch), and the constraint's multiplier
      follows it (the proxy-Lagrangian of Cotter et al.,
      2019); ``last_terms`` shows the soft statistic of the batch as ``NAME.surrogate``. With a
      known group count the hard rates come from running sums (the buffer ``running_sums``):
      over about one epoch once ``LossModule.fit`` has seen the group codes (it sets the count
      and the data's size ``N``: each batch of ``n`` rows decays the history by ``exp(-n / N)``),
      else over ``window=ema(m)``, else ``ema(0.95)``; without a count, each batch's (and the
      first training call warns). ``hard=false`` keeps the soft rates.
    - ``window=ema(m)`` (with ``groups=K``, or a ``group[N] of K`` declaration) computes the rates
      from running sums ``m * history + (1 - m) * batch``: the batch's part is differentiable, the
      history (the buffer ``running_sums``, saved in ``state_dict``) is detached and updated in
      training mode only (a batch whose sums are NaN or inf leaves it as it was), so small
      batches see the rates of many. The gradient reaches the
      model through the batch's share only, so it is about ``1 - m`` times that of one batch's
      penalty: weigh the term about ``1 / (1 - m)`` times higher. In a constraint's audited
      mode the window applies to the hard rates only; the gradient is the batch's, unscaled.
    - ``LossModule.fit`` and ``lossdsl.audit`` reach the term: ``audit`` gives the statistic over
      a whole data set from hard predictions (mean_pred and group_loss: their values), chunk by
      chunk, equal to fairlearn's metric.
    """

    def __init__(self, params: FairnessParams):
        super().__init__()
        stat = params.stat
        self.inner: Term | None = None
        if isinstance(stat, InnerLoss):  # group_loss(INNER): the inner term's per_sample_parts, [N, 2] sums
            self.inner = stat.inner.term.module(stat.inner.params)
            self.inner.bind_context(stat.inner.where, stat.inner.inputs)
            self.num_inner_inputs = len(stat.inner.inputs)
            self.worst_group = stat.form == "group_loss"
            self.column_names: tuple[str, ...] = ()
            self.columns: tuple = ()
            num_columns = 2
        else:
            self.column_names = tuple(column for rate in params.rate_names for column in _RATE_COLUMNS[rate])
            self.columns = tuple(_COLUMN[column] for column in self.column_names)
            num_columns = len(self.columns)
        self.num_rates = num_columns // 2
        form = params.stat_name
        rate_names = params.rate_names
        # Each rate's smallest denominator that defines it: the predicted-positive mass's floor, else > 0.
        self.floors = tuple(_PREDICTED_MASS_FLOOR if _RATE_COLUMNS[rate][1] == "p" else 0.0 for rate in rate_names)
        self.mean_of_rates = form.rsplit("_", 1)[0] in _MEAN_OF_RATES
        self.ratio = form.endswith("_ratio")
        self.overall = params.ref == "overall"
        # agg: over groups (max, mean, smoothmax(T)); eo's worst_case or mean combines its two parts.
        self.eo_mean = form.startswith("eo_") and params.agg == "mean"
        self.agg = "max" if params.agg in (None, "worst_case") or self.eo_mean else params.agg
        self.temperature = params.agg[1] if isinstance(params.agg, tuple) else None
        if self.temperature is not None:
            self.agg = "smoothmax"
        self.raw = form.startswith("mean_pred")
        self.num_groups = params.groups
        self.reads_target = "target" in params.input_roles()
        self.weighted = params.sample_weight is not None
        self.num_columns = len(params.group_names)
        explicit_window = params.window
        self.momentum = explicit_window[1] if explicit_window is not None else None
        self.sync = params.sync
        self.hard = params.hard is True
        #: Set by ``audit_in_constraint``: the forward returns (audited value, surrogate).
        self.audited = False
        self._params = params
        # Fused with others of the same key (ratio or not, floor), one max/min over [groups, terms]
        # gives each one's gap: a single rate, ref=groups, agg=max, no window (False: computed alone).
        self._batchable = (
            (self.ratio, self.floors[0])
            if (self.inner is None and self.num_rates == 1 and not self.mean_of_rates and not self.overall
                and self.agg == "max" and self.temperature is None and explicit_window is None)
            else False
        )
        # Running group sums for window=ema(m): one row per group slot, saved in state_dict.
        shape = (params.groups or 0, num_columns)
        self.register_buffer("running_sums", torch.zeros(shape, dtype=torch.float64) if explicit_window is not None else None)

    def audit_in_constraint(self) -> bool:
        """Called once at build for a term that only a ``subject to`` reads: unless ``hard=`` is
        given, its value becomes the audited one (rates from hard predictions, over a window when the
        group count is known) with the gradient of the soft rates, and the forward returns
        ``(value, surrogate)``, the surrogate being the soft statistic of the batch. Whether it did."""
        params = self._params
        if self.inner is not None or self.raw or params.hard is not None:
            return False
        self.audited = True
        self._audit_window()
        return True

    def _audit_window(self) -> None:
        """The audited rates' window: ``window=ema(m)``, else ``AUDIT_WINDOW`` once the group count is
        known (about one epoch once ``fit`` has seen the data); an unknown count keeps each batch's
        hard rates."""
        window = self._params.window
        if self.num_groups is None:
            self.momentum = None
        else:
            self.momentum = window[1] if window is not None else AUDIT_WINDOW
        rows = self.num_groups or 0
        history = torch.zeros(rows, len(self.columns), dtype=torch.float64) if self.momentum is not None else None
        self.register_buffer("running_sums", history)
        if not hasattr(self, "window_samples"):
            # Set by fit, the training data's size: the window then spans about one epoch of samples.
            self.register_buffer("window_samples", None)
        if not hasattr(self, "window_updates"):
            # How many updates the audited value averages over, as of the last training call (1: none):
            # the default multiplier rule slows to it. Rewritten by every training call, so not saved.
            self.register_buffer("window_updates", torch.ones(()), persistent=False)

    @property
    def window_known(self) -> bool:
        """Whether the audited rates run over a window (False: each batch's, noisier)."""
        return self.momentum is not None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``pred``, each group input, ``target`` (when read), ``sample_weight`` (when given); for
        group_loss, the inner term's inputs take ``pred``'s and ``target``'s places before the groups."""
        if self.inner is not None:
            return self._group_loss(inputs)
        pred, prob, codes, positive, negative, sample_weight = self._prepared(inputs)
        if prob.shape[0] == 0 and not self._syncs():  # an empty rank still takes part in the ranks' sums
            return prob.sum()
        columns = torch.stack([column(prob, positive, negative) for column in self.columns])
        if self.audited:
            hard = (self._positive_logit(pred) > 0).to(columns.dtype)
            hard_columns = torch.stack([column(hard, positive, negative) for column in self.columns])
            # One index_add for both halves; the window is the audited half's only (the batch's soft sums stay its own).
            return self._audited(pred, self._group_sums(torch.cat([columns, hard_columns]), codes, sample_weight,
                                                        windowed=False))
        sums = self._group_sums(columns, codes, sample_weight)
        return _nan_if_any_nan(sums, self._statistic(self._rates_of_sums(sums))).to(prob.dtype)

    def _prepared(self, inputs: tuple[torch.Tensor, ...]) -> tuple:
        """The rates' inputs, checked: ``pred``, the prediction the columns read (``p``, or the raw
        ``pred`` for mean_pred), the group codes, the labels and their complement (None when not
        read), ``sample_weight`` (None when not given)."""
        pred, rest = inputs[0], inputs[1:]
        groups, rest = rest[: self.num_columns], rest[self.num_columns:]
        target = rest[0] if self.reads_target else None
        sample_weight = rest[-1] if self.weighted else None
        prob = self._raw_prediction(pred) if self.raw else self._positive_probability(pred)
        n = prob.shape[0]
        codes = self._codes(groups, n, first_position=1)
        positive = negative = None
        if target is not None:
            if not _is_column(target, n):
                self.fail(1 + self.num_columns, f"expected 0/1 labels of shape ({n},), got {tuple(target.shape)}")
            positive = (target if target.dim() == 1 else target[:, 0]).to(prob.dtype)
            negative = 1 - positive
        return pred, prob, codes, positive, negative, sample_weight

    def specialise(self, *inputs: torch.Tensor) -> Callable[..., torch.Tensor]:
        """For the common signature, 1-D float32/float64 logits, one 1-D integer group input and 1-D
        labels, no sample weight, window, audit, straight-through or group_loss: the forward's ops
        in the forward's order without its layers of per-call checks (dtypes and dimensions are
        this signature's; the sizes are still checked). Any other signature: ``forward``."""
        fast = self._straight_line(inputs)
        return fast if fast is not None else self.forward

    def _straight_line(self, inputs: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor] | None:
        if (self.inner is not None or self.audited or self.momentum is not None or self.raw or self.hard
                or self.weighted or self.num_columns != 1 or len(inputs) != 2 + self.reads_target):
            return None
        pred, group = inputs[0], inputs[1]
        if pred.dim() != 1 or pred.dtype not in (torch.float32, torch.float64):
            return None
        if group.dim() != 1 or group.is_floating_point() or group.is_complex():
            return None
        if self.reads_target and inputs[2].dim() != 1:
            return None
        columns, reads_target, forward = self.columns, self.reads_target, self.forward
        batchable, floor = bool(self._batchable), self.floors[0] if self.floors else 0.0
        constant_denominators = _constant_denominators([self])
        ratio, sync, known = self.ratio, self.sync, self.num_groups
        as_long = group.dtype != torch.long  # (the signature's: int64 codes index as they are)

        def straight_line(*inputs: torch.Tensor) -> torch.Tensor:
            pred, group = inputs[0], inputs[1]
            n = pred.shape[0]
            if group.shape[0] != n:
                self.fail(1, f"expected group codes of shape ({n},), got {tuple(group.shape)}")
            if n == 0 or (sync and distributed.active()):  # (rare: the forward's own handling)
                return forward(*inputs)
            prob = torch.sigmoid(pred)
            positive = negative = None
            if reads_target:
                target = inputs[2]
                if target.shape[0] != n:
                    self.fail(2, f"expected 0/1 labels of shape ({n},), got {tuple(target.shape)}")
                positive = target.to(prob.dtype)
                negative = torch.rsub(positive, 1)  # (1 - positive, without the operator's Python layer)
            per_sample = [column(prob, positive, negative) for column in columns]
            counted = None
            if batchable and host_reads_are_free(group):  # _read_slots of one 1-D column, inline
                if known is not None and known <= n:
                    counted = (group.long() if as_long else group), known
                else:  # _count_codes of one column: slots 0 ... largest code, when no more than n
                    low, high = torch.aminmax(group)
                    low, high = low.item(), high.item()  # a host read: free on the CPU
                    if known is not None and (low < 0 or high >= known):
                        self._count_codes([group], n)  # its E402 for the code outside [0, K)
                    if low >= 0 and high < n:
                        counted = (group.long() if as_long else group), high + 1
            if counted is not None:  # the CPU, codes counted: the sums by row, read back
                slots, num_slots = counted
                if n > _CHUNKED_FROM:
                    rows = _row_sums(per_sample, slots, num_slots)
                else:  # _row_sums' ops
                    stacked = torch.stack(per_sample).to(_SUM_DTYPE)
                    rows = stacked.new_zeros(stacked.shape[0], num_slots).scatter_add_(
                        1, slots.expand(stacked.shape[0], n), stacked)
                # (a target that takes a gradient makes the label columns differentiable)
                constant = constant_denominators and not (reads_target and positive.requires_grad)
                lean = _lean_gaps(rows, ratio, floor, prob.dtype, constant)
                return lean if lean is not None else _gap_of_one(ratio, floor, rows.T, prob.dtype)
            sums = _summed(torch.stack(per_sample), *self._slots([group]))
            if batchable:  # the default comparison written out: its ops, fewer Python calls
                return _gap_of_one(ratio, floor, sums, prob.dtype)
            value = _nan_if_any_nan(sums, self._statistic(self._rates_of_sums(sums)))
            return value if value.dtype == prob.dtype else value.to(prob.dtype)

        return straight_line

    def fusion_key(self) -> tuple | None:
        """Rate statistics over the same inputs with the same prediction (soft, straight-through
        hard, or raw for mean_pred), sample weighting and distributed summing share their columns,
        slots and ``index_add``; the statistic, ``ref``, ``agg``, window and audited mode may differ.
        group_loss (its inner term's columns) is computed alone."""
        if self.inner is not None:
            return None
        return ("fairness rates", getattr(self, "input_names", None), self.raw, self.hard, self.sync, self.weighted)

    @classmethod
    def fuse(cls, terms: Sequence[Term]) -> Callable[..., tuple]:
        """One call for fairness terms of one ``fusion_key``: each distinct column (``p * (1 - y)``,
        ``1 - y``, ...) computed once, one ``index_add`` over all of them (one per slot layout:
        a window's K slots and the batch's counted or ranked ones differ), then each term's
        window, rates and statistic on its own columns of the sums, as its ``forward`` gives."""
        terms = tuple(terms)
        first = terms[0]

        def fused(*inputs: torch.Tensor) -> tuple:
            pred, prob, codes, positive, negative, sample_weight = first._prepared(inputs)
            if prob.shape[0] == 0 and not first._syncs():
                return tuple(prob.sum() for _ in terms)
            names = list(dict.fromkeys(name for term in terms for name in term.column_names))
            hard_names = list(dict.fromkeys(name for term in terms if term.audited for name in term.column_names))
            stacked = [_COLUMN[name](prob, positive, negative) for name in names]
            if hard_names:
                hard = (first._positive_logit(pred) > 0).to(prob.dtype)
                stacked += [_COLUMN[name](hard, positive, negative) for name in hard_names]
            counted = (first._read_slots(codes[0], prob.shape[0])
                       if sample_weight is None and len(codes) == 1 and not hard_names and not first._syncs()
                       and _one_batch(terms, names) else None)
            if counted is not None:  # the CPU, codes counted, one statistic for all: the sums by row, read back
                rows = _row_sums(stacked, *counted)
                constant = _constant_denominators(terms) and not (positive is not None and positive.requires_grad)
                lean = _lean_gaps(rows, first.ratio, first.floors[0], prob.dtype, constant)
                if lean is not None:
                    return lean.unbind(0)
                return tuple(_batched_gaps(first, rows.T, 0, len(terms), prob.dtype))
            columns = torch.stack(stacked)
            layouts: dict[tuple, torch.Tensor] = {}  # terms whose slots agree share one index_add
            values: list = []
            batch: list[tuple[Fairness, int]] = []  # (term, first column): one statistic for them all

            def flush() -> None:
                if len(batch) == 1:
                    term, start = batch[0]
                    own_sums = sums_of[term][:, start: start + 2]
                    values.append(_nan_if_any_nan(own_sums, term._statistic(term._rates_of_sums(own_sums))).to(prob.dtype))
                elif batch:
                    values.extend(_batched_gaps(batch[0][0], sums_of[batch[0][0]], batch[0][1], len(batch), prob.dtype))
                batch.clear()

            sums_of: dict[Fairness, torch.Tensor] = {}
            for term in terms:
                layout = (term.num_groups, term.momentum is not None)
                sums = layouts.get(layout)
                if sums is None:
                    sums = layouts[layout] = term._group_sums(columns, codes, sample_weight, windowed=False)
                sums_of[term] = sums
                own = [names.index(name) for name in term.column_names]
                if term._batchable and not term.audited and own[1] == own[0] + 1:
                    if batch and (term._batchable != batch[0][0]._batchable or sums is not sums_of[batch[0][0]]
                                  or own[0] != batch[-1][1] + 2):
                        flush()  # another form, layout, or columns not next to the batch's
                    batch.append((term, own[0]))
                    continue
                flush()
                if term.audited:
                    own += [len(names) + hard_names.index(name) for name in term.column_names]
                    values.append(term._audited(pred, _columns_of(sums, own)))
                    continue
                own_sums = term._windowed(_columns_of(sums, own))
                values.append(_nan_if_any_nan(own_sums, term._statistic(term._rates_of_sums(own_sums))).to(prob.dtype))
            flush()
            return tuple(values)

        return fused

    def _rates_of_sums(self, sums: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Each rate's (per-group rate, defined, overall rate) from the [slots, 2 x rates] group sums."""
        return [self._rates(sums[:, 2 * i], sums[:, 2 * i + 1], self.floors[i]) for i in range(self.num_rates)]

    def _statistic(self, rates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """The statistic from each rate's (per-group rate, defined, overall rate): eo combines two
        disparities, balanced_accuracy averages its two rates per group first."""
        if self.mean_of_rates:
            rates = [_mean_of_defined(rates)]
        gaps = [self._form(*rate) for rate in rates]
        if len(gaps) == 1:
            return gaps[0]
        return (gaps[0] + gaps[1]) / 2 if self.eo_mean else torch.maximum(gaps[0], gaps[1])

    def _audited(self, pred: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """In a constraint: the statistic of the hard rates (over the window) with the gradient of the
        batch's soft statistic (``hard + (soft - soft.detach())``); and that soft statistic. ``sums``
        holds the soft columns' group sums, then the hard columns'."""
        width = sums.shape[1] // 2
        momentum = self.momentum
        soft_sums, hard_sums = sums[:, :width], sums[:, width:].detach()
        if momentum is not None:
            if self.window_samples is not None:  # about one epoch: each sample's weight decays by e per epoch
                momentum = torch.exp(-hard_sums.new_tensor(float(pred.shape[0])) / self.window_samples.to(hard_sums.dtype))
            hard_sums = momentum * self.running_sums.to(hard_sums.dtype) + (1 - momentum) * hard_sums
            if self.training:  # a batch of NaN (or inf) leaves the history as it was
                finite = hard_sums.isfinite().all()
                self.running_sums.copy_(torch.where(finite, hard_sums, self.running_sums.to(hard_sums.dtype)))
                # An ema of momentum m averages over about 1 / (1 - m) updates.
                if isinstance(momentum, torch.Tensor):
                    self.window_updates.copy_(1 / (1 - momentum).clamp(min=1e-12))
                else:
                    self.window_updates.fill_(1 / max(1 - momentum, 1e-12))
        soft_rates, hard_rates = self._rates_of_sums(soft_sums), self._rates_of_sums(hard_sums)
        # The multiplier reads the audited statistic; the model's gradient is the batch's soft one
        # (TFCO's proxy-Lagrangian). Not mixed rate by rate: the window lags the model, and extreme
        # groups or a sign picked from stale rates would push the current gap the wrong way.
        soft = self._statistic(soft_rates)
        value = _nan_if_any_nan(sums, self._statistic(hard_rates) + (soft - soft.detach())).to(pred.dtype)
        surrogate = _nan_if_any_nan(soft_sums, soft).detach().to(pred.dtype)
        return value, surrogate

    def fit(self, *inputs: torch.Tensor | None) -> None:
        """``LossModule.fit`` reaches group_loss's inner term (``ce(weight=balanced)``'s class counts);
        a constraint's audited rates learn the group count from the data's codes (their largest plus
        one), and so run over a window."""
        if self.inner is not None:
            fit = getattr(self.inner, "fit", None)
            if fit is not None:
                fit(*inputs[: self.num_inner_inputs])
            return
        group = inputs[1] if len(inputs) > 1 else None
        if not self.audited or self._params.groups is not None or self.num_columns != 1 or group is None:
            return
        codes = self._codes([group], group.shape[0] if group.dim() else 1, first_position=1)[0]
        if codes.numel() == 0:
            return
        lowest, highest = int(codes.min()), int(codes.max())  # a one-off read, outside the training loop
        if lowest < 0 or highest >= MAX_GROUPS:
            return  # codes that cannot index slots: the rates stay each batch's (ranked codes)
        if self.num_groups is None or highest >= self.num_groups:
            self.num_groups = highest + 1
            self._audit_window()
        if self.momentum is not None and self._params.window is None:
            self.window_samples = torch.tensor(float(codes.shape[0]), dtype=torch.float64, device=codes.device)

    @torch.no_grad()
    def audit(self, *inputs: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
        """The statistic over all of ``inputs`` (a whole data set), exactly as fairlearn computes it:
        rates from hard predictions ``pred > 0`` (mean_pred and group_loss: their own values), group
        sums accumulated chunk by chunk with one index_add each, over slots ranked once for the whole
        data; no window, no state changed, no host synchronisation."""
        if self.inner is not None:
            inner_inputs = inputs[: self.num_inner_inputs]
            groups = inputs[self.num_inner_inputs: self.num_inner_inputs + self.num_columns]
            first = inner_inputs[0]
            n = first.shape[0] if first.dim() else 1
        else:
            groups = inputs[1: 1 + self.num_columns]
            n = inputs[0].shape[0]
        sample_weight = inputs[-1] if self.weighted else None
        codes = self._codes(list(groups), n, first_position=1 if self.inner is None else self.num_inner_inputs)
        slots, num_slots = self._slots(codes)
        sums = None
        for start in range(0, max(n, 1), chunk_size):
            rows = slice(start, start + chunk_size)
            columns = self._audit_columns([t[rows] if t.dim() else t for t in inputs])
            if sample_weight is not None:
                weight = self.expect_sample_weight(len(self.input_names) - 1, sample_weight[rows], columns.shape[0],
                                                   columns.dtype)
                columns = columns * weight[:, None]
            columns = columns.to(torch.float64)  # exact counts over millions of rows
            if sums is None:
                sums = columns.new_zeros(num_slots, columns.shape[1])
            sums.index_add_(0, slots[rows], columns)
        if self.inner is not None and self.worst_group:
            return self._worst_group(sums)
        return _nan_if_any_nan(sums, self._statistic(self._rates_of_sums(sums)))

    def _audit_columns(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """One chunk's per-sample columns [n, k]: hard predictions for the rates."""
        if self.inner is not None:
            first = inputs[0]
            n = first.shape[0] if first.dim() else 1
            dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
            return self.inner.per_sample_parts(*inputs[: self.num_inner_inputs], torch.ones(n, dtype=dtype, device=first.device))
        pred = inputs[0]
        if self.raw:
            value = self._raw_prediction(pred)
        else:
            value = (self._positive_logit(pred) > 0).to(pred.dtype)
        positive = negative = None
        if self.reads_target:
            target = inputs[1 + self.num_columns]
            if not _is_column(target, value.shape[0]):
                self.fail(1 + self.num_columns, f"expected 0/1 labels of shape ({value.shape[0]},), got {tuple(target.shape)}")
            positive = (target if target.dim() == 1 else target[:, 0]).to(value.dtype)
            negative = 1 - positive
        return torch.stack([column(value, positive, negative) for column in self.columns], dim=1)

    def state_restored(self) -> None:
        """After ``lossdsl.pickling`` put the buffers back: a group count learned by ``fit`` is the
        audited window's number of rows."""
        if self.audited and self.num_groups is None and self.running_sums is not None:
            self.num_groups = self.running_sums.shape[0]
            window = self._params.window
            self.momentum = window[1] if window is not None else AUDIT_WINDOW

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # A group count learned by fit comes back with the window it sized.
        history = state_dict.get(prefix + "running_sums")
        if self.audited and history is not None and self.running_sums is None:
            self.num_groups = history.shape[0]
            self._audit_window()
        samples = state_dict.get(prefix + "window_samples")
        if self.audited and samples is not None and self.window_samples is None:
            self.window_samples = torch.zeros_like(samples)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _group_loss(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The inner loss's mean per group: the worst group's, or the _gap / _ratio between groups."""
        inner_inputs = inputs[: self.num_inner_inputs]
        groups = inputs[self.num_inner_inputs: self.num_inner_inputs + self.num_columns]
        sample_weight = inputs[-1] if self.weighted else None
        first = inner_inputs[0]
        n = first.shape[0] if first.dim() else 1
        dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        per_sample = self.inner.per_sample_parts(*inner_inputs, torch.ones(n, dtype=dtype, device=first.device))  # [N, 2]
        codes = self._codes(groups, n, first_position=self.num_inner_inputs)
        if n == 0 and not self._syncs():
            return per_sample.sum()
        sums = self._group_sums(per_sample.T, codes, sample_weight)
        if not self.worst_group:
            return _nan_if_any_nan(sums, self._disparity(sums[:, 0], sums[:, 1])).to(per_sample.dtype)
        return self._worst_group(sums).to(per_sample.dtype)

    def _worst_group(self, sums: torch.Tensor) -> torch.Tensor:
        """group_loss: the worst group's mean loss (or the mean, or the smoothmax) from [slots, 2] sums."""
        defined = _above_zero(sums[:, 1])
        loss = safe_divide(sums[:, 0], sums[:, 1], defined)
        count = defined.sum()
        if self.agg == "mean":
            value = loss.masked_fill(~defined, 0.0).sum() / count.clamp(min=1)
        elif self.agg == "smoothmax":
            value = self._log_mean_exp(loss, defined, count)
        else:
            value = loss.masked_fill(~defined, float("-inf")).amax()
        return _nan_if_any_nan(sums, torch.where(count > 0, value, torch.zeros_like(value)))

    def _syncs(self) -> bool:
        return self.sync and distributed.active()

    def _codes(self, groups: tuple[torch.Tensor, ...], n: int, first_position: int) -> list[torch.Tensor]:
        """Each group input as integer codes [N], checked (shapes and dtypes only: no sync)."""
        codes = []
        for position, group in enumerate(groups, start=first_position):
            if not _is_column(group, n):
                self.fail(position, f"expected group codes of shape ({n},), got {tuple(group.shape)}")
            if group.is_floating_point() or group.is_complex():
                self.fail(position, f"expected integer group codes, got {group.dtype}")
            codes.append(group if group.dim() == 1 else group[:, 0])
        return codes

    def _group_sums(
        self, columns: torch.Tensor, codes: list[torch.Tensor], sample_weight: torch.Tensor | None,
        windowed: bool = True,
    ) -> torch.Tensor:
        """Per-sample columns ``[k, N]`` summed per group slot with one scatter (``index_add``), as
        ``[slots, k]``; the ema window's history mixed in.

        On the CPU the columns are summed along their rows (``scatter_add_`` over ``[k, N]``): about
        three times faster than ``index_add_`` of ``[N, k]`` rows, which also needs the columns
        interleaved (and the same sums, added in the same order). CUDA keeps ``index_add_``, which
        has a deterministic mode. Columns are summed in float64 (``_SUM_DTYPE``): a float32 or
        half-precision sum drifts with N (and a batch's sums overflow float16); the caller casts the
        statistic back.
        """
        columns = columns.to(_SUM_DTYPE)
        if sample_weight is not None:
            weight = self.expect_sample_weight(len(self.input_names) - 1, sample_weight, columns.shape[1], columns.dtype)
            columns = columns * weight
        sums = _summed(columns, *self._slots(codes))
        if self._syncs():
            if self.num_groups is None:
                raise LossSpecError(
                    f"{self.where}: under torch.distributed the ranks sum their group statistics, so they must "
                    "agree on the group slots: give groups=K (or declare 'group[N] of K'), or sync=false to keep "
                    "each rank's own batch",
                    code="E403",
                )
            sums = distributed.all_reduce_sum(sums.contiguous())
        return self._windowed(sums) if windowed else sums

    def _windowed(self, sums: torch.Tensor) -> torch.Tensor:
        """The batch's group sums mixed into the ema window's history (updated in training mode)."""
        if self.momentum is None:
            return sums
        # The batch's differentiable sums over the detached history.
        sums = self.momentum * self.running_sums.to(sums.dtype) + (1 - self.momentum) * sums
        if self.training:  # a batch of NaN (or inf) gives NaN now, and leaves the history as it was
            history = sums.detach()
            finite = history.isfinite().all()  # the whole batch, so the sums stay consistent (no sync)
            self.running_sums.copy_(torch.where(finite, history, self.running_sums.to(history.dtype)))
        return sums

    def _disparity(self, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        """The statistic's form over the groups whose rate is defined; 0 with fewer than two of them."""
        return self._form(*self._rates(numerator, denominator))

    def _rates(
        self, numerator: torch.Tensor, denominator: torch.Tensor, floor: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Each group's rate, whether it is defined (its denominator above ``floor``), and (for
        ``ref=overall``) the overall rate."""
        defined = _above_zero(denominator, floor)
        rate = safe_divide(numerator, denominator, defined)
        if not self.overall:
            return rate, defined, None
        total = denominator.sum()
        return rate, defined, safe_divide(numerator.sum(), total, _above_zero(total, floor))

    def _form(self, rate: torch.Tensor, defined: torch.Tensor, overall: torch.Tensor | None) -> torch.Tensor:
        """The statistic's form over the groups whose rate is defined; 0 with fewer than two of them."""
        count = defined.sum()
        if overall is not None:
            if self.ratio:  # fairlearn's to_overall ratio: from min(g, o) / max(g, o) per group
                low, high = torch.minimum(rate, overall), torch.maximum(rate, overall)
                positive = _above_zero(high)
                ratios = safe_divide(low, high, positive)
                distance = 1 - torch.where(positive, ratios, torch.ones_like(ratios))  # both 0: equal
            else:
                distance = (rate - overall).abs()
            value = self._combine_distances(distance, defined, count)
        elif self.agg == "mean":
            value = self._mean_over_pairs(rate, defined, count)
        else:
            return self._largest_and_smallest(rate, defined, count)  # 0 for fewer than two groups already
        return torch.where(count >= 2, value, 0.0)

    def _combine_distances(self, distance: torch.Tensor, defined: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """ref=overall: the largest, mean or log-mean-exp of the defined groups' distances."""
        if self.agg == "max":
            return distance.masked_fill(~defined, -1.0).amax()
        if self.agg == "mean":
            return distance.masked_fill(~defined, 0.0).sum() / count.clamp(min=1)
        return self._log_mean_exp(distance, defined, count)

    def _largest_and_smallest(self, rate: torch.Tensor, defined: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """ref=groups: largest minus smallest (or 1 - smallest / largest); smoothmax(T) softens both."""
        if self.temperature is None:  # sentinels never win and take no gradient
            undefined = ~defined
            largest = rate.masked_fill(undefined, float("-inf")).amax()
            smallest = rate.masked_fill(undefined, float("inf")).amin()
        else:
            largest = self._log_mean_exp(rate, defined, count)
            smallest = -self._log_mean_exp(-rate, defined, count)
        enough = count >= 2
        if not self.ratio:  # one where: the unused -inf - inf (no group) takes no gradient through it
            gap = largest - smallest
            return torch.where(enough, gap, 0.0)  # (a scalar: no zeros_like op)
        largest = torch.where(enough, largest, torch.ones_like(largest))
        smallest = torch.where(enough, smallest, torch.ones_like(smallest))
        positive = _above_zero(largest)
        ratio = safe_divide(smallest, largest, positive)
        return torch.where(positive, 1 - ratio, 0.0)

    def _log_mean_exp(self, values: torch.Tensor, defined: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``T * log(mean(exp(values / T)))`` over the defined groups: between their mean and their max."""
        t = self.temperature
        # With no group defined every slot takes part, so the gradient stays finite (unused).
        left_out = ~defined & (count > 0)
        # As largest + T log(1 + mean(expm1((v - largest) / T))): v / T would overflow float32 for a
        # small T (1e-30), (v - largest) / T only goes to -inf; and exp rounds to 1 for a large T
        # (1e30), where expm1 keeps (v - largest) / T. The shift is detached: it cancels in value and
        # gradient (the gradient is softmax((v - largest) / T), whatever the shift).
        largest = values.masked_fill(left_out, float("-inf")).amax().detach()
        largest = torch.where(largest.isfinite(), largest, 0.0)  # an inf loss stays inf, not inf - inf
        scaled = ((values - largest) / t).masked_fill(left_out, 0.0)  # (0: finite, for the gradient)
        taking_part = torch.where(count > 0, count, values.shape[0]).to(values.dtype)
        mean_expm1 = torch.expm1(scaled).masked_fill(left_out, 0.0).sum() / taking_part
        lme = largest + t * torch.log1p(mean_expm1)
        return torch.where(count > 0, lme, torch.zeros_like(lme))

    def _mean_over_pairs(self, rate: torch.Tensor, defined: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """ref=groups, agg=mean: the disparity averaged over all pairs of defined groups, in O(K log K).

        With the defined rates sorted, ``x_0 <= ... <= x_{m-1}``, the pairs' gaps sum to
        ``sum_k x_k (2k - m + 1)`` and their ratios ``x_i / x_j`` (i < j) to ``sum_j prefix_j / x_j``.
        """
        ordered = rate.masked_fill(~defined, float("inf")).sort().values
        index = torch.arange(rate.shape[0], device=rate.device)
        valid = index < count
        ordered = ordered.masked_fill(~valid, 0.0)
        pairs = (count * (count - 1) // 2).clamp(min=1).to(rate.dtype)
        if not self.ratio:
            return (ordered * (2 * index - count + 1).to(rate.dtype)).sum() / pairs
        before = ordered.cumsum(0) - ordered  # sum of the smaller rates before each
        positive = _above_zero(ordered)
        ratios = torch.where(positive, safe_divide(before, ordered, positive),
                             index.to(rate.dtype))  # a rate of 0 equals the zeros before it
        return 1 - ratios.masked_fill(~valid, 0.0).sum() / pairs

    def _raw_prediction(self, pred: torch.Tensor) -> torch.Tensor:
        self.expect_float(0, pred)
        if pred.dim() == 2 and pred.shape[1] == 1:
            return pred[:, 0]
        if pred.dim() != 1:
            self.fail(0, f"mean_pred needs predictions [N] or [N, 1], got shape {tuple(pred.shape)}")
        return pred

    def _positive_probability(self, pred: torch.Tensor) -> torch.Tensor:
        logit = self._positive_logit(pred)
        prob = torch.sigmoid(logit)
        if self.hard:  # straight-through: the hard prediction's value, the soft prediction's gradient
            return (logit > 0).to(prob.dtype) + (prob - prob.detach())
        return prob

    def _positive_logit(self, pred: torch.Tensor) -> torch.Tensor:
        """The logit of class 1: ``pred`` itself, or the difference of an [N, 2] pair's."""
        self.expect_float(0, pred)
        if pred.dim() == 1:
            logit = pred
        elif pred.dim() == 2 and pred.shape[1] == 1:
            logit = pred[:, 0]
        elif pred.dim() == 2 and pred.shape[1] == 2:
            logit = pred[:, 1] - pred[:, 0]  # softmax(pred)[:, 1] is sigmoid of the difference
        else:
            self.fail(0, f"fairness() needs binary logits [N], [N, 1] or [N, 2], got shape {tuple(pred.shape)}")
        return logit

    def _slots(self, codes: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Each sample's group slot, and the number of slots.

        - ``groups=K`` where the K slots are needed (a window's rows, the ranks' shared slots under
          torch.distributed) or cost no more than the batch (K <= N): the codes index K slots.
        - Else, on the CPU outside torch.compile, where reading a value costs no synchronisation:
          the count is read from the data (the largest code plus one; the product of the columns'
          for an intersection, numbered as the ranking would order them) and the codes index that
          many slots when they are non-negative and need no more slots than the batch has rows.
          With ``groups=K`` a code outside [0, K) is E402 here, as the K slots' index_add gives.
        - Else (CUDA, torch.compile, negative or sparse codes): the codes are ranked within the
          batch, which needs no read (a batch of N holds at most N groups): sorted
          lexicographically over the columns of an intersection, one stable sort per column (a
          loop over columns, not groups), then numbered where any column changes.

        A group absent from the batch takes an empty slot in the first two, which the statistic
        leaves out as it does any undefined rate, so all three give the same value.
        """
        n = codes[0].shape[0]
        if self.num_groups is not None and (self.num_groups <= n or self.momentum is not None or self._syncs()):
            return codes[0].long(), self.num_groups
        if n and host_reads_are_free(codes[0]):
            counted = self._count_codes(codes, n)
            if counted is not None:
                return counted
        return _ranked_slots(codes)

    def _read_slots(self, codes: torch.Tensor, n: int) -> tuple[torch.Tensor, int] | None:
        """``_slots`` of one group input where host reads are free and it gives K known or counted
        slots (not under torch.distributed: the caller's check); else None (ranked codes, CUDA,
        torch.compile), where the caller takes ``_slots``."""
        if not host_reads_are_free(codes):
            return None
        if self.num_groups is not None and (self.num_groups <= n or self.momentum is not None):
            return codes.long(), self.num_groups
        return self._count_codes([codes], n)

    def _count_codes(self, codes: list[torch.Tensor], n: int) -> tuple[torch.Tensor, int] | None:
        """Slots from the codes read on the CPU: mixed-radix codes over the columns' counts and
        their product, or None where that needs more slots than ``n`` (or a code is negative)."""
        sizes = []
        for column in codes:
            lowest, highest = torch.aminmax(column)
            lowest, highest = int(lowest), int(highest)  # a host read: free on the CPU
            if self.num_groups is not None and (lowest < 0 or highest >= self.num_groups):
                bad = lowest if lowest < 0 else highest
                self.fail(1 if self.inner is None else self.num_inner_inputs,
                          f"group code {bad} lies outside [0, {self.num_groups}) (groups={self.num_groups}); "
                          "leave groups= out for any codes")
            if lowest < 0:
                return None
            sizes.append(highest + 1)
        count = 1
        for size in sizes:
            count *= size
            if count > n:
                return None
        slots = codes[0].long()
        for column, size in zip(codes[1:], sizes[1:]):
            slots = slots * size + column.long()
        return slots, count


def _batched_gaps(term: Fairness, sums: torch.Tensor, start: int, count: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """``count`` fused single-rate statistics (ref=groups, agg=max) whose (numerator, denominator)
    columns follow each other from ``start``: the ops of one term's ``_form`` over ``[groups,
    terms]``, reducing over the groups. Max, min, the counts and the element-wise rates are those
    of each term alone (exact), and so are the gradients."""
    block = sums[:, start: start + 2 * count]
    numerator, denominator = block[:, 0::2], block[:, 1::2]
    defined = _above_zero(denominator, term.floors[0])
    value = _spread(safe_divide(numerator, denominator, defined), defined, term.ratio)
    has_nan = block.isnan().reshape(block.shape[0], count, 2).any(2).any(0)  # each term's own two columns
    value = torch.where(has_nan, float("nan"), value)
    return list((value if value.dtype == dtype else value.to(dtype)).unbind(0))


def _gap_of_one(ratio: bool, floor: float, sums: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One single-rate statistic (ref=groups, agg=max) from its [slots, 2] sums: the ops of
    ``_rates``, ``_largest_and_smallest`` and ``_nan_if_any_nan`` in their order."""
    numerator, denominator = sums[:, 0], sums[:, 1]
    defined = _above_zero(denominator, floor)
    value = _spread(safe_divide(numerator, denominator, defined), defined, ratio)
    value = torch.where(sums.isnan().any(), float("nan"), value)
    return value if value.dtype == dtype else value.to(dtype)


def _spread(rate: torch.Tensor, defined: torch.Tensor, ratio: bool) -> torch.Tensor:
    """Over the groups (dim 0): the largest defined rate minus the smallest, or for a ratio
    1 - smallest / largest; 0 where fewer than two groups have a defined rate."""
    undefined = ~defined
    largest = rate.masked_fill(undefined, float("-inf")).amax(0)
    smallest = rate.masked_fill(undefined, float("inf")).amin(0)
    enough = defined.sum(0) >= 2
    if not ratio:
        return torch.where(enough, largest - smallest, 0.0)
    largest = torch.where(enough, largest, torch.ones_like(largest))
    smallest = torch.where(enough, smallest, torch.ones_like(smallest))
    positive = _above_zero(largest)
    return torch.where(positive, 1 - safe_divide(smallest, largest, positive), 0.0)


def _one_batch(terms: Sequence[Fairness], names: list[str]) -> bool:
    """Whether the fused terms are one batch of ``_batched_gaps`` over all the columns: single-rate
    statistics of one form and floor, none audited or windowed, one slot layout, each term's two
    columns its own and in the terms' order."""
    first = terms[0]
    return (bool(first._batchable) and len(names) == 2 * len(terms)
            and all(term._batchable == first._batchable and not term.audited and term.momentum is None
                    and term.num_groups == first.num_groups for term in terms)
            and names == [name for term in terms for name in term.column_names])


def _constant_denominators(terms: Sequence[Fairness]) -> bool:
    """Whether no single-rate term's denominator column reads the prediction (ppv's ``p`` does)."""
    return all(term.column_names[1] in _LABEL_COLUMNS for term in terms)


def _lean_gaps(rows: torch.Tensor, ratio: bool, floor: float, dtype: torch.dtype,
               constant_denominators: bool) -> torch.Tensor | None:
    """The gaps (or ratios) of single-rate statistics from their CPU group sums ``rows`` ``[2 m, K]``
    (each statistic's numerator row, then its denominator row), by only the ops their values need:
    the sums are read back (free on the CPU) and, where every slot's rate is defined, every sum is
    finite, there are at least two slots and (for a ratio) each largest rate is positive, the guards
    of ``_spread`` and ``_nan_if_any_nan`` change nothing, and are left out: the same values and
    gradients to the bit, as a scalar for one statistic and ``[m]`` for several. Else None (an empty
    group, NaN, inf, one slot, many slots): the caller takes the general ops on the same sums.
    ``constant_denominators``: no denominator column reads the prediction (``one``, ``y``, ``1 - y``),
    so none takes a gradient (the general ops compute one, for a column that has no use for it)."""
    num_slots = rows.shape[1]
    if not 2 <= num_slots <= _LEAN_SLOTS:
        return None
    lowest = floor if floor > 0 else _SMALLEST_POSITIVE  # _above_zero's defined, for finite sums
    values = rows.tolist()
    count = len(values) // 2
    if count == 1 and num_slots == 2:  # one statistic over two groups (the one-liner's): the loop below, unrolled
        (n0, n1), (d0, d1) = values
        if not (-math.inf < n0 < math.inf and -math.inf < n1 < math.inf and lowest <= d0 < math.inf
                and lowest <= d1 < math.inf) or (ratio and not max(n0 / d0, n1 / d1) > 0):
            return None
        values = ()
    for numerators, denominators in zip(values[0::2], values[1::2]):
        for numerator, denominator in zip(numerators, denominators):
            if not (-math.inf < numerator < math.inf and lowest <= denominator < math.inf):  # (False for NaN)
                return None
        # (float64, as torch divides)
        if ratio and not max(numerator / denominator for numerator, denominator in zip(numerators, denominators)) > 0:
            return None
    # Two selects, not unbind: unbind's backward stacks the gradient with zeros for the detached
    # denominators (three ops); the numerators' select_backward is one, the denominators' none.
    if count == 1:
        numerator, denominator = rows[0], rows[1]
    else:
        pairs = rows.view(count, 2, num_slots)
        numerator, denominator = pairs[:, 0], pairs[:, 1]
    rate = numerator / (denominator.detach() if constant_denominators else denominator)
    if num_slots == 2 and not ratio:  # largest minus smallest of two: |r0 - r1| (exact as r0 * 1 + r1 * -1),
        value = (rate @ _PLUS_MINUS).abs()  # and a tie's gradient 0, as amax's and amin's halves cancel
    else:
        largest, smallest = rate.amax(-1), rate.amin(-1)
        value = 1 - smallest / largest if ratio else largest - smallest
    return value if value.dtype == dtype else value.to(dtype)


def _columns_of(sums: torch.Tensor, own: list[int]) -> torch.Tensor:
    """A fused term's columns of the shared sums: a view where they are adjacent (no copy, and no
    index op in the backward), else gathered."""
    if own == list(range(own[0], own[0] + len(own))):
        return sums[:, own[0]: own[0] + len(own)]
    return sums[:, own]


def _summed(columns: torch.Tensor, slots: torch.Tensor, num_slots: int) -> torch.Tensor:
    """``[k, N]`` columns summed per slot in float64, as ``[slots, k]`` (see ``Fairness._group_sums``)."""
    # Cast here, once for the stacked columns: computing them from a float64 p instead mixes dtypes
    # in each product (slower: 1.55 against 1.30 times float32's time at N = 2^20, and twice the memory).
    columns = columns.to(_SUM_DTYPE)
    if columns.device.type == "cpu":
        return columns.new_zeros(columns.shape[0], num_slots).scatter_add_(1, slots.expand_as(columns), columns).T
    return columns.new_zeros(num_slots, columns.shape[0]).index_add_(0, slots, columns.T)


def _row_sums(columns: list[torch.Tensor], slots: torch.Tensor, num_slots: int) -> torch.Tensor:
    """The CPU's per-sample columns (each ``[N]``, eager, host reads free) summed per slot in float64,
    as ``[k, slots]``: the ops of ``_summed`` on their stack, or beyond ``_CHUNKED_FROM`` rows
    ``_ChunkedRowSums``, the same sums to the bit without the float64 copy of every column."""
    # (not under forward-mode AD, for which the Function has no jvp: the ops below have one)
    if slots.shape[0] > _CHUNKED_FROM and getattr(torch.autograd.forward_ad, "_current_level", -1) < 0:
        return _ChunkedRowSums.apply(slots, num_slots, *columns)
    stacked = torch.stack(columns).to(_SUM_DTYPE)
    return stacked.new_zeros(stacked.shape[0], num_slots).scatter_add_(1, slots.expand_as(stacked), stacked)


class _ChunkedRowSums(torch.autograd.Function):
    """``scatter_add_`` of the float64 stack of the columns, ``_SUM_CHUNK`` rows at a time into the
    same sums: each slot's values are added one after another in row order, as one scatter over all
    rows adds them, so the sums are the same to the bit, but the float64 copy is a chunk's (2 MiB a
    column), not the batch's (8 MiB a column and a million rows), and no stack of the columns is made.
    The backward gathers each column's gradient from the sums' gradient cast to the column's dtype
    first (a cast and a gather commute: the same values) and only for the columns that need one
    (not the labels' ``1 - y``), instead of a float64 ``[k, N]`` gather cast back afterwards."""

    @staticmethod
    def forward(ctx, slots: torch.Tensor, num_slots: int, *columns: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(slots)
        n = slots.shape[0]
        sums = torch.zeros(len(columns), num_slots, dtype=_SUM_DTYPE, device=slots.device)
        buffer = torch.empty(len(columns), min(n, _SUM_CHUNK), dtype=_SUM_DTYPE, device=slots.device)
        for start in range(0, n, _SUM_CHUNK):
            stop = min(start + _SUM_CHUNK, n)
            block = buffer[:, : stop - start]
            for row, column in zip(block, columns):
                row.copy_(column[start:stop])
            sums.scatter_add_(1, slots[start:stop].expand_as(block), block)
        ctx.dtypes = [column.dtype for column in columns]
        return sums

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:  # noqa: ANN001
        (slots,) = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        grads = [grad[i].to(dtype).index_select(0, slots) if need else None
                 for i, (need, dtype) in enumerate(zip(needs, ctx.dtypes))]
        return (None, None, *grads)


def _ranked_slots(codes: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The codes ranked within the batch, into N slots: static shapes, no read, no sync."""
    if len(codes) == 1:  # one column: the sort gives the ordered codes too
        ordered, order = torch.sort(codes[0])
        changed = ordered[1:] != ordered[:-1]
    else:
        order = torch.argsort(codes[-1], stable=True)
        for column in reversed(codes[:-1]):
            order = order[torch.argsort(column[order], stable=True)]
        changed = torch.zeros_like(order[1:], dtype=torch.bool)
        for column in codes:
            ordered = column[order]
            changed = changed | (ordered[1:] != ordered[:-1])
    starts = torch.ones_like(order)
    starts[1:] = changed.long()
    ranks = starts.cumsum(0) - 1
    return torch.empty_like(ranks).scatter_(0, order, ranks), order.shape[0]
