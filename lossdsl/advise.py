"""``lossdsl advise``: a loss spec suggested from the data, every choice with the statistic behind it.

``advise(target=..., features=None, task=None, groups=None, metric=None, weight=None)`` measures the
target (and the features, groups and weights when given), applies the rules of docs/choosing.md in
order, and returns an ``Advice``: ``.spec`` (a complete ``.loss`` text whose comments quote each
statistic), ``.reasons``, ``.stats`` and ``.to_json()``. The spec passes ``lossdsl.check``.

The rules, in the order they apply (thresholds and sources in docs/choosing.md, "The rules"):

1. the task (AutoGluon's inference, or ``task=``);
2. class imbalance (ratio and smallest count) -> ce, ``weight=balanced``, class-balanced weights or
   focal; multi-label -> bce with per-label ``pos_weight``, strongly co-occurring labels reported;
3. regression: the metric (pinball -> quantile, mae -> mae), counts and long right tails ->
   poisson_nll, heavy tails (robust z, kurtosis) -> huber, never-negative or bounded -> soft_bound;
4. conflicting duplicate labels (features given) -> label smoothing;
5. groups -> a ``subject to fairness(...)`` bound, each group's size, small groups warned about;
6. segmentation masks -> dice + ce;
7. a metric the loss does not optimise -> its surrogate (soft_f1 under strong imbalance).

A problem with the data (one value, text where numbers are needed, NaN weights, ...) is a
``lossdsl.datafiles.DataError`` with a one-line message. numpy is imported inside the functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .datafiles import DataError

TASKS = ("binary", "multiclass", "multilabel", "regression", "segmentation")

# -- thresholds (each stated, with its source, in docs/choosing.md) ----------------------------------
#: AutoGluon's problem-type inference (autogluon.core.utils.infer_problem_type): an integer target
#: is multiclass when it has at most this many distinct values ...
MULTICLASS_UPPER_LIMIT = 1000
#: ... and they are at most this share of the rows (0.05 above LARGE_DATA rows, 0.1 up to it).
MULTICLASS_SHARE_LARGE, MULTICLASS_SHARE_SMALL, LARGE_DATA = 0.05, 0.1, 1000
#: Majority / minority count from which class weights pay off (scikit-learn's 'balanced').
IMBALANCE_WEIGHT = 3.0
#: From here (or a smallest class under TINY_CLASS rows): class-balanced weights (Cui et al., 2019).
IMBALANCE_STRONG = 10.0
#: Datumaro's imbalance warning ratio: from here, focal loss with the class-balanced weights as alpha.
IMBALANCE_EXTREME = 50.0
TINY_CLASS = 20
#: Cui et al. (2019)'s beta for the effective number of samples (1 - beta^n) / (1 - beta).
CLASS_BALANCED_BETA = 0.9999
#: Two labels co-occur strongly when |A and B| / |A or B| (their Jaccard index) reaches this.
CO_OCCURRENCE_JACCARD = 0.7
#: |y - median| / (1.4826 MAD) beyond this is an outlier (Datumaro flags mean +- 5 sigma).
ROBUST_Z_OUTLIER = 5.0
#: Heavy tails: outliers on at least this share of rows (a normal sample has 5.7e-7), or ...
OUTLIER_SHARE = 0.001
#: ... an excess kurtosis of at least this (the Laplace distribution's).
EXCESS_KURTOSIS_HEAVY = 3.0
#: Huber's tuning constant: 95% efficiency at the normal (Huber, 1964), in robust-scale units.
HUBER_K = 1.345
#: A count-like target: at least this share of zeros, or a skewness of at least LONG_RIGHT_TAIL.
ZERO_SHARE = 0.3
LONG_RIGHT_TAIL = 2.0
#: A cap or floor: at least this share of the rows sits exactly at the maximum (or minimum), and at
#: least PILE_UP times as many rows as hold an average distinct value (a pile-up, not one extreme row).
MASS_AT_BOUND = 0.01
PILE_UP = 5
#: Label noise from duplicate feature rows worth smoothing for (share of rows off their group's majority).
CONFLICT_RATE = 0.01
#: ... counted only where duplicates are the exception (at most this share of rows repeats): with
#: coarse features, repeated rows with different labels are the task's own uncertainty, not noise.
DUPLICATED_SHARE = 0.5
MAX_LABEL_SMOOTHING = 0.5
#: A group under this many rows has an unstable rate (standard error up to 0.5 / sqrt(n) = 0.091).
SMALL_GROUP = 30
FAIRNESS_BOUND_RATE = 0.05
FAIRNESS_BOUND_LOSS_RATIO = 0.2
#: Foreground below this share of pixels: Dice without the background channel (nnU-Net's do_bg=False).
SMALL_FOREGROUND = 0.1

#: Regression targets beyond this size (or with a scale below its inverse) are refused: rescale them.
FLOAT32_SAFE = 1e18

#: The metric named -> the fairness rate it asks to equalise (docs/choosing.md); None: dp_gap.
FAIRNESS_STAT_FOR_METRIC = {
    None: "dp_gap", "accuracy": "error_rate_gap", "balanced_accuracy": "error_rate_gap",
    "recall": "tpr_gap", "precision": "fpr_gap", "f1": "eo_gap", "fbeta": "eo_gap",
    "roc_auc": "dp_gap", "log_loss": "dp_gap",
}
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "recall", "precision", "roc_auc", "log_loss")
REGRESSION_METRICS = ("mae", "rmse", "mse", "r2")
SEGMENTATION_METRICS = ("dice", "iou")
METRIC_ALIASES = {"auc": "roc_auc", "logloss": "log_loss", "ce": "log_loss", "l1": "mae", "quantile": "pinball",
                  "jaccard": "iou", "f1_score": "f1", "sensitivity": "recall", "tpr": "recall"}

#: Words a spec cannot use as an input name (statements, operators, and the model's output).
_NOT_NAMES = {"and", "or", "not", "implies", "in", "as", "using", "of", "let", "param", "loss", "subject",
              "to", "include", "inputs", "true", "false", "pred"}


@dataclass(frozen=True)
class Reason:
    """One choice and the statistic it rests on."""

    rule: str
    choice: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "choice": self.choice, "why": self.why}


@dataclass
class Advice:
    """What ``advise`` found: the spec text, the reasons for each choice, the statistics measured."""

    task: str
    spec: str
    reasons: list[Reason]
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "stats": self.stats, "reasons": [r.to_json() for r in self.reasons],
                "warnings": list(self.warnings), "spec": self.spec}

    def __str__(self) -> str:
        return self.spec


# -- the spec being built ----------------------------------------------------------------------------


@dataclass
class _Draft:
    rows: int
    target_label: str
    header: list[str] = field(default_factory=list)
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (name, kind[shape] [of K])
    lets: list[tuple[list[str], str, str]] = field(default_factory=list)  # (comments, name, expression)
    constraints: list[tuple[list[str], str]] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The data term as group_loss reads it: without sample_weight (fairness() takes that itself).
    per_group: str = ""

    def data(self, comments: list[str], term: str, args: list[str]) -> None:
        self.lets.append((comments, "data", f"{term}({', '.join(args)})"))
        unweighted = [arg for arg in args if not arg.startswith("sample_weight=")]
        self.per_group = f"{term}({', '.join(unweighted)})"

    def reason(self, rule: str, choice: str, why: str) -> str:
        self.reasons.append(Reason(rule, choice, why))
        return f"{rule}: {why} -> {choice}"

    def render(self) -> str:
        lines = [f"# Suggested by lossdsl advise for {self.target_label} ({self.rows:,} rows).",
                 "# Each choice quotes the statistic it rests on; the rules are in docs/choosing.md."]
        lines += [f"# {text}" for text in self.header]
        # The rules that looked and added nothing say so too: not adding a term is a choice.
        lines += [f"# {r.rule}: {r.why} -> nothing added" for r in self.reasons if r.choice == "none"]
        lines += [f"# warning: {text}" for text in self.warnings]
        lines.append("inputs:")
        lines += [f"    {name}: {kind}" for name, kind in self.inputs]
        for comments, name, expression in self.lets:
            lines.append("")
            lines += [f"# {text}" for text in comments]
            lines.append(f"let {name} = {expression}")
        lines += ["", "loss = " + " + ".join(name for _, name, _ in self.lets)]
        for comments, statement in self.constraints:
            lines.append("")
            lines += [f"# {text}" for text in comments]
            lines.append(statement)
        return "\n".join(lines) + "\n"


# -- the entry point ---------------------------------------------------------------------------------


def advise(target: Any, features: Any = None, task: str | None = None, groups: Any = None,
           metric: str | None = None, weight: Any = None) -> Advice:
    """Suggest a spec for ``target`` (an array or tensor: ``[N]``, ``[N, C]`` 0/1 for multi-label,
    ``[N, H, W]`` masks; or ``{name: column}``, several 0/1 columns for multi-label).

    ``features``: ``[N, F]`` or ``{name: column}``, only read to find conflicting duplicate labels.
    ``groups``: ``{name: codes}`` (or one array, named ``group``) of protected groups.
    ``metric``: the metric that matters (``f1``, ``recall``, ``accuracy``, ``mae``, ``rmse``,
    ``pinball@0.9``, ...). ``weight``: per-row sample weights ``[N]`` (or ``{name: column}``).
    """
    import numpy as np

    target_name, target_values = _target_array(target)
    if target_values.ndim == 2 and target_values.shape[1] == 1:  # one column as [N, 1]
        target_values = target_values[:, 0]
    rows = target_values.shape[0]
    if rows == 0:
        raise DataError("the target is empty")
    metric_name, metric_arg = parse_metric(metric)
    several = isinstance(target, Mapping) and len(target) > 1
    label = (f"target columns {', '.join(repr(str(name)) for name in target)}" if several
             else f"target '{target_name}'" if target_name else "the target")
    draft = _Draft(rows=rows, target_label=label)
    names = _Names(draft)
    ident = names.add("target" if several or not target_name else target_name)
    if several:
        draft.header.append(f"{ident} holds the target columns in this order: {', '.join(map(str, target))}")
    stats: dict[str, Any] = {"rows": rows}

    weight_name, weight_values = _weight_array(weight, rows)
    group_columns = _group_arrays(groups, rows)

    task, why = infer_task(target_values, task, target_name, list(map(str, target)) if several else None)
    stats["task"] = task
    draft.header.append(draft.reason("task", task, why))
    _check_metric(metric_name, task)

    data_args: list[str] = [] if ident == "target" else [f"target={ident}"]
    weight_ident = None
    if weight_values is not None:
        weight_ident = names.add(weight_name or "weight")
        stats["weight"] = {"column": weight_name, "sum": float(weight_values.sum())}
        data_args.append(f"sample_weight={weight_ident}")

    if task == "segmentation":
        _segmentation(draft, stats, target_values, ident, data_args)
        if group_columns:
            draft.warnings.append("groups are ignored for segmentation masks (no per-image fairness rate)")
    else:
        if task == "regression":
            values = _numeric(target_values, target_name, task)
            finite = np.isfinite(values)
            if not finite.all():
                bad = int((~finite).sum())
                raise DataError(f"{label} holds {bad:,} NaN or infinite value{'s' * (bad != 1)}; "
                                "drop or fill those rows first")
            _regression(draft, stats, values, ident, data_args, metric_name, metric_arg)
        else:
            codes, classes, counts = _encode_classes(target_values, task, label)
            _classification(draft, stats, task, codes, classes, counts, ident, data_args, metric_name,
                            metric_arg, weight_values, features)
        for name, codes_of_group in group_columns:
            _fairness(draft, stats, names.add(name), name, codes_of_group, task, metric_name, ident,
                      weight_ident)
    if weight_ident is not None:
        draft.inputs.append((weight_ident, "weight[N]"))
    spec = draft.render()
    return Advice(task=task, spec=spec, reasons=draft.reasons, stats=_plain(stats), warnings=draft.warnings)


# -- inputs --------------------------------------------------------------------------------------------


def _as_numpy(values: Any, what: str):  # noqa: ANN202
    import numpy as np

    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, read without importing torch
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} is not an array: {exc}") from None
    if array.ndim == 0:
        raise DataError(f"{what} is a single value, not a column")
    if array.dtype == object:
        array = array.astype(str)
    return array


def _target_array(target: Any) -> tuple[str, Any]:
    import numpy as np

    if isinstance(target, Mapping):
        if not target:
            raise DataError("no target column given")
        columns = [(str(name), _as_numpy(values, f"target column '{name}'")) for name, values in target.items()]
        if len(columns) == 1:
            return columns[0]
        lengths = {values.shape[0] for _, values in columns}
        if len(lengths) > 1 or any(values.ndim != 1 for _, values in columns):
            raise DataError("the target columns must be 1-D and of one length")
        for name, values in columns:
            if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
                raise DataError(f"target column '{name}' is not numeric: several target columns must be "
                                "0/1 labels (multi-label)")
        stacked = np.stack([values for _, values in columns], axis=1)
        return "", stacked  # one input, `target`: the spec lists the columns in order
    return "", _as_numpy(target, "the target")


def _weight_array(weight: Any, rows: int) -> tuple[str | None, Any]:
    import numpy as np

    if weight is None:
        return None, None
    name = None
    if isinstance(weight, Mapping):
        if len(weight) != 1:
            raise DataError("give one weight column")
        name, weight = next(iter(weight.items()))
    values = _as_numpy(weight, f"weight column '{name}'" if name else "the weights")
    what = f"weight column '{name}'" if name else "the weights"
    if values.ndim != 1 or values.shape[0] != rows:
        raise DataError(f"{what} must be one value per row ({rows:,}), got shape {tuple(values.shape)}")
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{what} is not numeric (e.g. {str(values[0])!r})")
    values = values.astype(np.float64)
    if not np.isfinite(values).all() or (values < 0).any() or not values.any():
        raise DataError(f"{what} must be finite, non-negative and not all zero")
    return name, values


def _group_arrays(groups: Any, rows: int) -> list[tuple[str, Any]]:
    import numpy as np

    if groups is None:
        return []
    items = groups.items() if isinstance(groups, Mapping) else [("group", groups)]
    result = []
    for name, values in items:
        array = _as_numpy(values, f"group column '{name}'")
        if array.ndim != 1 or array.shape[0] != rows:
            raise DataError(f"group column '{name}' must be one value per row ({rows:,}), "
                            f"got shape {tuple(array.shape)}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise DataError(f"group column '{name}' holds NaN or infinite values")
        result.append((str(name), array))
    return result


def input_name(column: str) -> str:
    """The spec's input name for a column: its own where it is a valid name, else sanitised (other
    characters become '_', a leading digit gets 'c_', a reserved word '_col'). ``compare`` passes
    each column under this name too, so the specs advise writes find their inputs."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", column) or "target"
    if name[0].isdigit():
        name = "c_" + name
    while name in _NOT_NAMES:
        name += "_col"
    return name


