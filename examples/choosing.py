"""Worked examples of choosing a loss: plain ce/mse against other candidates, scored by lossdsl.compare.

    python examples/choosing.py [--write-docs] [--only NAME ...]

Six data sets that ship or need no download: scikit-learn's bundled breast_cancer (binary),
digits (ten classes) and diabetes (regression), a synthetic regression with heavy-tailed noise
(Student's t with 1.5 degrees of freedom: a finite mean, an infinite variance), a synthetic
multi-label set (scikit-learn's ``make_multilabel_classification``, five labels of unequal
frequencies), and UCI Adult (``examples/data/adult/``, the training split, with ``sex`` as the
protected group). For each, the plain loss (``ce()``, ``bce()`` or ``mse()``), the other
candidates (none for multi-label: advise's spec against ``bce()``), and, when this checkout
has it, the spec ``lossdsl.advise`` writes for the data, are trained by ``lossdsl.compare`` with
its defaults (3-fold cross-validation, seed 0; the linear model, the MLP for Adult) and scored by
the metric named for that example. The script prints each table and the time it took;
``--write-docs`` writes them, with advise's spec, into docs/choosing.md between the
``<!-- generated: choosing-examples ... -->`` markers, so the numbers there cannot drift from the
code. Nothing is tuned on the folds: the candidates are the textbook ones for each situation.

The full run takes minutes on a laptop (Adult's MLP most of it); ``LOSSDSL_EXAMPLE_QUICK=1`` runs
every example in seconds on a few hundred rows, two folds and two epochs, whose numbers mean
nothing (``--write-docs`` refuses to write them). Needs scikit-learn, pandas and fairlearn.
"""

import argparse
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import lossdsl

QUICK = os.environ.get("LOSSDSL_EXAMPLE_QUICK") == "1"
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "choosing.md"
ADULT = ROOT / "examples" / "data" / "adult"
BEGIN = "<!-- generated: choosing-examples, by `python examples/choosing.py --write-docs` -->"
END = "<!-- end generated -->"
QUICK_ROWS = 400


@dataclass
class Example:
    name: str
    title: str
    about: str
    load: Callable[[], dict[str, Any]]  # features, target, and optionally groups
    specs: dict[str, str]  # label -> spec text
    metric: str
    model: str = "linear"
    advise: dict[str, Any] = field(default_factory=dict)  # extra arguments for lossdsl.advise


def breast_cancer() -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return {"features": x, "target": y}


def digits() -> dict[str, Any]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return {"features": x, "target": y}


def diabetes() -> dict[str, Any]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return {"features": x, "target": y}


def heavy_tailed(n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """y = x @ w + noise, the noise Student's t with 1.5 degrees of freedom (a few huge outliers)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = x @ np.array([2.0, -1.0, 0.5, 0.0, 1.5]) + rng.standard_t(1.5, size=n)
    return {"features": x, "target": y}


def multilabel(n: int = 2000, seed: int = 1) -> dict[str, Any]:
    """scikit-learn's make_multilabel_classification, seeded: 20 count features, 5 labels (two per row
    on average) whose frequencies run from 79 to 1,264 of the 2,000 rows."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=n, n_features=20, n_classes=5, n_labels=2, random_state=seed)
    return {"features": x, "target": y}


def adult() -> dict[str, Any]:
    """The training split of UCI Adult as columns: numbers as they are, categories as text (one-hot
    encoded by compare); ``fnlwgt`` (a census sampling weight) dropped, ``sex`` the group, no feature."""
    import pandas as pd

    columns = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
               "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
               "income"]
    frame = pd.read_csv(ADULT / "adult.data.gz", names=columns, skipinitialspace=True, compression="gzip")
    target = (frame.pop("income") == ">50K").to_numpy().astype(np.int64)
    sex = (frame.pop("sex") == "Male").to_numpy().astype(np.int64)
    frame = frame.drop(columns=["fnlwgt"])
    features = {name: frame[name].to_numpy() for name in frame.columns}
    for name in ("capital-gain", "capital-loss"):  # zero for over 90% of people: the log spreads the rest
        features[name] = np.log1p(features[name].astype(float))
    return {"features": features, "target": target, "groups": {"sex": sex}}


EXAMPLES = [
    Example("breast_cancer", "Breast cancer (binary, 357 benign / 212 malignant)",
            "scikit-learn's `load_breast_cancer`: 569 rows, 30 features; mild imbalance (ratio 1.7).",
            breast_cancer, {"ce()": "ce()", "ce(weight=balanced)": "ce(weight=balanced)", "focal()": "focal()"},
            metric="f1"),
    Example("digits", "Digits (ten balanced classes)",
            "scikit-learn's `load_digits`: 1,797 8x8 images as 64 features, about 180 per class.",
            digits, {"ce()": "ce()", "ce(label_smoothing=0.1)": "ce(label_smoothing=0.1)",
                     "focal()": "focal()"}, metric="accuracy"),
    Example("diabetes", "Diabetes progression (regression)",
            "scikit-learn's `load_diabetes`: 442 rows, 10 features, a target from 25 to 346 (std 77).",
            diabetes, {"mse()": "mse()", "huber(delta=50)": "huber(delta=50)", "mae()": "mae()"}, metric="mae"),
    Example("heavy_tailed", "Synthetic regression with heavy-tailed noise",
            "2,000 rows, 5 Gaussian features, `y = x @ w` plus Student's t noise with 1.5 degrees of freedom "
            "(infinite variance: a few residuals in the hundreds).",
            heavy_tailed, {"mse()": "mse()", "huber(delta=1.0)": "huber(delta=1.0)", "mae()": "mae()"},
            metric="mae"),
    Example("multilabel", "Synthetic multi-label (five labels of unequal frequencies)",
            "scikit-learn's `make_multilabel_classification(n_samples=2000, n_features=20, n_classes=5, "
            "n_labels=2, random_state=1)`: the labels are positive in 1,054, 1,264, 79, 863 and 579 rows "
            "(negatives/positives from 0.6 to 24.3).",
            multilabel, {"bce()": "bce()"}, metric="f1"),
    Example("adult", "UCI Adult (binary, 24% positive; sex as the group)",
            "The 32,561 rows of the training split, 12 columns (categories one-hot: 104 features), income "
            "above $50K as the target, `sex` as the group (not a feature); the MLP.",
            adult, {"ce()": "ce()", "ce(weight=balanced)": "ce(weight=balanced)",
                    "ce() + fpr_gap": "ce() + 0.5*fairness(fpr_gap, group=sex)"},
            metric="f1", model="mlp"),
]


