"""``lossdsl compare``: train candidate specs on the user's data and score them by the metric that matters.

``compare(specs, features, target, ...)`` trains one small model per spec and fold (the same
initial weights and batches for every spec within a fold), predicts the held-out rows, and returns
a ``Comparison``: each metric's mean and spread over the folds, and the winner by the named
metric. The defaults, documented in docs/choosing.md ("Comparing"):

- the model: ``linear`` (one ``nn.Linear``) or ``mlp`` (one hidden layer of 64 ReLU units), or
  a factory ``f(n_features, n_outputs) -> nn.Module`` of the user's; the features standardised
  on each fold's training rows (missing values become the training mean); for regression the
  built-in models predict ``centre + scale * f(x)`` with the training targets' median and
  standard deviation, so that the loss sees the target's own units while the network works at
  unit scale;
- Adam (``lr=3e-3``), batches of 256, and as many epochs as make 1,000 optimiser steps (at
  least 5) unless ``epochs`` is given;
- 3-fold cross-validation, stratified by class for binary and multiclass targets (not for
  multi-label ones: each row holds several labels), or one ``holdout`` fraction;
- one torch thread while training (restored after): small models lose more to threads than they gain;
- deterministic for a ``seed``: the folds come from ``numpy.random.default_rng(seed)``, the
  initial weights from ``torch.manual_seed(seed + fold)``, the batches from a generator seeded
  the same way.

A multi-label target (several 0/1 columns, or an ``[N, C]`` 0/1 array; inferred by advise's
``infer_task``) gives C logits per row, ``target`` is the ``[N, C]`` float 0/1 matrix, and the
metrics are scikit-learn's at ``sigmoid(logit) > 0.5``.

Spec inputs are bound by name: ``pred`` is the model's output, ``target`` the target, and every
other input the spec reads (a ``group=sex``, a ``sample_weight=w``) the data column of that name.
numpy, and sklearn-free metrics, are imported inside the functions: ``import lossdsl`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .advise import _target_array, infer_task, input_name
from .errors import LossSpecError

import torch  # loaded with lossdsl already; numpy (and fairlearn, matplotlib, tqdm) inside the functions

if TYPE_CHECKING:  # pragma: no cover
    import numpy

try:  # the shared reader (issue 14's advise slice); until it is merged, the minimal one below
    from .datafiles import DataError, read_table
except ImportError:  # pragma: no cover - replaced when datafiles.py is on the branch

    class DataError(ValueError):  # type: ignore[no-redef]
        """A data file (or array) that cannot serve: the message is one line, meant for the user."""

    def read_table(path: str | Path, columns: Sequence[str] | None = None) -> dict[str, numpy.ndarray]:  # type: ignore[misc]
        """A CSV file's columns by name: int64 where every cell is a whole number, float64 where
        every cell is a number or empty, text otherwise."""
        import csv

        import numpy as np

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: only .csv files can be read until lossdsl.datafiles is installed")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot be read: {exc}") from None
        rows = [row for row in csv.reader(text.splitlines()) if row]
        if len(rows) < 2:
            raise DataError(f"{path}: the file is empty" if not rows else f"{path}: a header and no rows")
        header = [name.strip() for name in rows[0]]
        if any(len(row) != len(header) for row in rows[1:]):
            raise DataError(f"{path}: rows of different lengths")
        table = {}
        for index, name in enumerate(header):
            cells = [row[index].strip() for row in rows[1:]]
            for dtype in (np.int64, np.float64):
                try:
                    table[name] = np.array([c if c else "nan" for c in cells], dtype=dtype)
                    break
                except (ValueError, OverflowError):
                    continue
            else:
                table[name] = np.array(cells, dtype=str)
        if columns is not None:
            missing = [name for name in columns if name not in table]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(table)})")
            table = {name: table[name] for name in columns}
        return table


TASKS = ("binary", "multiclass", "multilabel", "regression")
#: Integer targets with at most this many distinct values are classes (AutoGluon's rule, simplified).
MAX_CLASSES = 20
DEFAULT_METRIC = {"binary": "accuracy", "multiclass": "accuracy", "multilabel": "f1", "regression": "rmse"}
#: The multi-label metrics (scikit-learn's, at sigmoid(logit) > 0.5), besides f1[LABEL] and recall[LABEL].
MULTILABEL_METRICS = ("f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
HIDDEN = 64
BATCH_SIZE = 256
LR = 3e-3
#: Without ``epochs``: as many epochs as make this many optimiser steps, and at least MIN_EPOCHS.
TARGET_STEPS = 1000
MIN_EPOCHS = 5
#: Metrics where lower is better; every other metric is better higher.
_LOWER_IS_BETTER = ("mae", "rmse", "pinball", "dp_gap", "eo_gap", "hamming_loss")

ModelFactory = Callable[[int, int], Any]


@dataclasses.dataclass
class Comparison:
    """The result of ``lossdsl.compare``: every metric of every spec on every fold."""

    specs: list[str]
    task: str
    metric: str
    metrics: list[str]
    #: ``scores[spec][metric]``: one value per fold.
    scores: dict[str, dict[str, list[float]]]
    setup: dict[str, Any]

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def summary(self, spec: str, metric: str | None = None) -> tuple[float, float]:
        """Mean and standard deviation (ddof 1; 0 for one fold) of ``metric`` over the folds."""
        values = self.scores[spec][metric or self.metric]
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, 0.0
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    @property
    def winner(self) -> str:
        """The spec with the best mean of the named metric (the first listed on a tie; a NaN, from a
        model that diverged, is the worst)."""
        sign = 1.0 if self.higher_is_better else -1.0

        def rank(spec: str) -> tuple[float, int]:
            mean = self.summary(spec)[0]
            return (-math.inf if math.isnan(mean) else sign * mean), -self.specs.index(spec)

        return max(self.specs, key=rank)

    def table(self, markdown: bool = False) -> str:
        """One row per metric, the named one first (marked ``*``, bold in markdown), one column per spec,
        ``mean ± std`` over the folds, then the winner."""
        labels = [_short(spec) for spec in self.specs]
        mark = (lambda m: f"**{m}**") if markdown else (lambda m: f"* {m}")
        rows = [[mark(m) if m == self.metric else m] + [_cell(*self.summary(s, m)) for s in self.specs]
                for m in self.metrics]
        header = ["metric"] + labels
        direction = "higher" if self.higher_is_better else "lower"
        mean, std = self.summary(self.winner)
        footer = f"winner by {self.metric} ({direction} is better): {self.winner}  {_cell(mean, std)}"
        notes = [f"note: {note}" for note in self.setup.get("notes", [])]
        if markdown:
            lines = ["| " + " | ".join(c.replace("|", "\\|") for c in header) + " |",
                     "| " + " | ".join(["---"] + ["---:"] * len(labels)) + " |"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            return "\n".join([self.describe(), "", *lines, "", footer.replace(self.winner, f"`{self.winner}`"),
                              *(["", *notes] if notes else [])]) + "\n"
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in [header, *rows]]
        legend = [f"  {label} = {spec}" for label, spec in zip(labels, self.specs) if label != spec]
        return "\n".join([self.describe(), *lines, *(["specs:", *legend] if legend else []), footer, *notes]) + "\n"

    def describe(self) -> str:
        setup = self.setup
        split = (f"{setup['folds']}-fold cross-validation"
                 + (", stratified" if self.task in ("binary", "multiclass") else "")
                 if setup["holdout"] is None else f"holdout of {setup['holdout']:g}")
        labels = f", {len(setup['labels'])} labels" if setup.get("labels") else ""
        return (f"{self.task}, {setup['rows']} rows, {setup['features']} features{labels}; {split}; "
                f"model {setup['model']}, "
                f"{setup['epochs']} epochs, seed {setup['seed']}; mean ± std over folds")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "winner": self.winner,
            "setup": self.setup,
            "specs": [
                {"spec": spec, "metrics": {m: {"mean": self.summary(spec, m)[0], "std": self.summary(spec, m)[1],
                                              "folds": self.scores[spec][m]} for m in self.metrics}}
                for spec in self.specs
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, path: str | Path, metrics: Sequence[str] | None = None) -> Path:
        """A bar chart of ``metrics`` (default: the named one), one bar per spec, the fold spread as error bars."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metrics = list(metrics or [self.metric])
        figure, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 1.4 * len(self.specs)) * len(metrics), 3.6),
                                    squeeze=False)
        for axis, metric in zip(axes[0], metrics):
            means, stds = zip(*(self.summary(spec, metric) for spec in self.specs))
            colours = ["tab:orange" if spec == self.winner and metric == self.metric else "tab:blue" for spec in self.specs]
            axis.bar(range(len(self.specs)), means, yerr=stds, capsize=4, color=colours)
            axis.set_xticks(range(len(self.specs)), [_short(spec, 18) for spec in self.specs], rotation=20, ha="right")
            axis.set_ylabel(metric)
            axis.set_title(f"{metric} ({'higher' if higher_is_better(metric) else 'lower'} is better)")
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path