class _Names:
    """Input names for the spec: ``input_name``'s, and '_col' after a name another column took."""

    def __init__(self, draft: _Draft) -> None:
        self.draft = draft
        self.taken: set[str] = set()

    def add(self, column: str) -> str:
        name = input_name(column)
        while name in _NOT_NAMES or name in self.taken:
            name += "_col"
        self.taken.add(name)
        if name != column and column not in ("target", "weight", "group"):  # not the defaults of arrays
            self.draft.header.append(f"input '{name}' is the column '{column}' (renamed: not a valid name)")
        return name


def parse_metric(metric: str | None) -> tuple[str | None, float | None]:
    """``'pinball@0.9'`` -> ``('pinball', 0.9)``, ``'f2'`` -> ``('fbeta', 2.0)``; an unknown metric is
    a DataError with a did-you-mean."""
    if metric is None:
        return None, None
    text = metric.strip().lower()
    base, _, argument = text.partition("@")
    base = METRIC_ALIASES.get(base, base)
    if base == "pinball":
        try:
            q = float(argument) if argument else 0.5
        except ValueError:
            q = -1.0
        if not 0 < q < 1:
            raise DataError(f"metric {metric!r}: the quantile after '@' must lie in (0, 1), e.g. pinball@0.9")
        return "pinball", q
    fbeta = re.fullmatch(r"f(\d+(?:\.\d+)?)", base)
    if fbeta and base != "f1":
        return "fbeta", float(fbeta.group(1))
    known = (*CLASSIFICATION_METRICS, *REGRESSION_METRICS, *SEGMENTATION_METRICS)
    if base not in known or argument:
        import difflib

        close = difflib.get_close_matches(base, [*known, "pinball"], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown metric {metric!r}{hint} (known: {', '.join(known)}, fBETA, pinball@Q)")
    return base, 1.0 if base == "f1" else None


def _check_metric(metric: str | None, task: str) -> None:
    if metric is None:
        return
    fits = {
        "regression": (*REGRESSION_METRICS, "pinball"),
        "segmentation": (*SEGMENTATION_METRICS, "accuracy"),
    }.get(task, (*CLASSIFICATION_METRICS, "fbeta"))
    if metric not in fits:
        raise DataError(f"metric {metric!r} does not fit a {task} task (use one of: {', '.join(fits)})")


# -- rule 1: the task ---------------------------------------------------------------------------------


def infer_task(values: Any, task: str | None = None, name: str = "",
               columns: Any = None) -> tuple[str, str]:
    """The task and the reason, AutoGluon's rule (docs/choosing.md); ``task`` overrides it after a
    check that the data can serve it. ``columns``: the names of a 2-D target's columns, for the
    message about one that is not 0/1 (``lossdsl compare`` infers multi-label here too)."""
    import numpy as np

    label = f"target '{name}'" if name else "the target"
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r} (one of: {', '.join(TASKS)})")
    if values.ndim >= 3:
        if task not in (None, "segmentation"):
            raise DataError(f"{label} has shape {tuple(values.shape)}: masks [N, H, W] are a segmentation task")
        masks = _numeric(values, name, "segmentation")
        if not _integer_valued(masks):
            raise DataError(f"{label}: segmentation masks must hold integer class labels")
        if masks.size and (masks == masks.reshape(-1)[0]).all():
            raise DataError(f"{label}: every pixel of the masks is {_show(masks.reshape(-1)[0])}: "
                            "there is nothing to learn")
        return "segmentation", f"masks of shape {tuple(values.shape)} (N, spatial...) hold integer labels"
    if values.ndim == 2 and values.shape[1] > 1:
        if task not in (None, "multilabel"):
            raise DataError(f"{label} has {values.shape[1]} columns: several 0/1 columns are a multilabel task")
        numbers = _numeric(values, name, "multilabel")
        binary = np.isin(numbers, (0, 1))
        if not binary.all():
            bad = int(np.flatnonzero(~binary.all(axis=0))[0])
            which = (f"target column '{columns[bad]}'" if columns is not None and len(columns) == values.shape[1]
                     else f"column {bad} of {label}")
            example = numbers[:, bad][~binary[:, bad]][0]
            raise DataError(f"{label} has {values.shape[1]} columns but {which} holds {_show(example)}, not 0/1: "
                            "several target columns are read as multi-label")
        return "multilabel", f"{values.shape[1]} target columns, every value 0 or 1"
    if values.ndim == 2:
        values = values[:, 0]
    numeric = np.issubdtype(values.dtype, np.number) or values.dtype == bool
    if numeric:
        finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    else:
        finite = values
    if finite.size == 0:
        raise DataError(f"{label} holds no finite value")
    distinct = np.unique(finite)
    count = distinct.size
    if count == 1:
        raise DataError(f"{label} has one value only ({_show(distinct[0])}): there is nothing to learn")
    rows = values.shape[0]
    share = count / rows
    limit = MULTICLASS_SHARE_LARGE if rows > LARGE_DATA else MULTICLASS_SHARE_SMALL
    few = count <= MULTICLASS_UPPER_LIMIT and share <= limit
    if task == "regression":
        if not numeric:
            raise DataError(f"{label} is not numeric (e.g. {str(values[0])!r}): a regression target must be numbers")
        return "regression", f"given (--task regression); {count:,} distinct values"
    if task in ("multilabel", "segmentation"):
        raise DataError(f"{label} is one column: {task} needs "
                        + ("several 0/1 columns" if task == "multilabel" else "masks [N, H, W]"))
    if not numeric and count > 2 and not few:
        raise DataError(f"{label} is not numeric (e.g. {str(values[0])!r}) and has {count:,} distinct values "
                        f"({share:.0%} of rows): too many to be classes")
    if task == "binary":
        if count != 2:
            raise DataError(f"{label} has {count:,} distinct values: binary needs exactly 2")
        return "binary", "given (--task binary); 2 distinct values"
    if task == "multiclass":
        if numeric and not _integer_valued(finite):
            raise DataError(f"{label} holds non-integer values (e.g. {_show(finite[~_integral(finite)][0])}): "
                            "classes must be integers or text")
        return "multiclass", f"given (--task multiclass); {count:,} distinct values"
    if count == 2:
        return "binary", f"2 distinct values ({_show(distinct[0])}, {_show(distinct[1])})"
    if not numeric:
        return "multiclass", f"text labels with {count:,} distinct values"
    if _integer_valued(finite) and few:
        return "multiclass", (f"integer values with {count:,} distinct values, {share:.2%} of {rows:,} rows "
                              f"(<= {MULTICLASS_UPPER_LIMIT} and <= {limit:.0%}: AutoGluon's rule)")
    if _integer_valued(finite):
        return "regression", (f"integer values but {count:,} distinct ({share:.1%} of {rows:,} rows; "
                              f"classes need <= {MULTICLASS_UPPER_LIMIT} and <= {limit:.0%})")
    return "regression", f"real values, {count:,} distinct"