def shrink(data: dict[str, Any], rows: int) -> dict[str, Any]:
    """A random subset of ``rows`` rows of every array (quick mode)."""
    n = len(data["target"])
    keep = np.sort(np.random.default_rng(0).permutation(n)[:rows])

    def take(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: take(v) for k, v in value.items()}
        return np.asarray(value)[keep]

    return {key: take(value) for key, value in data.items()}


def advised(example: Example, data: dict[str, Any]) -> tuple[str | None, str]:
    """lossdsl.advise's spec for the data, or None with the reason it is not there."""
    try:
        advise = lossdsl.advise
    except AttributeError:
        return None, "lossdsl.advise is not in this checkout"
    features = data["features"]
    if isinstance(features, dict):  # advise reads numeric features only (duplicate rows)
        features = np.column_stack([np.asarray(v, dtype=float) for v in features.values()
                                    if np.asarray(v).dtype.kind in "biuf"])
    advice = advise(target=data["target"], features=features, groups=data.get("groups"), metric=example.metric,
                    **example.advise)
    return advice.spec, ""


def run(example: Example) -> dict[str, Any]:
    data = example.load()
    if QUICK:
        data = shrink(data, QUICK_ROWS)
    specs = dict(example.specs)
    advice, why_not = advised(example, data)
    if advice is not None:
        specs["advise"] = advice
    started = time.perf_counter()
    result = lossdsl.compare(list(specs.values()), data["features"], data["target"], groups=data.get("groups"),
                             model=example.model, metric=example.metric, names=list(specs),
                             folds=2 if QUICK else 3, epochs=2 if QUICK else None, seed=0)
    seconds = time.perf_counter() - started
    return {"result": result, "seconds": seconds, "advice": advice, "why_not": why_not}


def markdown(example: Example, outcome: dict[str, Any]) -> str:
    result = outcome["result"]
    parts = [f"### {example.title}", "", example.about, ""]
    if outcome["advice"] is not None:
        parts += ["advise's spec (`lossdsl.advise(target=..., features=..., "
                  f"metric=\"{example.metric}\"{', groups=...' if example.name == 'adult' else ''})`):", "",
                  "```", outcome["advice"].rstrip(), "```", ""]
    else:
        parts += [f"(advise's spec is not in this table: {outcome['why_not']}.)", ""]
    parts += [result.table(markdown=True).rstrip(), "",
              f"{len(result.specs)} specs, {result.setup['folds']} folds, {result.setup['epochs']} epochs: "
              f"{outcome['seconds']:.0f} s.", ""]
    baseline = {"regression": "mse()", "multilabel": "bce()"}.get(result.task, "ce()")
    if "advise" in result.specs:
        mean, _ = result.summary("advise")
        plain, _ = result.summary(baseline)
        better = mean >= plain if result.higher_is_better else mean <= plain
        parts += [f"advise against plain `{baseline}` on {result.metric}: {mean:.3f} against {plain:.3f}, "
                  + ("at least as good." if better else "**worse**."), ""]
    return "\n".join(parts)


def write_docs(blocks: list[str], doc: Path = DOC) -> None:
    """The blocks between the markers in ``doc`` (appended with the markers when it has none); nothing else changes."""
    text = doc.read_text(encoding="utf-8")
    generated = "\n".join([BEGIN, "", *blocks, END])
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: generated, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + generated + "\n"
    doc.write_text(text, encoding="utf-8")
    print(f"wrote {doc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="write the tables into docs/choosing.md")
    parser.add_argument("--only", nargs="+", choices=[e.name for e in EXAMPLES], help="run these examples only")
    args = parser.parse_args()
    if args.write_docs and (QUICK or args.only):
        parser.error("--write-docs writes every example from a full run: not with LOSSDSL_EXAMPLE_QUICK=1 or --only")
    blocks = []
    total = time.perf_counter()
    for example in EXAMPLES:
        if args.only and example.name not in args.only:
            continue
        outcome = run(example)
        print(f"== {example.name}: {example.title}")
        if outcome["advice"] is None:
            print(f"(no advise column: {outcome['why_not']})")
        print(outcome["result"].table())
        print(f"time: {outcome['seconds']:.1f} s\n")
        blocks.append(markdown(example, outcome))
    print(f"all examples: {time.perf_counter() - total:.1f} s")
    if args.write_docs:
        write_docs(blocks)


if __name__ == "__main__":
    main()