def higher_is_better(metric: str) -> bool:
    return not metric.startswith(_LOWER_IS_BETTER)


def compare(
    specs: Sequence[str | Path],
    features: Any,
    target: Any,
    task: str | None = None,
    model: str | ModelFactory = "linear",
    metric: str | None = None,
    folds: int = 3,
    holdout: float | None = None,
    seed: int = 0,
    groups: Mapping[str, Any] | Sequence[str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> Comparison:
    """Train each spec (text, or a path to a ``.loss`` file) on ``features`` -> ``target`` and score it.

    ``features``: an array ``[N, D]`` (numpy or torch), or a mapping of columns (numeric columns as
    they are, text columns one-hot encoded); then ``target``, ``groups`` and ``inputs`` may name
    its columns, which are then no features. ``target``: one value per row, or a multi-label
    target: an ``[N, C]`` 0/1 array, or a list of several 0/1 columns' names. ``groups``: ``{name: codes}`` (or column names): the
    spec's group inputs, and the fairness gaps reported per group (binary tasks). ``inputs``:
    any other tensor the specs read, by name. Bad data or options raise ``DataError`` (a
    ``ValueError`` with a one-line message); a spec that does not fit the data its
    ``LossSpecError``. ``names``: the specs' labels in the table (default: their text or path).
    """
    import numpy as np

    if not specs:
        raise DataError("no specs to compare")
    extra: dict[str, np.ndarray] = {}
    group_names: list[str] = []
    target_name: str | None = None  # a spec may read the target by its column's name (advise writes so)
    label_names: list[str] | None = None  # multi-label: the target columns, in order
    named_columns = (isinstance(target, (list, tuple)) and bool(target)
                     and all(isinstance(name, str) for name in target))
    if named_columns and len(target) == 1:
        target = target[0]
    if named_columns and not isinstance(features, Mapping):
        raise DataError("target: column names need the features as a mapping of columns")
    if isinstance(features, Mapping):
        columns = {str(k): np.asarray(v) for k, v in features.items()}
        if isinstance(target, str):
            target_name = target
            target = _column(columns, target, "target")
            del columns[target[0]]
            target = target[1]
        elif named_columns:
            label_names = [str(name) for name in target]
            twice = next((name for i, name in enumerate(label_names) if name in label_names[:i]), None)
            if twice is not None:
                raise DataError(f"target column {twice!r} is named twice")
            # stacked by advise's reader of several target columns: numeric, one length
            target = _target_array({name: _column(columns, name, "target")[1] for name in label_names})[1]
            for name in label_names:
                del columns[name]
        if groups is not None and not isinstance(groups, Mapping):
            groups = {name: _column(columns, name, "group")[1] for name in groups}
            for name in groups:
                del columns[name]
        for name in list(inputs or {}):
            if isinstance(inputs[name], str):  # type: ignore[index]
                extra[name] = _column(columns, inputs[name], "input")[1]  # type: ignore[index]
                del columns[inputs[name]]  # type: ignore[index]
        x = encode_features(columns)
    else:
        x = _array(features, "features").astype(np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise DataError(f"features: expected a 2-D array [N, D], got shape {x.shape}")
    y_raw = _array(target, "target")
    if y_raw.ndim == 2 and y_raw.shape[1] == 1:
        y_raw = y_raw[:, 0]
    if y_raw.ndim not in (1, 2):
        raise DataError(f"target: expected one value per row, or [N, C] 0/1 labels (multi-label), "
                        f"got shape {y_raw.shape}")
    if len(y_raw) == 0:
        raise DataError("no rows: the data is empty")
    if len(x) != len(y_raw):
        raise DataError(f"features have {len(x)} rows but the target {len(y_raw)}")
    if y_raw.ndim == 2 or task == "multilabel":
        task, y, classes = prepare_multilabel(y_raw, task, label_names)
    else:
        task, y, classes = prepare_target(y_raw, task)
    if groups is not None:
        if not isinstance(groups, Mapping):
            raise DataError("groups: pass {name: codes} with array features (names only with a mapping of columns)")
        for name, values in groups.items():
            codes = _array(values, f"group {name!r}")
            if codes.shape != (len(y),):
                raise DataError(f"group {name!r}: expected one value per row, got shape {codes.shape}")
            extra[name] = np.unique(codes, return_inverse=True)[1].astype(np.int64)
            group_names.append(name)
    for name, values in (inputs or {}).items():
        if name not in extra:
            values = _array(values, f"input {name!r}")
            if len(values) != len(y):
                raise DataError(f"input {name!r}: {len(values)} rows, the target {len(y)}")
            extra[name] = values
    if target_name is not None and target_name not in extra:
        extra[target_name] = y
    for name in list(extra):  # the names advise gives columns (income-level -> income_level), "target" never twice
        alias = input_name(name)
        if alias not in extra:
            extra[alias] = extra[name]
    for reserved in ("pred", "target"):  # passed as such: a column named so is that argument already
        extra.pop(reserved, None)
    metric = _metric_name(metric, task, classes, group_names)
    notes = []
    if task == "multilabel":
        multilabel_metrics_module()  # scikit-learn, checked before anything trains
        if group_names:
            notes.append("fairness gaps are computed for binary targets only; for multi-label the groups "
                         "feed the specs' group inputs")
    if holdout is None and not 2 <= folds <= len(y):
        raise DataError(f"folds: expected 2 to {len(y)} (the rows), got {folds}")
    if holdout is not None and not 0 < holdout < 1:
        raise DataError(f"holdout: expected a fraction in (0, 1), got {holdout}")
    classification = task in ("binary", "multiclass")
    if classification and holdout is None and np.bincount(y).min() < folds:
        raise DataError(f"the rarest class has {np.bincount(y).min()} rows, fewer than the {folds} folds")
    splits = make_splits(y if classification else None, len(y), folds, holdout, seed)
    factory, model_name = _factory(model)
    losses = [_load(spec) for spec in specs]
    if names is not None and len(names) != len(specs):
        raise DataError(f"names: {len(names)} for {len(specs)} specs")
    labels = _labels(names if names is not None else specs)
    first_train = splits[0][0]
    epochs = epochs or max(MIN_EPOCHS, math.ceil(TARGET_STEPS / math.ceil(len(first_train) / batch_size)))

    outputs = _Progress(len(labels) * len(splits), progress)
    scores: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
    metric_names: list[str] = []
    threads = torch.get_num_threads()
    # Models this small gain nothing from intra-op threads, and lose tenfold to them on a busy machine.
    torch.set_num_threads(1)
    try:
        for fold, (train_rows, test_rows) in enumerate(splits):
            x_train, x_test = standardise(x[train_rows], x[test_rows])
            for label, loss_text in zip(labels, losses):
                outputs.describe(f"{_short(label, 24)} fold {fold + 1}/{len(splits)}")
                predicted = fit_predict(
                    loss_text, factory, task, len(classes), x_train, y[train_rows], x_test,
                    {k: v[train_rows] for k, v in extra.items()}, seed + fold, epochs, batch_size, lr,
                    builtin=model_name in ("linear", "mlp"),
                )
                values = score(task, metric, classes, y[test_rows], predicted,
                               {k: extra[k][test_rows] for k in group_names})
                metric_names = list(values)
                for name, value in values.items():
                    scores[label].setdefault(name, []).append(value)
                outputs.advance()
    finally:
        torch.set_num_threads(threads)
        outputs.close()
    setup = {"rows": len(y), "features": x.shape[1], "folds": len(splits) if holdout is None else 1,
             "holdout": holdout, "model": model_name, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "seed": seed, "classes": [str(c) for c in classes] if classification else None}
    if task == "multilabel":
        setup["labels"] = [str(c) for c in classes]
    if notes:
        setup["notes"] = notes
    return Comparison(labels, task, metric, metric_names, scores, setup)


# ---------------------------------------------------------------------------------------------- data


def _array(values: Any, what: str) -> numpy.ndarray:
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: not an array ({exc})") from None


def _column(columns: Mapping[str, numpy.ndarray], name: str, what: str) -> tuple[str, numpy.ndarray]:
    if name not in columns:
        import difflib

        close = difflib.get_close_matches(name, list(columns), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(list(columns)[:20]) + (", ..." if len(columns) > 20 else "")
        raise DataError(f"no {what} column {name!r}{hint} (columns: {listed})")
    return name, columns[name]


def encode_features(columns: Mapping[str, numpy.ndarray]) -> numpy.ndarray:
    """The columns as one float matrix: numbers as they are (a 2-D numeric array, an ``.npz``'s
    ``x [N, D]``, as its D columns), text one-hot by category (sorted)."""
    import numpy as np

    parts = []
    for name, values in columns.items():
        if values.ndim == 2 and values.dtype.kind in "biuf":
            parts.append(values.astype(np.float64))
            continue
        if values.ndim != 1:
            raise DataError(f"feature column {name!r}: expected one value per row, got shape {values.shape}")
        if values.dtype.kind in "biuf":
            parts.append(values.astype(np.float64)[:, None])
        else:
            categories, codes = np.unique(values.astype(str), return_inverse=True)
            parts.append(np.eye(len(categories))[codes])
    if not parts:
        raise DataError("no feature columns: the data holds only the target and the spec's inputs")
    return np.hstack(parts)


def prepare_target(values: numpy.ndarray, task: str | None) -> tuple[str, numpy.ndarray, numpy.ndarray]:
    """(task, target, classes): class codes 0..K-1 (int64) for classification, float32 values for
    regression. The task, unless given: two values -> binary; whole numbers with at most
    MAX_CLASSES values, or text -> multiclass; other numbers -> regression."""
    import numpy as np

    if task is not None and task not in TASKS:
        raise DataError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    numeric = values.dtype.kind in "biuf"
    if numeric and np.isnan(values.astype(np.float64)).any():
        raise DataError(f"target: {int(np.isnan(values.astype(np.float64)).sum())} missing values (NaN); drop those rows")
    distinct = np.unique(values)
    if len(distinct) < 2:
        raise DataError(f"target: one value ({distinct[0] if len(distinct) else 'none'}) in all {len(values)} rows: "
                        "nothing to learn")
    if task is None:
        whole = not numeric or bool(np.all(np.mod(values.astype(np.float64), 1) == 0))
        if len(distinct) == 2:
            task = "binary"
        elif whole and (not numeric or len(distinct) <= MAX_CLASSES):
            task = "multiclass"
        else:
            task = "regression"
    if task == "regression":
        if not numeric:
            raise DataError(f"target: not numeric (e.g. {str(values[0])!r}), so no regression target")
        return task, values.astype(np.float32), distinct
    if task == "binary" and len(distinct) != 2:
        raise DataError(f"target: task binary needs two values, found {len(distinct)}")
    classes, codes = np.unique(values, return_inverse=True)
    return task, codes.astype(np.int64), classes


def prepare_multilabel(values: numpy.ndarray, task: str | None,
                       names: Sequence[str] | None = None) -> tuple[str, numpy.ndarray, numpy.ndarray]:
    """("multilabel", the [N, C] 0/1 matrix as float32, as bce reads it, the label names: the
    columns' or 0..C-1). Inferred and checked by advise's ``infer_task``, so both commands read
    several target columns alike (a column that is not 0/1, a one-column target with
    ``task="multilabel"``: a DataError)."""
    import numpy as np

    if task is not None and task not in TASKS:
        raise DataError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    task, _ = infer_task(values, task, columns=names)
    if task != "multilabel":  # pragma: no cover - infer_task refuses other tasks for [N, C] targets
        raise DataError(f"target: [N, C] labels are a multilabel task, not {task}")
    labels = list(names) if names is not None else [str(j) for j in range(values.shape[1])]
    return task, values.astype(np.float32), np.array(labels)


def make_splits(labels: numpy.ndarray | None, n: int, folds: int, holdout: float | None,
                seed: int) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    """(train rows, test rows) per fold: each class's rows shuffled and dealt round-robin to the
    folds (stratified), or all rows when ``labels`` is None; a holdout takes that fraction of each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    strata = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    fold_of = np.empty(n, dtype=np.int64)
    held = np.zeros(n, dtype=bool)
    offset = 0
    for rows in strata:
        rows = rng.permutation(rows)
        if holdout is not None:
            held[rows[: max(1, round(holdout * len(rows)))]] = True
        else:  # continue the deal where the last class stopped, so fold sizes differ by at most one
            fold_of[rows] = (np.arange(len(rows)) + offset) % folds
            offset += len(rows)
    if holdout is not None:
        return [(np.flatnonzero(~held), np.flatnonzero(held))]
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(folds)]


def standardise(train: numpy.ndarray, test: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Both scaled by the training rows' mean and standard deviation (constant columns by 1);
    missing values (NaN) become the training mean, 0."""
    import numpy as np

    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(train, axis=0))
        std = np.nan_to_num(np.nanstd(train, axis=0))
    std[std == 0] = 1.0
    return tuple(np.nan_to_num((part - mean) / std).astype(np.float32) for part in (train, test))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- model


def _load(spec: str | Path) -> str | Path:
    """A path (a ``.loss`` file that exists, or any ``Path``) or spec text; compiled now so that a bad
    spec fails before any training, with its diagnostic."""
    import lossdsl

    as_path = isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith(".loss") and "\n" not in spec)
    if as_path:
        lossdsl.load(spec)
        return Path(spec)
    lossdsl.compile(str(spec))
    return str(spec)


def _labels(specs: Sequence[str | Path]) -> list[str]:
    labels = [str(spec).strip() for spec in specs]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # the same spec twice still gets two columns
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


def _compiled(spec: str | Path):  # noqa: ANN202
    import lossdsl

    return lossdsl.load(spec) if isinstance(spec, Path) else lossdsl.compile(spec)


def _factory(model: str | ModelFactory) -> tuple[ModelFactory, str]:
    if callable(model):
        return model, getattr(model, "__name__", "custom")
    if model == "linear":
        return (lambda n_in, n_out: torch.nn.Linear(n_in, n_out)), "linear"
    if model == "mlp":
        return (lambda n_in, n_out: torch.nn.Sequential(
            torch.nn.Linear(n_in, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, n_out))), "mlp"
    raise DataError(f"model: expected 'linear', 'mlp' or a factory f(n_features, n_outputs), got {model!r}")


def load_factory(reference: str) -> ModelFactory:
    """``python:module:factory`` (or ``module:factory``): the user's own code, imported from the
    current directory or the path; never a spec's text."""
    import importlib

    module_name, _, attribute = reference.removeprefix("python:").rpartition(":")
    if not module_name or not attribute:
        raise DataError(f"model: expected linear, mlp or python:MODULE:FACTORY, got {reference!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(f"model: cannot import module {module_name!r}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise DataError(f"model: module {module_name!r} has no callable {attribute!r}")
    return factory


class _Affine(torch.nn.Module):
    """``centre + scale * net(x)``: a regression model working at unit scale for a target in its own units."""

    def __init__(self, net: torch.nn.Module, centre: float, scale: float):
        super().__init__()
        self.net = net
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.centre + self.scale * self.net(x)


def _pred_widths(task: str, num_classes: int, loss_fn) -> list[int | None]:  # noqa: ANN001
    """The prediction layouts to try, in order: None is one value per row ([N]), an int a column each."""
    if task == "binary":
        return [None, 2]
    if task in ("multiclass", "multilabel"):  # a logit per class, or per label
        return [num_classes]
    widths: list[int | None] = [None]
    for term in loss_fn.plan.terms:  # quantile(q=[...]): a column per quantile
        q = getattr(term.params, "q", None)
        if isinstance(q, (tuple, list)) and len(q) not in widths:
            widths.append(len(q))
    return widths


def _quantile_levels(loss_fn, width: int | None) -> list[float] | None:  # noqa: ANN001
    for term in loss_fn.plan.terms:
        q = getattr(term.params, "q", None)
        if isinstance(q, (tuple, list)) and len(q) == width:
            return [float(v) for v in q]
    return None


def _settle_width(task: str, num_classes: int, loss_fn, target, inputs: dict) -> int | None:  # noqa: ANN001
    """The first layout the spec accepts on a few training rows; the last one's diagnostic if none."""

    rows = min(8, len(target))
    error: LossSpecError | None = None
    for width in _pred_widths(task, num_classes, loss_fn):
        shape = (rows,) if width is None else (rows, width)
        try:
            with torch.no_grad():
                loss_fn.eval()
                loss_fn(pred=torch.zeros(shape), target=target[:rows], **{k: v[:rows] for k, v in inputs.items()})
            return width
        except LossSpecError as exc:
            if any(d.code == "E401" for d in exc.diagnostics):
                raise DataError(exc.diagnostics[0].message.split(";")[0] + ": pass it as a column of the data"
                                " (a --group, or a column named so)") from None
            error = exc
    assert error is not None
    raise error


def fit_predict(spec, factory, task, num_classes, x_train, y_train, x_test, inputs, seed, epochs, batch_size, lr,
                builtin=True):  # noqa: ANN001, ANN201
    """Train a fresh model with the spec on the training rows; its outputs on the test rows
    (numpy: logits [N] or [N, C] for classification, values [N] or [N, Q] for regression)."""
    import numpy as np

    loss_fn = _compiled(spec)
    x = torch.from_numpy(x_train)
    target = torch.from_numpy(y_train)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    tensors = {k: (v if v.dtype == torch.int64 else v.float()) for k, v in tensors.items()}
    width = _settle_width(task, num_classes, loss_fn, target, tensors)
    torch.manual_seed(seed)  # the same initial weights for every spec in this fold
    net = factory(x.shape[1], width or 1)
    if builtin and task == "regression":
        centre = float(np.median(y_train))
        scale = float(np.std(y_train)) or 1.0
        net = _Affine(net, centre, scale)
    loss_fn.fit(pred=torch.zeros((len(target),) if width is None else (len(target), width)), target=target, **tensors)
    loss_fn.train()
    # the loss's own parameters too: uncertainty(...)'s learned weights
    optimizer = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(target), generator=generator).split(batch_size):
            out = net(x[batch])
            pred = out[:, 0] if width is None else out
            loss = loss_fn(pred=pred, target=target[batch], **{k: v[batch] for k, v in tensors.items()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(x_test))
    out = out[:, 0] if width is None else out
    return _Predictions(out.numpy().astype(np.float64), _quantile_levels(loss_fn, width))


@dataclasses.dataclass
class _Predictions:
    values: Any  # numpy [N] or [N, K]
    levels: list[float] | None = None  # the quantile of each column, for a multi-quantile regression


# ------------------------------------------------------------------------------------------- metrics


def _metric_name(metric: str | None, task: str, classes: Any, groups: Sequence[str]) -> str:
    """The named metric, checked against the task; its canonical name."""
    if metric is None:
        return DEFAULT_METRIC[task]
    name = metric.strip().lower()
    if task == "multilabel":
        return _multilabel_metric_name(metric, name, classes)
    classification = ("accuracy", "balanced_accuracy", "macro_f1", "f1", "recall")
    regression = ("mae", "rmse")
    if task != "regression":
        if name in classification:
            return name
        if name.startswith("recall[") and name.endswith("]"):
            if name[7:-1] in [str(c).lower() for c in classes]:
                return "recall[" + next(str(c) for c in classes if str(c).lower() == name[7:-1]) + "]"
            raise DataError(f"metric {metric!r}: no class {name[7:-1]!r} (classes: {', '.join(map(str, classes))})")
        if name in ("dp_gap", "eo_gap") or name.startswith(("dp_gap[", "eo_gap[")):
            if task != "binary" or not groups:
                raise DataError(f"metric {metric!r}: fairness gaps need a binary target and a group (--group)")
            return name if "[" in name else f"{name}[{groups[0]}]"
    else:
        if name in regression:
            return name
        if name.startswith("pinball@"):
            try:
                q = float(name[8:])
            except ValueError:
                q = -1.0
            if not 0 < q < 1:
                raise DataError(f"metric {metric!r}: the quantile after pinball@ lies in (0, 1)")
            return f"pinball@{q:g}"
    known = ", ".join(classification + ("recall[CLASS]", "dp_gap", "eo_gap") if task != "regression"
                      else regression + ("pinball@Q",))
    raise DataError(f"metric {metric!r} does not fit a {task} task; known: {known}")


def _multilabel_metric_name(metric: str, name: str, labels: Any) -> str:
    if name == "macro_f1":  # what multiclass calls it: the same macro mean over labels
        return "f1"
    if name in MULTILABEL_METRICS:
        return name
    for prefix in ("f1[", "recall["):
        if name.startswith(prefix) and name.endswith("]"):
            wanted = name[len(prefix):-1]
            match = next((str(label) for label in labels if str(label).lower() == wanted), None)
            if match is None:
                raise DataError(f"metric {metric!r}: no label {wanted!r} (labels: {', '.join(map(str, labels))})")
            return f"{prefix}{match}]"
    if name.startswith(("dp_gap", "eo_gap")):
        raise DataError(f"metric {metric!r}: fairness gaps are computed for binary targets only, not multi-label")
    known = ", ".join((*MULTILABEL_METRICS, "f1[LABEL]", "recall[LABEL]"))
    raise DataError(f"metric {metric!r} does not fit a multilabel task; known: {known}")


def multilabel_metrics_module():  # noqa: ANN201
    """sklearn.metrics, or a DataError saying how to install it (the multi-label metrics are its own)."""
    try:
        from sklearn import metrics
    except ImportError:
        raise DataError("multi-label metrics need scikit-learn: pip install scikit-learn") from None
    return metrics


def multilabel_scores(y_true: Any, logits: Any, labels: Any) -> dict[str, float]:
    """scikit-learn's multi-label metrics of the predictions at sigmoid(logit) > 0.5 (that is, logit > 0,
    exactly and without overflow); an F1 or recall with no positives to divide by is 0 (``zero_division=0``)."""
    import numpy as np

    metrics = multilabel_metrics_module()
    truth = np.asarray(y_true).astype(np.int64)
    hard = (np.asarray(logits) > 0).astype(np.int64)
    values = {
        "f1": float(metrics.f1_score(truth, hard, average="macro", zero_division=0)),
        "micro_f1": float(metrics.f1_score(truth, hard, average="micro", zero_division=0)),
        "samples_f1": float(metrics.f1_score(truth, hard, average="samples", zero_division=0)),
        "subset_accuracy": float(metrics.accuracy_score(truth, hard)),
        "hamming_loss": float(metrics.hamming_loss(truth, hard)),
    }
    per_label_f1 = metrics.f1_score(truth, hard, average=None, zero_division=0)
    per_label_recall = metrics.recall_score(truth, hard, average=None, zero_division=0)
    values.update({f"f1[{label}]": float(v) for label, v in zip(labels, per_label_f1)})
    values.update({f"recall[{label}]": float(v) for label, v in zip(labels, per_label_recall)})
    return values


def score(task: str, metric: str, classes: Any, y_true: Any, predicted: _Predictions,
          groups: Mapping[str, Any]) -> dict[str, float]:
    """Every metric of one fold, the named one first."""
    import numpy as np

    values: dict[str, float] = {}
    if task == "multilabel":  # fairness gaps: binary only (the table says so when groups were given)
        values = multilabel_scores(y_true, predicted.values, classes)
    elif task == "regression":
        out = predicted.values
        levels = predicted.levels

        def column(q: float):  # noqa: ANN202
            if out.ndim == 1:
                return out
            if levels is None:
                return out[:, out.shape[1] // 2]
            return out[:, int(np.argmin([abs(level - q) for level in levels]))]

        point = column(0.5)
        error = y_true - point
        values["mae"] = float(np.mean(np.abs(error)))
        values["rmse"] = float(np.sqrt(np.mean(error**2)))
        if metric.startswith("pinball@"):
            q = float(metric[8:])
            values[metric] = pinball(y_true, column(q), q)
    else:
        out = predicted.values
        labels = (out > 0).astype(np.int64) if out.ndim == 1 else out.argmax(axis=1)
        k = len(classes)
        matrix = np.zeros((k, k), dtype=np.int64)  # rows true, columns predicted
        np.add.at(matrix, (y_true, labels), 1)
        true_counts, predicted_counts, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
        with np.errstate(all="ignore"):
            recall = np.where(true_counts > 0, hits / true_counts, 0.0)
            precision = np.where(predicted_counts > 0, hits / predicted_counts, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        values["accuracy"] = float(hits.sum() / len(y_true))
        values["balanced_accuracy"] = float(recall[true_counts > 0].mean())
        values["macro_f1"] = float(f1.mean())
        if task == "binary":
            values["f1"] = float(f1[1])  # of the positive class (the second value), as sklearn's default
            values["recall"] = float(recall[1])
        else:
            values["f1"] = values["macro_f1"]
            values["recall"] = values["balanced_accuracy"]
        for c, r in zip(classes, recall):
            values[f"recall[{c}]"] = float(r)
        if task == "binary" and groups:
            values.update(fairness_gaps(y_true, labels, groups))
    if metric not in values:
        raise DataError(f"metric {metric!r}: not computed for this task")
    # multiclass: f1 and recall are macro_f1 and balanced_accuracy again, so not listed twice
    return {metric: values.pop(metric), **{k: v for k, v in values.items() if k not in ("f1", "recall")
                                            or task != "multiclass"}}


def pinball(y_true: Any, predicted: Any, q: float) -> float:
    """The mean pinball loss at quantile q, as sklearn's ``mean_pinball_loss(alpha=q)``."""
    import numpy as np

    error = y_true - predicted
    return float(np.mean(np.maximum(q * error, (q - 1) * error)))


def fairness_gaps(y_true: Any, labels: Any, groups: Mapping[str, Any]) -> dict[str, float]:
    """fairlearn's demographic-parity and equalized-odds differences of hard predictions, per group input."""
    try:
        from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
    except ImportError:
        raise DataError("fairness gaps need fairlearn: pip install fairlearn") from None
    gaps = {}
    for name, codes in groups.items():
        gaps[f"dp_gap[{name}]"] = float(demographic_parity_difference(y_true, labels, sensitive_features=codes))
        gaps[f"eo_gap[{name}]"] = float(equalized_odds_difference(y_true, labels, sensitive_features=codes))
    return gaps


# ------------------------------------------------------------------------------------------- output


def _short(label: str, width: int = 30) -> str:
    flat = " ".join(label.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


class _Progress:
    """A tqdm bar on stderr when tqdm is installed, else one plain line per model trained."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.bar = total, 0, enabled, None
        self.label = ""
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, file=sys.stderr, desc="compare", leave=False)

    def describe(self, label: str) -> None:
        self.label = label
        if self.bar is not None:
            self.bar.set_postfix_str(label)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled:
            print(f"compare: {self.done}/{self.total} trained ({self.label})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _CallableModule(type(sys)):
    """After ``import lossdsl.compare`` the name ``lossdsl.compare`` is this module: calling it still compares."""

    def __call__(self, *args: Any, **kwargs: Any) -> Comparison:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
# and the function, what ``lossdsl.compare`` is when it was not imported as a module, names the same types
compare.DataError = DataError  # type: ignore[attr-defined]
compare.Comparison = Comparison  # type: ignore[attr-defined]