def _numeric(values: Any, name: str, task: str):  # noqa: ANN202
    import numpy as np

    if values.dtype == bool:
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.number):
        flat = values.reshape(-1)
        label = f"target '{name}'" if name else "the target"
        raise DataError(f"{label} is not numeric (e.g. {str(flat[0])!r}): a {task} target must be numbers")
    return values


def _integral(values: Any):  # noqa: ANN202
    import numpy as np

    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return np.ones(values.shape, dtype=bool)
    return np.isfinite(values) & (values == np.round(values))


def _integer_valued(values: Any) -> bool:
    return bool(_integral(values).all())


def _are_codes(values: Any) -> bool:
    """Sorted distinct values that are already the codes 0..K-1 (as integers, floats or bools)."""
    import numpy as np

    numeric = np.issubdtype(values.dtype, np.number) or values.dtype == bool
    return bool(numeric and (values.astype(np.float64) == np.arange(values.size)).all())


def _show(value: Any) -> str:
    if isinstance(value, str) or getattr(value, "dtype", None) is not None and value.dtype.kind in "US":
        return repr(str(value))
    return _num(float(value))


def _num(value: float, digits: int = 4) -> str:
    """A number as spec text: ``digits`` significant digits, no trailing noise."""
    if value == 0:
        return "0"
    if math.isfinite(value) and value == round(value) and abs(value) < 1e15:
        return str(int(round(value)))
    return f"{value:.{digits}g}"


# -- rules 2, 4 and 7: classification -----------------------------------------------------------------


def _encode_classes(values: Any, task: str, label: str):  # noqa: ANN202
    """Class codes 0..C-1 in sorted order of the values (multilabel: the 0/1 matrix as it is)."""
    import numpy as np

    if task == "multilabel":
        matrix = values.astype(np.int64)
        return matrix, None, matrix.sum(axis=0)
    if values.ndim == 2:
        values = values[:, 0]
    if np.issubdtype(values.dtype, np.floating):
        missing = ~np.isfinite(values)
        if missing.any():
            raise DataError(f"{label} holds {int(missing.sum()):,} NaN or infinite value(s); "
                            "drop or fill those rows first")
    classes, codes, counts = np.unique(values, return_inverse=True, return_counts=True)
    return codes.reshape(-1), classes, counts


def _class_balanced(counts: Any, beta: float = CLASS_BALANCED_BETA) -> list[float]:
    """Cui et al. (2019): weight (1 - beta) / (1 - beta^n_c), scaled to average 1 over the classes."""
    import numpy as np

    effective = (1.0 - np.power(beta, counts.astype(np.float64))) / (1.0 - beta)
    weights = 1.0 / np.maximum(effective, 1e-12)
    return list(weights * (len(counts) / weights.sum()))


def _classification(draft: _Draft, stats: dict[str, Any], task: str, codes: Any, classes: Any, counts: Any,
                    ident: str, data_args: list[str], metric: str | None, metric_arg: float | None,
                    weight: Any, features: Any) -> None:
    import numpy as np

    rows = codes.shape[0]
    comments: list[str] = []
    if task == "multilabel":
        labels = codes.shape[1]
        positives = counts.astype(np.float64) if weight is None else (codes * weight[:, None]).sum(axis=0)
        total = rows if weight is None else weight.sum()
        negatives = total - positives
        ratios = np.where(positives > 0, negatives / np.maximum(positives, 1e-12), np.inf)
        stats["labels"] = {"count": labels, "positives": positives.tolist(),
                           "neg_pos_ratio": [float(r) if np.isfinite(r) else None for r in ratios]}
        draft.inputs += [("pred", f"logits[N, {labels}]"), (ident, f"multihot[N, {labels}]")]
        for j in np.flatnonzero(positives == 0):
            draft.warnings.append(f"label {j} is never positive: nothing to learn for it (pos_weight 1)")
        finite_ratios = ratios[np.isfinite(ratios)]
        worst = float(finite_ratios.max()) if finite_ratios.size else 1.0
        imbalance = worst
        args = list(data_args)
        if worst >= IMBALANCE_WEIGHT:
            pos_weight = [float(r) if np.isfinite(r) else 1.0 for r in ratios]
            args.insert(0, "pos_weight=[" + ", ".join(_num(w) for w in pos_weight) + "]")
            comments.append(draft.reason(
                "imbalance", "bce(pos_weight=n_neg/n_pos per label)",
                f"largest negatives/positives ratio {worst:.1f} >= {IMBALANCE_WEIGHT:g}"))
        else:
            comments.append(draft.reason("imbalance", "bce()",
                                         f"largest negatives/positives ratio {worst:.1f} < {IMBALANCE_WEIGHT:g}"))
        pairs = _co_occurring(codes, counts)
        stats["co_occurring"] = [{"labels": [a, b], "jaccard": j} for a, b, j in pairs]
        for a, b, jaccard in pairs[:10]:
            draft.header.append(draft.reason(
                "co-occurrence", "reported",
                f"labels {a} and {b} co-occur strongly (Jaccard {jaccard:.2f} >= {CO_OCCURRENCE_JACCARD:g}); "
                "consider one label for both"))
        noise_classes = 2
        term = "bce"
    else:
        weighted = counts.astype(np.float64) if weight is None else np.bincount(codes, weights=weight,
                                                                               minlength=len(classes))
        majority, minority = float(weighted.max()), float(weighted.min())
        imbalance = majority / minority if minority > 0 else math.inf
        smallest = int(counts.min())
        stats["classes"] = {"values": [_plain_value(c) for c in classes], "counts": counts.tolist(),
                            "imbalance_ratio": imbalance, "smallest_count": smallest}
        if weight is not None:
            stats["classes"]["weighted_counts"] = weighted.tolist()
        classes_count = len(classes)
        if task == "binary":
            draft.inputs += [("pred", "logits[N]"), (ident, "binary[N]")]
        else:
            draft.inputs += [("pred", f"logits[N, {classes_count}]"), (ident, "labels[N]")]
        if not _are_codes(classes):
            shown = ", ".join(f"{i} = {_show(c)}" for i, c in enumerate(classes[:12]))
            draft.header.append(f"feed {ident} as class codes in sorted order: {shown}"
                                + (", ..." if classes_count > 12 else ""))
        if smallest < 10:
            draft.warnings.append(f"the smallest class has {smallest} row{'s' * (smallest != 1)}: "
                                  "too few to learn it reliably; gather more")
        what = (f"ratio {imbalance:.1f} (largest class {_num(majority)}, smallest {_num(minority)}"
                + (" by weight" if weight is not None else "") + f"), smallest count {smallest}")
        args = list(data_args)
        term = "ce"
        if imbalance >= IMBALANCE_EXTREME:
            alpha = _class_balanced(weighted)
            if task == "binary":
                term, args = "focal", ["gamma=2", f"alpha={_num(alpha[1] / (alpha[0] + alpha[1]))}", *args]
            else:
                term, args = "focal", ["gamma=2", "alpha=[" + ", ".join(_num(w) for w in alpha) + "]", *args]
            comments.append(draft.reason(
                "imbalance", "focal(gamma=2, alpha=class-balanced)",
                f"{what}: ratio >= {IMBALANCE_EXTREME:g} (Datumaro's warning level)"))
        elif imbalance >= IMBALANCE_STRONG or smallest < TINY_CLASS:
            weights = _class_balanced(weighted)
            args.insert(0, "weight=[" + ", ".join(_num(w) for w in weights) + "]")
            cause = (f"ratio >= {IMBALANCE_STRONG:g}" if imbalance >= IMBALANCE_STRONG
                     else f"smallest count < {TINY_CLASS}")
            comments.append(draft.reason(
                "imbalance", f"ce(weight=class-balanced, beta={CLASS_BALANCED_BETA:g})", f"{what}: {cause}"))
        elif imbalance >= IMBALANCE_WEIGHT:
            args.insert(0, "weight=balanced")
            comments.append(draft.reason("imbalance", "ce(weight=balanced)",
                                         f"{what}: ratio >= {IMBALANCE_WEIGHT:g}"))
        else:
            comments.append(draft.reason("imbalance", "ce()", f"{what}: ratio < {IMBALANCE_WEIGHT:g}"))
        noise_classes = classes_count

    if features is not None:
        smoothing = _label_noise(draft, stats, codes, features, rows, noise_classes)
        if smoothing is not None and term != "focal":
            args.insert(len(args) - len(data_args), f"label_smoothing={_num(smoothing, 2)}")
        elif smoothing is not None:
            draft.warnings.append("focal takes no label smoothing: the conflicting labels stay as they are")
        if smoothing is not None:
            comments.append(draft.reasons[-1].why + f" -> label_smoothing={_num(smoothing, 2)}")
    draft.data(comments, term, args)

    if metric in ("f1", "fbeta"):
        beta = metric_arg or 1.0
        name = "f1" if metric == "f1" else f"f{_num(beta)}"
        if imbalance >= IMBALANCE_STRONG:
            surrogate_args = ([] if beta == 1 else [f"beta={_num(beta)}"]) + data_args
            if task == "multiclass":
                draft.warnings.append(f"metric {name} under imbalance ratio {imbalance:.1f}: soft_f1 takes binary or "
                                      "multi-label logits only, so no surrogate is added for multiclass")
            else:
                draft.lets.append(([draft.reason(
                    "metric", "soft_f1", f"metric {name}, which ce does not optimise, under imbalance ratio "
                    f"{imbalance:.1f} >= {IMBALANCE_STRONG:g}: add its surrogate"
                    + (" (F of label code 1)" if task == "binary" else " (macro over labels)"))],
                    "surrogate", f"soft_f1({', '.join(surrogate_args)})"))
        else:
            draft.reasons.append(Reason("metric", "none", f"metric {name} with imbalance ratio {imbalance:.1f} < "
                                        f"{IMBALANCE_STRONG:g}: ce alone (compare can test soft_f1 on the data)"))


def _co_occurring(matrix: Any, positives: Any) -> list[tuple[int, int, float]]:
    import numpy as np

    if matrix.shape[1] > 2000:
        return []
    as_float = matrix.astype(np.float64)
    both = as_float.T @ as_float  # float64 counts are exact up to 2^53 rows
    union = positives[:, None] + positives[None, :] - both
    jaccard = np.where(union > 0, both / np.maximum(union, 1), 0.0)
    upper = np.triu(jaccard >= CO_OCCURRENCE_JACCARD, k=1)
    pairs = [(int(a), int(b), float(jaccard[a, b])) for a, b in zip(*np.nonzero(upper))]
    return sorted(pairs, key=lambda pair: -pair[2])


def _row_keys(columns: list[Any]):  # noqa: ANN202
    """One integer per row, equal exactly where every column's code is: mixed-radix codes,
    renumbered (a 1-D np.unique, fast) whenever the product of the radices would pass 2^62."""
    import numpy as np

    keys = np.zeros(columns[0].shape[0], dtype=np.int64)
    levels = 1
    for codes in columns:
        radix = int(codes.max(initial=0)) + 1
        if levels * radix >= 2**62:
            keys = np.unique(keys, return_inverse=True)[1].reshape(-1)
            levels = int(keys.max(initial=0)) + 1
        keys = keys * radix + codes
        levels *= radix
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def _feature_codes(features: Any, rows: int):  # noqa: ANN202
    """Each row's features as one integer key, equal exactly for identical rows. A column that is
    distinct in every row (an id) is left out: it would make every row unique."""
    import numpy as np

    if isinstance(features, Mapping):
        columns = [(str(name), _as_numpy(values, f"feature '{name}'")) for name, values in features.items()]
    else:
        array = _as_numpy(features, "the features")
        array = array.reshape(array.shape[0], -1) if array.ndim != 1 else array[:, None]
        columns = [(str(j), array[:, j]) for j in range(array.shape[1])]
    kept = []
    skipped = []
    for name, column in columns:
        if column.shape[0] != rows:
            raise DataError(f"feature '{name}' has {column.shape[0]:,} rows, the target {rows:,}")
        if column.ndim != 1:
            raise DataError(f"feature '{name}' must be one value per row, got shape {tuple(column.shape)}")
        codes = np.unique(column, return_inverse=True)[1].reshape(-1).astype(np.int64)
        if rows > 1 and codes.max(initial=0) + 1 == rows:
            skipped.append(name)
            continue
        kept.append(codes)
    if not kept:
        return None, skipped
    return _row_keys(kept), skipped


def _label_noise(draft: _Draft, stats: dict[str, Any], labels: Any, features: Any, rows: int,
                 classes: int) -> float | None:
    """Rows whose features repeat with another label: the share off their group's majority label
    estimates the noise rate rho; label smoothing e = rho * C / (C - 1) puts rho on the other classes."""
    import numpy as np

    keys, skipped = _feature_codes(features, rows)
    if keys is None:
        stats["duplicates"] = {"skipped_id_columns": skipped, "conflict_rate": 0.0}
        return None
    label_keys = labels if labels.ndim == 1 else _row_keys([labels[:, j] for j in range(labels.shape[1])])
    pair, pair_counts = np.unique(keys.astype(np.int64) * (int(label_keys.max()) + 1) + label_keys,
                                  return_counts=True)
    pair_group = pair // (int(label_keys.max()) + 1)
    group_size = np.bincount(keys)
    majority = np.zeros_like(group_size)
    np.maximum.at(majority, pair_group, pair_counts)
    labels_per_group = np.bincount(pair_group, minlength=group_size.size)
    off_majority = int((group_size - majority).sum())
    conflicted = int(group_size[labels_per_group > 1].sum())
    duplicated = int(group_size[group_size > 1].sum())
    rate = off_majority / rows
    stats["duplicates"] = {"duplicated_rows": duplicated, "conflicting_rows": conflicted,
                           "off_majority_rows": off_majority, "conflict_rate": rate,
                           "skipped_id_columns": skipped}
    what = (f"{conflicted:,} rows share their features with a differently labelled row; "
            f"{off_majority:,} ({rate:.2%}) disagree with their group's majority")
    if duplicated > DUPLICATED_SHARE * rows:
        draft.reasons.append(Reason(
            "label noise", "none", f"{duplicated / rows:.0%} of rows repeat another's features (> "
            f"{DUPLICATED_SHARE:.0%}): the features are coarse, so differing labels there are the task's "
            "uncertainty, which ce's probabilities model, not label noise"))
        return None
    if rate < CONFLICT_RATE:
        draft.reasons.append(Reason("label noise", "none", f"{what}: rate < {CONFLICT_RATE:.0%}"))
        return None
    smoothing = min(MAX_LABEL_SMOOTHING, rate * classes / (classes - 1))
    draft.reasons.append(Reason("label noise", f"label_smoothing={_num(smoothing, 2)}",
                                f"{what}: rate >= {CONFLICT_RATE:.0%}; smoothing = rate * C / (C - 1)"))
    return smoothing


# -- rule 3: regression --------------------------------------------------------------------------------


def regression_stats(values: Any) -> dict[str, float]:
    """Median, robust scale (1.4826 MAD, else IQR / 1.349, else the standard deviation), the share
    beyond ROBUST_Z_OUTLIER robust z, skewness, excess kurtosis, and the mass at the extremes."""
    import numpy as np

    y = values.astype(np.float64)
    median = float(np.median(y))
    deviation = np.abs(y - median)
    scale = 1.4826 * float(np.median(deviation))
    scale_from = "1.4826 * MAD"
    if scale == 0:
        q1, q3 = np.percentile(y, [25, 75])
        scale, scale_from = float(q3 - q1) / 1.349, "IQR / 1.349 (MAD is 0)"
    if scale == 0:
        scale, scale_from = float(y.std()), "standard deviation (MAD and IQR are 0)"
    mean, std = float(y.mean()), float(y.std())
    standard = (y - mean) / std
    low, high = float(y.min()), float(y.max())
    return {
        "rows": int(y.size),
        "median": median, "robust_scale": scale, "robust_scale_from": scale_from,
        "outlier_share": float((deviation > ROBUST_Z_OUTLIER * scale).mean()),
        "max_robust_z": float(deviation.max() / scale),
        "mean": mean, "std": std,
        "skewness": float((standard ** 3).mean()), "excess_kurtosis": float((standard ** 4).mean() - 3.0),
        "min": low, "max": high,
        "zero_share": float((y == 0).mean()),
        "share_at_min": float((y == low).mean()), "share_at_max": float((y == high).mean()),
        "rows_per_value": float(y.size / np.unique(y).size),
        "integer_valued": _integer_valued(y),
    }


def _piles_up(measured: dict[str, Any], share: str) -> bool:
    """Many rows at one extreme: at least MASS_AT_BOUND of them, and PILE_UP times the rows per
    distinct value (a continuous target has one row at its maximum; a capped one a heap)."""
    rows_there = measured[share] * measured["rows"]
    return measured[share] >= MASS_AT_BOUND and rows_there >= PILE_UP * measured["rows_per_value"]


def _regression(draft: _Draft, stats: dict[str, Any], values: Any, ident: str, data_args: list[str],
                metric: str | None, metric_arg: float | None) -> None:
    measured = regression_stats(values)
    largest = max(abs(measured["min"]), abs(measured["max"]))
    if largest > FLOAT32_SAFE or measured["robust_scale"] < 1 / FLOAT32_SAFE:
        # Squared errors, deltas and bounds of such numbers leave float32 (3.4e38) or vanish in it.
        raise DataError(f"{draft.target_label}: values up to {largest:.3g} with a scale of "
                        f"{measured['robust_scale']:.3g} are outside what float32 training handles; "
                        "rescale the target first")
    stats["regression"] = measured
    draft.inputs += [("pred", "real[N]"), (ident, "real[N]")]
    scale = measured["robust_scale"]
    heavy = (measured["outlier_share"] >= OUTLIER_SHARE or measured["excess_kurtosis"] >= EXCESS_KURTOSIS_HEAVY)
    tails = (f"{measured['outlier_share']:.2%} of rows beyond robust z {ROBUST_Z_OUTLIER:g} (median "
             f"{_num(measured['median'])}, scale {_num(scale)} = {measured['robust_scale_from']}), "
             f"excess kurtosis {measured['excess_kurtosis']:.1f}")
    never_negative = measured["min"] >= 0
    count_like = never_negative and (measured["zero_share"] >= ZERO_SHARE
                                     or measured["skewness"] >= LONG_RIGHT_TAIL)
    shape = (f"{measured['zero_share']:.0%} zeros, skewness {measured['skewness']:.1f}, "
             f"minimum {_num(measured['min'])}")
    comments: list[str] = []
    args = list(data_args)
    log_rate = False
    if metric == "pinball":
        term = "quantile"
        args.insert(0, f"q={_num(metric_arg)}")
        comments.append(draft.reason("metric", f"quantile(q={_num(metric_arg)})",
                                     f"metric pinball@{_num(metric_arg)}: the pinball loss is the quantile term"))
    elif metric == "mae":
        term = "mae"
        comments.append(draft.reason("metric", "mae", "metric mae: optimise it directly (the conditional median)"))
    elif metric in ("rmse", "mse"):
        term = "mse"
        comments.append(draft.reason("metric", "mse", f"metric {metric}: optimise it directly (the conditional mean)"
                                     + (f"; note {tails}" if heavy else "")))
    elif count_like:
        term, log_rate = "poisson_nll", True
        comments.append(draft.reason(
            "count / long tail", "poisson_nll (pred is a log-rate)",
            f"{shape}: zeros >= {ZERO_SHARE:.0%} or skewness >= {LONG_RIGHT_TAIL:g} on a never-negative target; "
            "predict log-rates (exp(pred) is the mean), or fit log1p(target) with mse"))
    elif heavy:
        term = "huber"
        delta = HUBER_K * scale
        args.insert(0, f"delta={_num(delta)}")
        comments.append(draft.reason("heavy tails", f"huber(delta={_num(delta)})",
                                     f"{tails}; delta = {HUBER_K} * robust scale"))
    else:
        term = "mse"
        comments.append(draft.reason("heavy tails", "mse", f"{tails}: no heavy tails"))
    draft.data(comments, term, args)

    if log_rate:
        draft.reasons.append(Reason("bounds", "none", "poisson_nll's rate exp(pred) is positive already"))
        return
    lower = upper = None
    why = []
    if never_negative:
        lower = 0.0
        why.append(f"never negative (minimum {_num(measured['min'])})")
    elif _piles_up(measured, "share_at_min"):
        lower = measured["min"]
        why.append(f"a floor: {measured['share_at_min']:.1%} of rows at the minimum {_num(lower)}")
    if never_negative and measured["max"] <= 1:
        upper = 1.0
        why.append(f"within [0, 1] (maximum {_num(measured['max'])})")
    elif _piles_up(measured, "share_at_max"):
        upper = measured["max"]
        why.append(f"a cap: {measured['share_at_max']:.1%} of rows at the maximum {_num(upper)}")
    if lower is None and upper is None:
        draft.reasons.append(Reason("bounds", "none", f"values from {_num(measured['min'])} to "
                                    f"{_num(measured['max'])}, no floor or cap"))
        return
    if lower is not None and upper is not None:
        condition = f"{_num(lower)} <= pred <= {_num(upper)}"
    elif lower is not None:
        condition = f"pred >= {_num(lower)}"
    else:
        condition = f"pred <= {_num(upper)}"
    draft.lets.append(([draft.reason("bounds", f"soft_bound({condition})", "; ".join(why))], "bound",
                       f"soft_bound({condition})"))


# -- rule 5: fairness ----------------------------------------------------------------------------------


def _fairness(draft: _Draft, stats: dict[str, Any], ident: str, column: str, values: Any, task: str,
              metric: str | None, target: str, weight: str | None) -> None:
    import numpy as np

    levels, codes, sizes = np.unique(values, return_inverse=True, return_counts=True)
    count = len(levels)
    stats.setdefault("groups", {})[column] = {"values": [_plain_value(v) for v in levels],
                                              "sizes": sizes.tolist()}
    draft.inputs.append((ident, f"group[N] of {count}"))
    if count < 2:
        draft.warnings.append(f"group '{column}' has one value only: no fairness bound for it")
        draft.inputs.pop()
        return
    if not _are_codes(levels):
        shown = ", ".join(f"{i} = {_show(v)}" for i, v in enumerate(levels[:12]))
        draft.header.append(f"feed {ident} as group codes in sorted order: {shown}" + (", ..." if count > 12 else ""))
    for level, size in zip(levels, sizes):
        if size < SMALL_GROUP:
            draft.warnings.append(
                f"group {column}={_show(level)} has {int(size)} rows (< {SMALL_GROUP}): its rate's standard error "
                f"is up to 0.5/sqrt({int(size)}) = {0.5 / math.sqrt(size):.2f}, so its gap is noise at that size")
    size_text = ", ".join(f"{_show(v)}: {int(n):,}" for v, n in zip(levels[:12], sizes[:12]))
    extra = [f"sample_weight={weight}"] if weight else []
    target_arg = [] if target == "target" else [f"target={target}"]
    if task == "binary":
        stat = FAIRNESS_STAT_FOR_METRIC.get(metric, "dp_gap")
        reads_target = not stat.startswith("dp")
        args = [stat, f"group={ident}", *(target_arg if reads_target else []), *extra]
        bound = FAIRNESS_BOUND_RATE
        why = (f"group '{column}' ({count} groups, sizes {size_text}); metric {metric or 'none'} -> {stat}"
               f"; bound {bound:g} to tune")
    else:
        stat = f"group_loss_ratio({draft.per_group})"
        args = [stat, f"group={ident}", *extra]
        bound = FAIRNESS_BOUND_LOSS_RATIO
        why = (f"group '{column}' ({count} groups, sizes {size_text}); {task}: no group's mean loss far from "
               f"another's (1 - smallest / largest <= {bound:g}, to tune)")
    statement = f"subject to fairness({', '.join(args)}) <= {_num(bound)} as fair_{ident}"
    draft.constraints.append(([draft.reason("fairness", f"fairness({stat.split('(')[0]}) <= {_num(bound)}", why)],
                              statement))


# -- rule 6: segmentation ------------------------------------------------------------------------------


def _segmentation(draft: _Draft, stats: dict[str, Any], masks: Any, ident: str, data_args: list[str]) -> None:
    import numpy as np

    values = masks.astype(np.int64, copy=False)
    if values.min() < 0:
        raise DataError("segmentation masks hold negative labels: use class codes 0..C-1")
    counts = np.bincount(values.reshape(-1))
    classes = max(2, counts.size)
    foreground = 1.0 - counts[0] / values.size
    stats["segmentation"] = {"classes": classes, "pixel_counts": counts.tolist(), "foreground_fraction": foreground}
    spatial = values.ndim - 1
    dims = ["H", "W"] if spatial == 2 else ["D", "H", "W"] if spatial == 3 else [f"S{i}" for i in range(spatial)]
    draft.inputs += [("pred", f"logits[N, {classes}, {', '.join(dims)}]"), (ident, f"labels[N, {', '.join(dims)}]")]
    dice_args = list(data_args)
    if foreground < SMALL_FOREGROUND:
        dice_args.insert(0, "include_background=false")
        why = (f"foreground {foreground:.2%} of pixels < {SMALL_FOREGROUND:.0%}: dice without the background "
               "channel, which would dominate its mean")
    else:
        why = f"foreground {foreground:.2%} of pixels >= {SMALL_FOREGROUND:.0%}: dice over all channels"
    draft.lets.append(([draft.reason("segmentation", "dice() + ce()",
                                     f"masks: nnU-Net's and Auto3DSeg's dice + ce; {why}")],
                       "overlap", f"dice({', '.join(dice_args)})"))
    draft.lets.append(([], "data", f"ce({', '.join(data_args)})"))


# -- JSON ----------------------------------------------------------------------------------------------


def _plain_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return value


def _plain(value: Any) -> Any:
    """numpy scalars and lists as plain JSON values; inf as None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    value = _plain_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
